"""Stage 02: filter web and code by educational value, in six steps (phi_lib.filter.steps).

    stage = FilterStage(cfg, out)
    stage.prefilter()    # heuristics, decontamination, MinHash dedup -> candidates/
    stage.annotate()     # the LLM judge labels a sample              -> annotations/
    stage.train()        # a head on embeddings learns the labels     -> classifier/
    stage.score()        # the classifier scores every candidate      -> scored/
    stage.keep()         # the top scores                             -> kept/, kept_code/
    stage.evaluate()     # the web filter on labelled eval sets       -> eval/, eval.json
    manifest = stage.write_manifest()

Two paths run side by side: `web` (`filter.corpus`) and `code` (`filter.code_corpus`), each
with its own prompt, classifier and output. The web labels come from the judge, from
reference data (`label_source`, phi_lib.filter.reference) or both; `evaluate` says how good
the web filter is on eval sets it never trained on (phi_lib.filter.evalset). A step reads the files of the one before and
writes its own (phi_lib.filter.files); it is skipped while its fingerprint
(phi_lib.filter.keys) matches the one it recorded, so a restarted kernel continues at any
step and a changed knob recomputes only what it changes.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from phi_lib.filter import files
from phi_lib.filter.files import CLASSIFIER_DIR, KEPT_DIR, KINDS
from phi_lib.filter.steps import STEPS
from phi_lib.provenance import is_current
from phi_lib.stage_base import STEPS_DIR, BaseStage

CACHE = ".cache"
"""Content-addressed caches (embeddings, the judge's requests): kept by `--force`."""
FIGURES = ("classifier.png", "scores.png")
EVAL_FIGURE = "eval.png"
"""Drawn when there are eval sets."""


class StepNotCurrent(RuntimeError):
    """A step's input is missing or was made under another config; names the step to run."""


class FilterStage(BaseStage):
    number = "02"

    def __init__(self, cfg, out: Optional[Path] = None, progress: bool = True):
        super().__init__(cfg, out)
        self.fc, self.progress = cfg.filter, progress
        self._embedder = None
        self._contam = None
        self.figures = list(FIGURES) + ([EVAL_FIGURE] if self.evaluates() else [])  # the plot cells
        self._register_inputs()

    # ------------------------------------------------------------------ inputs
    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.specs(k)]

    def specs(self, kind: str) -> list[str]:
        if kind == "web":
            return list(self.fc.corpus)
        return [self.fc.code_corpus] if self.fc.code_corpus else []

    def _register_inputs(self) -> None:
        """The corpora (the interpreter's `stdlib` is known by its version, see keys), the
        benchmark files, the reference corpus and the eval sets: the runner reruns the stage
        when one changes."""
        from phi_lib.corpora import STDLIB, resolve_corpus
        from phi_lib.decontaminate import benchmark_path

        data_dir = self.cfg.run.data_dir
        for kind in self.kinds():
            for spec in self.specs(kind):
                if spec != STDLIB:
                    self.inputs[f"corpus:{spec}"] = resolve_corpus(spec, data_dir)
        for name in self.fc.decontaminate_against:
            self.inputs[f"benchmark:{name}"] = benchmark_path(name, data_dir,
                                                              "filter.decontaminate_against")
        fc = self.fc
        extra = list(fc.reference_corpus) if "web" in self.kinds() and fc.label_source != "llm" else []
        if self.evaluates():
            for name in fc.eval_sets:
                extra += (list(fc.eval_positive_corpus) + list(fc.eval_negative_corpus)
                          if name == "holdout" else [name])
        for spec in dict.fromkeys(extra):  # reference passages and eval sets: data read too
            self.inputs.setdefault(f"corpus:{spec}", resolve_corpus(spec, data_dir))

    @property
    def embedder(self):
        """The embedder behind an on-disk cache keyed by its content identity (loaded on
        the first text the cache does not hold)."""
        if self._embedder is None:
            from phi_lib.embed import CachedEmbedder, embedder_identity, get_embedder

            fc = self.fc

            def make():
                return get_embedder(fc.embedder, fc.embed_batch_size, fc.embed_max_tokens,
                                    run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)

            self._embedder = CachedEmbedder(make, self.out / CACHE / "embeddings.sqlite",
                                            fc.embed_max_tokens, name=fc.embedder,
                                            identity=embedder_identity(fc.embedder, self.cfg.run_dir))
        return self._embedder

    def annotator_backend(self):
        """The judge's backend; its request cache is per model content (a retrained model
        under the same name is never served the old replies)."""
        from phi_lib.backends import get_backend
        from phi_lib.filter.keys import annotator

        model = annotator(self.cfg, "web").inputs["model"]
        return get_backend(self.fc.annotator, cache_dir=self.out / CACHE / "annotator" / model,
                           run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)

    def contamination(self):
        """The benchmarks' n-grams (built once, cached by data folder and file contents)."""
        if self._contam is None and self.fc.decontaminate_against:
            from phi_lib.decontaminate import BenchmarkNgrams
            from phi_lib.hf_models import cache_dir

            self._contam = BenchmarkNgrams.build(self.fc.decontaminate_against,
                                                 self.fc.decontaminate_ngram,
                                                 self.cfg.run.data_dir, cache_dir() / "decontaminate",
                                                 key="filter.decontaminate_against")
        return self._contam

    def current(self, step: str, kind: str) -> dict:
        """The recorded stats of `step` for path `kind`; raises StepNotCurrent unless it ran
        with the inputs and config there are now (so no step reads a stale file)."""
        name = f"{step}_{kind}"
        fp = STEPS[step].fingerprint(self, kind)
        stats = self.step_stats(name)
        if stats is None or not is_current(stats.get("fingerprint"), fp):
            why = "not run" if stats is None else ", ".join(fp.changes(stats.get("fingerprint"))[:6])
            raise StepNotCurrent(f"stage 02: step {name} is not current ({why}): "
                                 f"run stage.{step}() first")
        return stats

    # ------------------------------------------------------------------ steps
    def prefilter(self):
        """Heuristic blocks, decontamination and dedup; per corpus: read, candidates, drops."""
        self._forget_unconfigured()
        for kind in self.kinds():
            STEPS["prefilter"].run(self, kind)
        return STEPS["prefilter"].table(self)

    def annotate(self, backend=None):
        """The judge labels a sample of each path (`backend` defaults to `filter.annotator`)."""
        for kind in self.kinds():
            STEPS["annotate"].run(self, kind, backend)
        return STEPS["annotate"].table(self)

    def train(self):
        """Fit and validate each path's classifier on its labels."""
        for kind in self.kinds():
            STEPS["train"].run(self, kind)
        return STEPS["train"].table(self)

    def score(self):
        """Score every candidate (batched, resumable); per path: scored now and in all."""
        import pandas as pd

        rows = []
        for kind in self.kinds():
            s = STEPS["score"].run(self, kind)
            rows.append({"kind": kind, "scored": s["counts"][f"{kind}/scored"],
                         "scored_by_this_run": s["scored_now"], "classifier": s["classifier"]})
        return pd.DataFrame(rows).set_index("kind")

    def keep(self):
        """Write `kept/` and `kept_code/`; per corpus: read, candidates, scored, kept."""
        for kind in self.kinds():
            STEPS["keep"].run(self, kind)
        return STEPS["keep"].table(self)

    def evaluates(self) -> bool:
        return "web" in self.kinds() and bool(self.fc.eval_sets)

    def evaluate(self, backend=None):
        """The web classifier and its baselines (length, zero-shot judge, random) on each
        `filter.eval_sets` set: AUC overall and within length quartiles, F1, calibration."""
        if not self.evaluates():
            shutil.rmtree(self.out / STEPS["evaluate"].EVAL_DIR, ignore_errors=True)
            (self.out / "eval.json").unlink(missing_ok=True)
            (self.out / STEPS_DIR / "evaluate_web.json").unlink(missing_ok=True)
            return STEPS["evaluate"].table(self)
        STEPS["evaluate"].run(self, "web", backend)
        return STEPS["evaluate"].table(self)

    def plot_eval(self):
        """Calibration of the classifier and every scorer's AUC overall and per length quartile."""
        from phi_lib.filter.plots import plot_eval

        stats = self.current("evaluate", "web") if self.evaluates() else {}
        fig = plot_eval(stats.get("eval") or {})
        self.save_figure(fig, EVAL_FIGURE)
        return fig

    def _forget_unconfigured(self) -> None:
        """A path no longer configured leaves nothing behind (no stale output or stats)."""
        for kind in set(KINDS) - set(self.kinds()):
            for p in (files.folder(self.out, w, kind) for w in (files.CANDIDATES, files.ANNOTATIONS,
                                                                 files.SCORED)):
                shutil.rmtree(p, ignore_errors=True)
            for p in (self.out / CLASSIFIER_DIR[kind], self.out / KEPT_DIR[kind]):
                shutil.rmtree(p, ignore_errors=True)
            (self.out / f"{KEPT_DIR[kind]}.json").unlink(missing_ok=True)
            for p in (self.out / STEPS_DIR).glob(f"*_{kind}.json"):
                p.unlink()

    # ------------------------------------------------------------------ reading
    def candidates(self, kind: str):
        yield from files.read(self.out, files.CANDIDATES, kind)

    def annotations(self, kind: Optional[str] = None) -> list[dict]:
        return [r for k in ([kind] if kind else self.kinds())
                for r in sorted(files.read(self.out, files.ANNOTATIONS, k), key=lambda r: r["key"])]

    def scored(self, kind: str):
        """The score records ({key, score, classifier}) of one path."""
        yield from files.read(self.out, files.SCORED, kind)

    def classifier(self, kind: str):
        from phi_lib.filter.classifier import load_classifier

        return load_classifier(self.out / CLASSIFIER_DIR[kind], embedder=self.embedder)

    def threshold(self, kind: str) -> float:
        return self.current("keep", kind)["threshold"]

    # ------------------------------------------------------------------ tables and plots
    def sample_replies(self, n: int = 4):
        import pandas as pd

        return pd.DataFrame([{"kind": r["kind"], "doc": r["text"][:160], "reply": (r["reply"] or "")[:200],
                              "status": r["status"], "score_text": r["score_text"],
                              "score_logprobs": r["score_logprobs"]} for r in self.annotations()[:n]])

    def extremes(self, n: int = 3, kind: str = "web", chars: int = 400):
        """The highest and lowest scored documents side by side (streaming: holds n records)."""
        import heapq

        import pandas as pd

        top = heapq.nlargest(n, self.scored(kind), key=lambda r: r["score"])
        bottom = heapq.nsmallest(n, self.scored(kind), key=lambda r: r["score"])
        want = {r["key"] for r in top + bottom}
        text = {d["key"]: d["text"] for d in self.candidates(kind) if d["key"] in want}
        return pd.DataFrame({
            "highest score": [f"{r['score']:.2f}" for r in top],
            "highest": [text[r["key"]][:chars] for r in top],
            "lowest score": [f"{r['score']:.2f}" for r in bottom],
            "lowest": [text[r["key"]][:chars] for r in bottom]})

    def plot_classifier(self):
        """Per path: validation confusion matrix and predicted-vs-annotated scores."""
        from phi_lib.filter.classifier import ClassifierReport
        from phi_lib.filter.plots import plot_classifier

        from phi_lib.io import read_json

        # the saved report (classifier.json), not the head: no sklearn import to draw it
        reports = {k: ClassifierReport.from_meta(read_json(self.out / CLASSIFIER_DIR[k] / "classifier.json"))
                   for k in self.kinds()}
        fig = plot_classifier(reports)
        self.save_figure(fig, "classifier.png")
        return fig

    def plot_scores(self):
        """Histogram of each path's corpus scores with its keep threshold."""
        import numpy as np

        from phi_lib.filter.plots import plot_scores

        data = {k: np.array([r["score"] for r in self.scored(k)]) for k in self.kinds()}
        fig = plot_scores(data, {k: self.threshold(k) for k in self.kinds()},
                          self.fc.label_threshold)
        self.save_figure(fig, "scores.png")
        return fig

    # ------------------------------------------------------------------ manifest
    def write_manifest(self) -> dict:
        """Every current step's counts, drops and metrics; corrupt lines in this stage's own
        files (read back once more, so the count holds after a kernel restart)."""
        from phi_lib.io import ReadStats

        for kind in self.kinds():
            self.current("keep", kind)  # every step current, else the manifest would mix configs
        if self.evaluates():
            self.current("evaluate", "web")
        stats = ReadStats()
        for kind in self.kinds():
            for what in (files.CANDIDATES, files.ANNOTATIONS, files.SCORED):
                for _ in files.read(self.out, what, kind, stats):
                    pass
            for _ in files.read_kept(self.out, kind, stats):
                pass
        reasons = {f"{k}/roc_auc": r for k in self.kinds() if (r := self._auc_undefined(k))}
        extra = {"undefined_reasons": reasons} if reasons else {}
        return super().write_manifest(counts={"corrupt_output_records": stats.n_corrupt},
                                      outputs={k: KEPT_DIR[k] for k in self.kinds()}, **extra)

    def _auc_undefined(self, kind: str) -> Optional[str]:
        """Why a path's validation ROC AUC is undefined (null), or None where it is defined:
        its validation split holds one class only, and whether any split could hold both."""
        import numpy as np

        from phi_lib.io import read_json

        v = read_json(self.out / CLASSIFIER_DIR[kind] / "classifier.json")["validation"]
        thr, val = self.fc.label_threshold, np.asarray(v.get("labels") or [], dtype=float)
        if len(set((val >= thr).tolist())) == 2:
            return None
        labels = np.asarray([r["label"] for r in files.read(self.out, files.ANNOTATIONS, kind)
                             if r.get("label") is not None], dtype=float)
        pos = int((labels >= thr).sum())
        side = ">=" if len(val) and val.min() >= thr else "<"
        why = f"its {len(val)} validation labels are all {side} filter.label_threshold {thr:g}"
        if pos in (0, len(labels)):
            return (f"{why}, and so are all {len(labels)} {kind} labels (range "
                    f"{labels.min():.2f}-{labels.max():.2f}): no split can hold both classes")
        return f"{why}; {pos} of the {len(labels)} {kind} labels reach it"
