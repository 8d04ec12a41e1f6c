"""Stage 02 end to end: pre-filter, annotate, train, score, keep.

    stage = FilterStage(cfg, out)
    stage.prefilter(); stage.annotate(); stage.train(); stage.score(); stage.keep()
    stage.write_manifest()

Two paths run side by side: `web` (`filter.corpus`) and `code` (`filter.code_corpus`), each
with its own prompt and classifier (`classifier/` and `classifier_code/`) and its own output
(`kept/` and `kept_code/`, read by stage 03). Every step writes through resumable shards
keyed by `<corpus>/<id>`, so an interrupted stage picks up where it stopped.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from phi_lib.corpora import iter_documents
from phi_lib.dedup import MinHashDedup
from phi_lib.filter.annotate import annotate
from phi_lib.filter.classifier import EduClassifier, load_classifier, train_classifier
from phi_lib.filter.heuristics import code_blocks, first_drop_reason, web_blocks
from phi_lib.io import ReadStats, ShardedJsonlWriter, atomic_write_json, read_json, read_jsonl_folder

KINDS = ("web", "code")
KEPT_DIR = {"web": "kept", "code": "kept_code"}
CLASSIFIER_DIR = {"web": "classifier", "code": "classifier_code"}


class FilterStage:
    def __init__(self, cfg, out: Path, progress: bool = True):
        self.cfg, self.fc, self.out, self.progress = cfg, cfg.filter, Path(out), progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, dict] = {}
        self.reports: dict = {}
        self.statuses: dict[str, Counter] = {}
        self._embedder = None
        self._contam = None
        self.output_stats = ReadStats()
        """Corrupt lines met while reading this stage's own shards back (reported, not hidden)."""

    # ------------------------------------------------------------------ inputs
    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.specs(k)]

    def specs(self, kind: str) -> list[str]:
        if kind == "web":
            return list(self.fc.corpus)
        return [self.fc.code_corpus] if self.fc.code_corpus else []

    def documents(self, kind: str, stats: ReadStats) -> Iterator[dict]:
        """The corpus of one path, `max_docs` per corpus, each doc with its `key`."""
        for spec in self.specs(kind):
            docs = iter_documents(spec, text_field=self.fc.text_field, stats=stats,
                                  data_dir=self.cfg.run.data_dir, code=(kind == "code") or None)
            for n, doc in enumerate(docs):
                if self.fc.max_docs is not None and n >= self.fc.max_docs:
                    break
                doc["key"] = f"{doc['corpus']}/{doc['id']}"
                yield doc

    def _fingerprint(self) -> str:
        from phi_lib.stages import STAGES

        return STAGES["02"].config_hash(self.cfg)

    @property
    def embedder(self):
        if self._embedder is None:
            from phi_lib.embed import CachedEmbedder, get_embedder

            inner = get_embedder(self.fc.embedder, self.fc.embed_batch_size, self.fc.embed_max_tokens,
                                 run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)
            self._embedder = CachedEmbedder(inner, self.out / "embeddings.sqlite",
                                            self.fc.embed_max_tokens)
        return self._embedder

    def contamination(self):
        if self._contam is None and self.fc.decontaminate_against:
            from phi_lib.decontaminate import BenchmarkNgrams
            from phi_lib.hf_models import cache_dir

            self._contam = BenchmarkNgrams.build(self.fc.decontaminate_against,
                                                 self.fc.decontaminate_ngram,
                                                 self.cfg.run.data_dir, cache_dir() / "decontaminate",
                                                 key="filter.decontaminate_against")
        return self._contam

    # ------------------------------------------------------------------ 1. pre-filter
    def prefilter(self):
        """Heuristic blocks, decontamination and MinHash dedup; survivors -> `candidates/<kind>`."""
        from tqdm.auto import tqdm

        for kind in self.kinds():
            done = self.out / "candidates" / f"{kind}.done.json"
            if done.is_file() and read_json(done).get("fingerprint") == self._fingerprint():
                self.counts[kind] = read_json(done)["counts"]
                continue
            folder = self.out / "candidates" / kind
            if done.is_file():  # written under another config: start over
                shutil.rmtree(folder, ignore_errors=True)
            blocks = web_blocks(self.fc) if kind == "web" else code_blocks(self.fc)
            dedup = MinHashDedup(self.fc.dedup_threshold, self.fc.dedup_num_perm)
            contam = self.contamination()
            stats, seen = ReadStats(), set()
            per: dict[str, Counter] = defaultdict(Counter)
            # A rerun re-evaluates every document (so counts and the dedup index are whole)
            # and the writer skips the ones already on disk.
            with ShardedJsonlWriter(folder, "candidates", self.fc.shard_size, key_field="key") as w:
                for doc in tqdm(self.documents(kind, stats), desc=f"pre-filter {kind}",
                                disable=not self.progress, mininterval=2):
                    c = per[doc["corpus"]]
                    c["read"] += 1
                    reason = "duplicate_id" if doc["key"] in seen else None
                    seen.add(doc["key"])
                    reason = reason or first_drop_reason(blocks, doc["text"])
                    if reason is None and contam is not None:
                        bench = contam.match(doc["text"])
                        reason = f"contaminated_{bench}" if bench else None
                    if reason is None and dedup.duplicate_of(doc["key"], doc["text"]) is not None:
                        reason = "near_duplicate"
                    if reason is not None:
                        c[f"drop_{reason}"] += 1
                        continue
                    c["candidates"] += 1
                    w.write({k: doc[k] for k in ("key", "id", "text", "source", "corpus")})
            counts = {corpus: dict(c) for corpus, c in per.items()}
            counts["_corrupt"] = {"records": stats.records, "corrupt": stats.n_corrupt,
                                  "examples": [list(e) for e in stats.corrupt[:5]]}
            atomic_write_json(done, {"fingerprint": self._fingerprint(), "counts": counts})
            self.counts[kind] = counts
        return self.prefilter_table()

    def candidates(self, kind: str) -> Iterator[dict]:
        yield from read_jsonl_folder(self.out / "candidates" / kind, self.output_stats)

    def prefilter_table(self):
        import pandas as pd

        rows = []
        for kind, counts in self.counts.items():
            for corpus, c in counts.items():
                if corpus.startswith("_"):
                    continue
                rows.append({"kind": kind, "corpus": corpus, **c})
        df = pd.DataFrame(rows).fillna(0)
        num = df.select_dtypes("number").columns
        df[num] = df[num].astype(int)
        return df.set_index(["kind", "corpus"])

    # ------------------------------------------------------------------ 2. annotate
    def sample_for_annotation(self, kind: str) -> list[dict]:
        """A seeded uniform sample of `n_annotate` candidates (reservoir: one streaming pass)."""
        rng = random.Random(f"{self.cfg.run.seed}-annotate-{kind}")
        sample: list[dict] = []
        for i, doc in enumerate(self.candidates(kind)):
            if len(sample) < self.fc.n_annotate:
                sample.append(doc)
            else:
                j = rng.randint(0, i)
                if j < self.fc.n_annotate:
                    sample[j] = doc
        return sorted(sample, key=lambda d: d["key"])

    def annotate(self, backend=None):
        """Ask the judge about a sample of each path; writes `annotations.jsonl`."""
        from phi_lib.backends import get_backend

        own = backend is None
        if own:
            backend = get_backend(self.fc.annotator, cache_dir=self.out / "annotator_cache",
                                  run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)
        try:
            for kind in self.kinds():
                writer = ShardedJsonlWriter(self.out / "annotations_parts" / kind, "annotations",
                                            shard_size=1000, key_field="key")
                annotate(self.sample_for_annotation(kind), kind, backend, self.fc, writer,
                         self.progress)
        finally:
            if own:
                backend.close()
        records = self.annotations()
        self.statuses = {k: Counter(r["status"] for r in records if r["kind"] == k)
                         for k in self.kinds()}
        from phi_lib.io import atomic_open

        with atomic_open(self.out / "annotations.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return self.annotation_table()

    def annotations(self, kind: Optional[str] = None) -> list[dict]:
        kinds = [kind] if kind else self.kinds()
        out = []
        for k in kinds:
            out.extend(read_jsonl_folder(self.out / "annotations_parts" / k, self.output_stats))
        return out

    def annotation_table(self):
        """Per path: replies by parse status, labels, mean scores, text/log-prob agreement."""
        import pandas as pd

        rows = []
        for kind in self.kinds():
            recs = self.annotations(kind)
            st = Counter(r["status"] for r in recs)
            both = [(r["score_text"], r["score_logprobs"]) for r in recs
                    if r["score_text"] is not None and r["score_logprobs"] is not None]
            labels = [r["label"] for r in recs if r["label"] is not None]
            rows.append({"kind": kind, "annotated": len(recs), **{f"status_{s}": n for s, n in st.items()},
                         "labelled": len(labels), "no_label": len(recs) - len(labels),
                         "mean_label": float(np.mean(labels)) if labels else float("nan"),
                         "educational_share": float(np.mean([l >= self.fc.label_threshold for l in labels]))
                         if labels else float("nan"),
                         "text_vs_logprob_corr": float(np.corrcoef(np.array(both).T)[0, 1])
                         if len(both) > 2 and np.std(np.array(both), 0).min() > 0 else float("nan")})
        return pd.DataFrame(rows).set_index("kind").fillna(0)

    def sample_replies(self, n: int = 4):
        import pandas as pd

        recs = self.annotations()[:n]
        return pd.DataFrame([{"kind": r["kind"], "doc": r["text"][:160], "reply": r["reply"][:200],
                              "status": r["status"], "score_text": r["score_text"],
                              "score_logprobs": r["score_logprobs"]} for r in recs])

    # ------------------------------------------------------------------ 3. train
    def train(self):
        """Embed the labelled samples, fit the head, validate, save `classifier*/`."""
        import pandas as pd

        rows = []
        for kind in self.kinds():
            recs = [r for r in self.annotations(kind) if r["label"] is not None]
            if len(recs) < 2:
                raise ValueError(f"filter: only {len(recs)} of the {kind} annotations carry a score "
                                 f"(statuses: {dict(Counter(r['status'] for r in self.annotations(kind)))}); "
                                 f"raise filter.n_annotate or use a stronger filter.annotator")
            X = self.embedder.embed([r["text"] for r in recs])
            y = np.array([r["label"] for r in recs], dtype=np.float32)
            clf, report = train_classifier(
                X, y, kind=self.fc.classifier, threshold=self.fc.label_threshold,
                val_fraction=self.fc.val_fraction, seed=self.cfg.run.seed,
                embedder_name=self.fc.embedder, embed_max_tokens=self.fc.embed_max_tokens,
                n_estimators=self.fc.n_estimators, embedder=self.embedder,
                extra_meta={"kind": kind, "annotator": self.fc.annotator.model,
                            "score_from": self.fc.score_from})
            clf.save(self.out / CLASSIFIER_DIR[kind])
            self.reports[kind] = report
            rows.append({"kind": kind, **report.metrics()})
        return pd.DataFrame(rows).set_index("kind")

    def classifier(self, kind: str) -> EduClassifier:
        return load_classifier(self.out / CLASSIFIER_DIR[kind], embedder=self.embedder)

    # ------------------------------------------------------------------ 4. score
    def score(self):
        """Score every candidate in batches, resumable; -> `scored/<kind>` shards."""
        from tqdm.auto import tqdm

        for kind in self.kinds():
            clf = self.classifier(kind)
            total = sum(c.get("candidates", 0) for k, c in self.counts.get(kind, {}).items()
                        if not k.startswith("_")) or None
            with ShardedJsonlWriter(self.out / "scored" / kind, "scored", self.fc.shard_size,
                                    key_field="key") as w:
                bar = tqdm(total=total, desc=f"score {kind}", disable=not self.progress)
                batch: list[dict] = []
                for doc in self.candidates(kind):
                    bar.update(1)
                    if w.has(doc["key"]):
                        continue
                    batch.append(doc)
                    if len(batch) >= self.fc.score_batch_size:
                        self._score_batch(clf, batch, w)
                        batch = []
                if batch:
                    self._score_batch(clf, batch, w)
                bar.close()

    def _score_batch(self, clf: EduClassifier, batch: list[dict], w: ShardedJsonlWriter) -> None:
        scores = clf.score_embeddings(self.embedder.embed([d["text"] for d in batch]))
        for d, s in zip(batch, scores):
            w.write({**d, "score": round(float(s), 5)})

    def scored(self, kind: str) -> Iterator[dict]:
        yield from read_jsonl_folder(self.out / "scored" / kind, self.output_stats)

    # ------------------------------------------------------------------ 5. keep
    def threshold(self, kind: str) -> float:
        """`keep_threshold`, else the score that keeps the top `keep_fraction`."""
        if self.fc.keep_threshold is not None:
            return float(self.fc.keep_threshold)
        scores = np.fromiter((r["score"] for r in self.scored(kind)), dtype=np.float64)
        if len(scores) == 0:
            return float("inf")
        return float(np.quantile(scores, 1.0 - self.fc.keep_fraction, method="higher")) \
            if self.fc.keep_fraction > 0 else float("inf")

    def keep(self):
        """Write `kept/` (web) and `kept_code/` shards of the documents at or above threshold."""
        self.kept_counts: dict[str, Counter] = {}
        for kind in self.kinds():
            thr = self.threshold(kind)
            final = self.out / KEPT_DIR[kind]
            tmp = self.out / f".{KEPT_DIR[kind]}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            kept = Counter()
            with ShardedJsonlWriter(tmp, "shard", self.fc.shard_size, key_field="key") as w:
                for r in self.scored(kind):
                    if r["score"] >= thr:
                        kept[r["corpus"]] += 1
                        w.write({"id": r["id"], "text": r["text"], "source": r["source"],
                                 "corpus": r["corpus"], "score": r["score"], "key": r["key"]})
            shutil.rmtree(final, ignore_errors=True)  # derived output: swapped in whole
            tmp.rename(final)
            self.kept_counts[kind] = kept
            atomic_write_json(self.out / f"{KEPT_DIR[kind]}.json",
                              {"threshold": thr, "kept": dict(kept)})
        return self.kept_table()

    def kept_table(self):
        """Per corpus: read, pre-filter survivors, scored, kept and the kept fraction."""
        import pandas as pd

        rows = []
        for kind in self.kinds():
            scored = Counter(r["corpus"] for r in self.scored(kind))
            info = read_json(self.out / f"{KEPT_DIR[kind]}.json")
            for corpus, c in self.counts.get(kind, {}).items():
                if corpus.startswith("_"):
                    continue
                kept = info["kept"].get(corpus, 0)
                rows.append({"kind": kind, "corpus": corpus, "read": c.get("read", 0),
                             "after_prefilter": c.get("candidates", 0), "scored": scored[corpus],
                             "kept": kept, "kept_fraction": kept / max(c.get("read", 0), 1),
                             "threshold": info["threshold"]})
        return pd.DataFrame(rows).set_index(["kind", "corpus"])

    def extremes(self, n: int = 3, kind: str = "web", chars: int = 400):
        """The highest and lowest scored documents side by side (streaming: holds n records,
        so it works on a corpus of any size)."""
        import heapq

        import pandas as pd

        def score(r: dict) -> float:
            return r["score"]

        top = heapq.nlargest(n, self.scored(kind), key=score)
        bottom = heapq.nsmallest(n, self.scored(kind), key=score)
        return pd.DataFrame({
            "highest score": [f"{r['score']:.2f}" for r in top],
            "highest": [r["text"][:chars] for r in top],
            "lowest score": [f"{r['score']:.2f}" for r in bottom],
            "lowest": [r["text"][:chars] for r in bottom]})

    # ------------------------------------------------------------------ plots
    def plot_classifier(self, path: Path):
        """Per path: validation confusion matrix and predicted-vs-annotated scores."""
        from phi_lib.filter.plots import plot_classifier

        return plot_classifier(self._reports(), path)

    def plot_scores(self, path: Path):
        """Histogram of corpus scores per path with the keep threshold."""
        from phi_lib.filter.plots import plot_scores

        data = {k: np.array([r["score"] for r in self.scored(k)]) for k in self.kinds()}
        thr = {k: read_json(self.out / f"{KEPT_DIR[k]}.json")["threshold"] for k in self.kinds()}
        return plot_scores(data, thr, self.fc.label_threshold, path)

    def _reports(self):
        if not self.reports:  # a fresh kernel: rebuild from the saved metadata
            from phi_lib.filter.classifier import ClassifierReport

            for kind in self.kinds():
                meta = read_json(self.out / CLASSIFIER_DIR[kind] / "classifier.json")
                v = meta["validation"]
                self.reports[kind] = ClassifierReport(
                    n_train=v["n_train"], n_val=v["n_val"], threshold=meta["label_threshold"],
                    f1=v["f1"], roc_auc=v["roc_auc"], precision=v["precision"], recall=v["recall"],
                    mse=v["val_mse"], confusion=v["confusion"], positive_rate=v["positive_rate"])
        return self.reports

    # ------------------------------------------------------------------ manifest
    def write_manifest(self) -> dict:
        from phi_lib.io import write_manifest

        metrics, counts = {}, {}
        for kind in self.kinds():
            for name, value in self._reports()[kind].metrics().items():
                metrics[f"{kind}/{name}"] = float(value)
            table = self.annotation_table().loc[kind]
            for col, value in table.items():
                if col.startswith("status_") or col in ("annotated", "labelled", "no_label"):
                    counts[f"{kind}/annotations/{col}"] = int(value)
            metrics[f"{kind}/mean_label"] = float(table["mean_label"])
            info = read_json(self.out / f"{KEPT_DIR[kind]}.json")
            metrics[f"{kind}/threshold"] = float(info["threshold"])
            read = kept = 0
            for corpus, c in self.counts.get(kind, {}).items():
                if corpus.startswith("_"):
                    counts[f"{kind}/corrupt"] = int(c["corrupt"])
                    continue
                for k, v in c.items():
                    counts[f"{kind}/{corpus}/{k}"] = int(v)
                counts[f"{kind}/{corpus}/kept"] = int(info["kept"].get(corpus, 0))
                read += c.get("read", 0)
                kept += info["kept"].get(corpus, 0)
            metrics[f"{kind}/kept_fraction"] = kept / max(read, 1)
            counts[f"{kind}/kept"] = kept
        # shards are read several times: count each bad (file, line) once
        counts["corrupt_output_records"] = len({c[:2] for c in self.output_stats.corrupt})
        if self._contam is not None:
            counts["benchmark_lines_unchecked"] = self._contam.unreadable
        figures = [f for f in ("classifier.png", "scores.png") if (self.out / f).is_file()]
        return write_manifest(self.out, self.cfg, "02", metrics=metrics, counts=counts,
                              figures=figures,
                              outputs={k: KEPT_DIR[k] for k in self.kinds()})
