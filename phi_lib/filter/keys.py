"""What produced each of stage 02's artifacts: the fingerprints its steps compare.

Each step's fingerprint holds only the config fields that change its output, plus the
content digest of what it reads (the data files, or the upstream step's recorded output
digest, not its fingerprint), so a step reruns when its knobs or its input changed, and a
rerun that writes the same output (the same sample drawn from a grown corpus) recomputes
nothing after it:

    prefilter  corpus + heuristic/dedup/decontamination knobs + corpus and benchmark digests
    annotate   annotator fingerprint (backend kind/model/dtype, model content identity, rubric,
               judge_format, score_from, sampling, annotate_max_chars, prompt template;
               left out with label_source `reference`) + label source (reference corpus
               digests, n_reference, the heuristics that pick passages) + sample knobs
               (n_annotate, annotate_pool_docs, seed) + candidates digest
    train      classifier fingerprint (head knobs, embedder identity, embed_max_tokens, or
               for fasttext its knobs, label_threshold and package version; annotations
               digest) + validation knobs (label_threshold, val_fraction, seed)
    evaluate   classifier fingerprint + keep threshold + eval sets (files' digests; `holdout`
               knobs and corpus digests) + the judge's fingerprint (zero-shot baseline)
    score      classifier fingerprint + candidates digest
    keep       keep_threshold/keep_fraction + scores digest + candidates digest

Operational fields (batch sizes, shard size, the annotator's concurrency/timeouts/device)
are in none of them. A grown `max_docs` changes the candidates but, with
`annotate_pool_docs` fixed, not the sample: the classifier stays, and only the new
candidates are scored.
"""
from __future__ import annotations

import sys
from typing import Optional

from phi_lib.provenance import Fingerprint, digest, path_digest, results_view

PREFILTER_KNOBS = {
    "web": ("corpus", "min_words", "max_words", "max_symbol_ratio",
            "max_duplicate_line_fraction", "min_stopwords"),
    "code": ("code_corpus", "min_code_lines", "max_duplicate_line_fraction"),
}
"""Per path: the config fields of its corpus and heuristic blocks (phi_lib.filter.heuristics)."""
READ_KNOBS = ("text_field", "max_docs", "dedup_threshold", "dedup_num_perm",
              "decontaminate_ngram", "decontaminate_against")
"""Fields both paths' pre-filters read."""
LOCAL_BACKENDS = ("transformers", "vllm")
"""Backends that load a model whose files we can digest (an HTTP model is known by name)."""


def _pick(section, names) -> dict:
    view = results_view(section)
    return {n: view[n] for n in names}


def corpus_identity(spec: str, data_dir: Optional[str]) -> str:
    """Content digest of a corpus (`stdlib`: the interpreter's version, whose library it is)."""
    from phi_lib.corpora import STDLIB, resolve_corpus

    if spec == STDLIB:
        return f"python-{sys.version.split()[0]}"
    return path_digest(resolve_corpus(spec, data_dir))


def prefilter(cfg, kind: str, specs: list[str]) -> Fingerprint:
    from phi_lib.decontaminate import benchmark_path

    fc, data_dir = cfg.filter, cfg.run.data_dir
    key = "filter.decontaminate_against"
    return Fingerprint.of(
        config={"kind": kind, "filter": _pick(fc, PREFILTER_KNOBS[kind] + READ_KNOBS)},
        inputs={"corpora": {s: corpus_identity(s, data_dir) for s in specs},
                "benchmarks": {b: path_digest(benchmark_path(b, data_dir, key))
                               for b in fc.decontaminate_against}})


def annotator(cfg, kind: str) -> Fingerprint:
    """The judge: everything that changes its labels (a new one relabels every sample)."""
    from phi_lib.filter.prompts import annotation_prompt
    from phi_lib.hf_models import content_identity

    fc, a = cfg.filter, cfg.filter.annotator
    model = content_identity(a.model, cfg.run_dir) if a.kind in LOCAL_BACKENDS else f"name:{a.model}"
    # the prompt around a document: a changed rubric text in prompts.py is another judge
    template = annotation_prompt("", kind, fc.annotate_max_chars, fc.rubric,
                                 fc.judge_format == "completion")
    return Fingerprint.of(
        config={"kind": kind, "annotator": results_view(a),
                "filter": _pick(fc, ("rubric", "judge_format", "score_from", "annotation_sampling",
                                     "annotate_max_chars"))},
        inputs={"model": model, "prompt": digest(template)})


def pool_docs(fc) -> Optional[int]:
    """Documents per corpus the annotation sample is drawn from (None = all read)."""
    limits = [n for n in (fc.annotate_pool_docs, fc.max_docs) if n is not None]
    return min(limits) if limits else None


def labels(cfg, kind: str) -> tuple[dict, dict]:
    """(config, inputs) of the label source: `llm` (the judge alone) or reference passages
    (`reference`, `union`: the reference knobs, the web heuristics that pick passages and
    the reference corpora's digests). Only the web path has reference labels."""
    fc = cfg.filter
    source = fc.label_source if kind == "web" else "llm"
    if source == "llm":
        return {"label_source": "llm"}, {}
    conf = {"label_source": source, "n_reference": fc.n_reference,
            "passages": _pick(fc, ("reference_corpus", "text_field") + PREFILTER_KNOBS["web"][1:])}
    return conf, {"reference": {s: corpus_identity(s, cfg.run.data_dir) for s in fc.reference_corpus}}


def annotate(cfg, kind: str, candidates_digest: str) -> tuple[Fingerprint, Fingerprint]:
    """(the annotate step's fingerprint: the judge's (unless no judge labels: `reference`),
    the label source's and the sample's; the judge's)."""
    judge = annotator(cfg, kind)
    label_conf, label_inputs = labels(cfg, kind)
    asks_judge = label_conf["label_source"] != "reference"
    fp = Fingerprint.of(
        config={"annotator": judge.config if asks_judge else None, "labels": label_conf,
                "sample": {"n_annotate": cfg.filter.n_annotate, "pool_docs": pool_docs(cfg.filter),
                           "seed": cfg.run.seed}},
        inputs={**(judge.inputs if asks_judge else {}), **label_inputs,
                "candidates": candidates_digest})
    return fp, judge


def classifier(cfg, kind: str, annotations_digest: str) -> Fingerprint:
    """What the saved head is a function of (scores carry its key)."""
    from phi_lib.embed import embedder_identity

    fc = cfg.filter
    head = {"head": fc.classifier}
    if fc.classifier == "random_forest":  # ridge has neither trees nor randomness
        head.update(n_estimators=fc.n_estimators, seed=cfg.run.seed)
    if fc.classifier == "fasttext":  # reads the text: no embedder; binary at label_threshold
        head.update(_pick(fc, ("fasttext_word_ngrams", "fasttext_dim", "fasttext_epoch",
                               "fasttext_lr", "fasttext_bucket", "label_threshold")), seed=cfg.run.seed)
        return Fingerprint.of(config={"kind": kind, "classifier": head},
                              inputs={"fasttext": fasttext_version(),
                                      "annotations": annotations_digest})
    return Fingerprint.of(
        config={"kind": kind, "classifier": head, "embedder": fc.embedder,
                "embed_max_tokens": fc.embed_max_tokens},
        inputs={"embedder": embedder_identity(fc.embedder, cfg.run_dir),
                "annotations": annotations_digest})


def fasttext_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"fasttext-community-{version('fasttext-community')}"
    except PackageNotFoundError:
        return "fasttext-community-missing"


def train(cfg, kind: str, annotations_digest: str) -> tuple[Fingerprint, Fingerprint]:
    """(the train step's fingerprint: the classifier's plus its validation knobs, the classifier's)."""
    clf = classifier(cfg, kind, annotations_digest)
    fp = Fingerprint.of(config={**clf.config, "validation": {
        "label_threshold": cfg.filter.label_threshold, "val_fraction": cfg.filter.val_fraction,
        "seed": cfg.run.seed}}, inputs=clf.inputs)
    return fp, clf


def score(classifier_key: str, candidates_digest: str) -> Fingerprint:
    return Fingerprint.of(config={"classifier": classifier_key},
                          inputs={"candidates": candidates_digest})


def keep(cfg, scores_digest: str, candidates_digest: str) -> Fingerprint:
    return Fingerprint.of(config={"filter": _pick(cfg.filter, ("keep_threshold", "keep_fraction"))},
                          inputs={"scores": scores_digest, "candidates": candidates_digest})


def evaluate(cfg, classifier_key: str, keep_threshold: float) -> Fingerprint:
    """The eval report: the classifier, the keep threshold, each eval set's content (a file's
    digest; `holdout`'s knobs and corpora) and, for the zero-shot baseline, the judge."""
    fc, data_dir = cfg.filter, cfg.run.data_dir
    sets = {}
    for name in fc.eval_sets:
        if name == "holdout":
            sets[name] = {"knobs": _pick(fc, ("eval_positive_corpus", "eval_negative_corpus",
                                              "eval_per_class", "text_field")
                                         + PREFILTER_KNOBS["web"][1:]),
                          "corpora": {s: corpus_identity(s, data_dir)
                                      for s in fc.eval_positive_corpus + fc.eval_negative_corpus}}
        else:
            sets[name] = corpus_identity(name, data_dir)
    judge = annotator(cfg, "web") if fc.eval_judge_docs else None
    return Fingerprint.of(
        config={"classifier": classifier_key, "keep_threshold": keep_threshold,
                "label_threshold": fc.label_threshold, "eval_judge_docs": fc.eval_judge_docs,
                "seed": cfg.run.seed, "judge": judge.config if judge else None},
        inputs={"eval_sets": sets, **({"judge": judge.inputs} if judge else {})})
