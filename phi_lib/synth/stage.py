"""Stage 01 as one stage object (phi_lib.stage_base): the notebook's cells are its steps.

    stage = SynthStage(cfg, out)
    stage.topics()     # -> .topics.jsonl           where prompt diversity starts
    stage.prompts()    # -> .prompts.jsonl          seeded templates x topics x audiences x styles
    stage.generate()   # -> .generated/<kind>/      raw completions (stale ones pruned, resumable)
    stage.filter()     # -> <kind>/, .dropped/<kind>/  kept samples; dropped ones with the reason
    stage.report()     # -> diversity metrics, counts.png, audiences.png, embeddings.png
    manifest = stage.write_manifest()

Each step reads what the step before it wrote, records its stats and fingerprint in
`.steps/<step>.json` and is skipped while its fingerprint (phi_lib.synth.fingerprints) and its
outputs are unchanged. So a changed sampling knob regenerates (and re-filters) every sample,
a changed quality-filter knob re-filters the stored raw completions without asking the
backend, and a failed request is counted as `pending` and asked again on the next run (the
stage stops instead of being marked done with samples missing).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional

from phi_lib.io import (ReadStats, ShardedJsonlWriter, atomic_open, read_jsonl, read_jsonl_folder,
                        replace_dir)
from phi_lib.provenance import Fingerprint, digest, is_current, path_digest
from phi_lib.stage_base import BaseStage
from phi_lib.synth import fingerprints as fps
from phi_lib.synth import quality
from phi_lib.synth.generate import (DROPPED, GENERATED, generate, read_generated, read_samples,
                                    sample_record)
from phi_lib.synth.prompts import KINDS, PromptSpec, build_prompts
from phi_lib.synth.topics import Topic, load_topics

TOPICS_FILE = ".topics.jsonl"
PROMPTS_FILE = ".prompts.jsonl"
FIGURES = ("counts.png", "audiences.png", "embeddings.png")
SANDBOX_STATUSES = ("passed", "failed", "timeout", "error")
"""What an exercise run in the sandbox can end as (phi_lib.sandbox.SandboxResult.status)."""
ERRORS_SHOWN = 20
"""Failed request ids listed in the manifest (all are counted)."""


class SynthStage(BaseStage):
    """Stage 01: synthetic textbooks and exercises (phi-1 sec. 2.2, phi-1.5 sec. 2)."""

    number = "01"

    def __init__(self, cfg, out: Optional[Path] = None, backend=None):
        super().__init__(cfg, out)
        self.scfg = cfg.synth
        self._backend = backend
        """The generator; opened on first use (`backend=` injects one, e.g. in tests)."""
        self._register_inputs()

    # ------------------------------------------------------------------ files and inputs
    def path(self, name: str) -> Path:
        return self.out / name

    def _register_inputs(self) -> None:
        """The data files the stage reads (the runner reruns it when one changes)."""
        from phi_lib.backends import model_path
        from phi_lib.corpora import resolve_corpus

        s = self.scfg
        if s.topics == "web":
            self.inputs["web_corpus"] = resolve_corpus(s.web_corpus, self.cfg.run.data_dir)
        elif s.topics != "taxonomy":
            self.inputs["topics"] = Path(s.topics)
        for name, path in self.benchmark_paths(strict=False).items():
            self.inputs[f"benchmark:{name}"] = path
        model = model_path(s.backend, self.cfg.run_dir)
        if model is not None and s.backend.model != "checkpoint":  # a checkpoint is an output
            self.inputs["generator"] = model

    def benchmark_paths(self, strict: bool = True) -> dict[str, Path]:
        """Benchmark name -> the file or folder decontamination reads (`strict`: a missing
        one raises, naming synth.decontaminate_against)."""
        from phi_lib.decontaminate import benchmark_path
        from phi_lib.paths import MissingDataError

        out = {}
        for name in dict.fromkeys(list(self.scfg.decontaminate_against)
                                  + list(self.scfg.decontaminate_code_against)):
            try:
                out[name] = benchmark_path(name, self.cfg.run.data_dir, "synth.decontaminate_against")
            except MissingDataError:
                if strict:
                    raise
        return out

    def backend(self):
        if self._backend is None:
            from phi_lib.backends import get_backend

            self._backend = get_backend(self.scfg.backend, cache_dir=self.out / ".cache",
                                        run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir)
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()

    def _digest(self, *paths: Path) -> str:
        """Content digest of outputs, by their names inside the stage folder (a copied run
        folder is the same content)."""
        return digest([(p.relative_to(self.out).as_posix(), path_digest(p)) for p in paths])

    def _up_to_date(self, step: str, fp: Fingerprint, outputs: tuple[Path, ...]) -> bool:
        """Step `step` finished with `fp`, nothing is pending, and its outputs are as it left them."""
        st = self.step_stats(step) or {}
        return (is_current(st.get("fingerprint"), fp) and not st.get("pending")
                and st.get("outputs_digest") == self._digest(*outputs))

    def generation_fingerprint(self) -> Fingerprint:
        return fps.generation_fingerprint(self.cfg, self.cfg.run_dir)

    def filter_fingerprint(self) -> Fingerprint:
        return fps.filter_fingerprint(self.cfg, self.benchmark_paths())

    # ------------------------------------------------------------------ step 1: topics
    def topics(self):
        """The topic list (taxonomy, a topic file or web extracts; LLM-expanded if asked)."""
        s, topics_file = self.scfg, self.path(TOPICS_FILE)
        inputs = {k: path_digest(self.inputs[k]) for k in ("topics", "web_corpus") if k in self.inputs}
        fp = fps.topics_fingerprint(self.cfg, inputs)
        if not self._up_to_date("topics", fp, (topics_file,)):
            with self.timed() as t:
                topics = load_topics(s, seed=self.cfg.run.seed, data_dir=self.cfg.run.data_dir,
                                     backend=self.backend() if s.expand_topics_to else None)
                _write_jsonl(topics_file, [dataclasses.asdict(x) for x in topics])
            self.record("topics", fingerprint=fp, counts={"topics": len(topics)},
                        seconds=t["seconds"], outputs_digest=self._digest(topics_file))
        return topics_table(self.read_topics())

    def read_topics(self) -> list[Topic]:
        return [Topic(**d) for d in read_jsonl(self.path(TOPICS_FILE))]

    # ------------------------------------------------------------------ step 2: prompts
    def prompts(self, n_shown: int = 6):
        """Every prompt of the run: record i of a kind is drawn from (run seed, kind, i)."""
        prompts_file = self.path(PROMPTS_FILE)
        fp = fps.prompts_fingerprint(self.cfg, path_digest(self.path(TOPICS_FILE)))
        if not self._up_to_date("prompts", fp, (prompts_file,)):
            with self.timed() as t:
                specs = build_prompts(self.scfg, self.read_topics(), self.cfg.run.seed)
                _write_jsonl(prompts_file, [s.fields() for s in specs])
            self.record("prompts", fingerprint=fp, counts={"prompts": len(specs)},
                        seconds=t["seconds"], outputs_digest=self._digest(prompts_file))
        return prompts_table(self.read_prompts(), n_shown)

    def read_prompts(self) -> list[PromptSpec]:
        return [PromptSpec(**{k: v for k, v in d.items() if k != "prompt_hash"})
                for d in read_jsonl(self.path(PROMPTS_FILE))]

    # ------------------------------------------------------------------ step 3: generate
    def generate(self, progress: bool = True):
        """Ask the backend for every prompt without a current raw completion; prune the stale
        ones (from the raw store and from the kept/dropped samples) first."""
        gen, store = self.generation_fingerprint(), self.path(GENERATED)
        fp = Fingerprint.of(config=gen.config, inputs={
            **gen.inputs, "prompts": path_digest(self.path(PROMPTS_FILE))})
        if self._up_to_date("generate", fp, (store,)):
            return kinds_table(self.step_stats("generate")["table"])
        specs = self.read_prompts()
        wanted = {s.id: s.fields() for s in specs}
        if self.cfg.synth.check_exercises and any(s.kind == "code_exercises" for s in specs):
            from phi_lib import sandbox  # the walls the checks need exist, before generating
            from phi_lib.synth.quality import SANDBOX_KEY

            sandbox.require(self.cfg.synth.sandbox_isolation, SANDBOX_KEY)

        def current(rec: dict) -> bool:
            return rec.get("fingerprint") == gen.key and fps.spec_matches(rec, wanted.get(rec.get("id")))

        run = generate(specs, self.backend, folder=store, fingerprint=gen.key, cfg=self.cfg,
                       is_current=current, progress=progress,
                       also_prune=(self.out, self.path(DROPPED)))
        counts = {"backend_errors": len(run.errors), "cached_completions": run.cached,
                  "stale_removed": sum(run.removed.values())}
        for kind in run.reused:
            counts[f"{kind}/reused"] = run.reused[kind]
            counts[f"{kind}/asked"] = run.asked.get(kind, 0)
        metrics = {}
        if run.new_tokens and run.seconds:
            metrics["generation_tokens_per_s"] = run.new_tokens / run.seconds
        pending = None
        if run.errors:
            first_id, first = run.errors[0]
            pending = {"count": len(run.errors), "ids": [i for i, _ in run.errors[:ERRORS_SHOWN]],
                       "message": f"{len(run.errors)} of {sum(run.asked.values())} requests failed "
                                  f"(first: {first_id}: {first[:200]}); a failed request is not a "
                                  f"result, it is asked again on the next run"}
        self.record("generate", fingerprint=fp, counts=counts, metrics=metrics,
                    seconds=round(run.seconds, 2), outputs_digest=self._digest(store),
                    pending=pending, table=run.rows())
        return kinds_table(run.rows())

    # ------------------------------------------------------------------ step 4: filter
    def filter(self):
        """Quality-filter the raw completions into kept and dropped samples (each kind's two
        folders rewritten whole). A sample whose completion and filter settings are unchanged
        keeps its verdict; near-duplicates are decided again over the whole kind."""
        flt, store = self.filter_fingerprint(), self.path(GENERATED)
        fp = Fingerprint.of(config=flt.config, inputs={**flt.inputs, "generated": self._digest(store)})
        outputs = self._sample_dirs()
        if self._up_to_date("filter", fp, outputs):
            return kinds_table(self.step_stats("filter")["table"])
        with self.timed() as t:
            stats, bench = ReadStats(), _Lazy(lambda: self._benchmarks(flt))
            bench.code = _Lazy(self._code_benchmarks)  # AST and embedding decontamination
            bench.embedder = _Lazy(self._code_embedder)
            rows, counts, drops, metrics, reused = [], {}, {}, {}, 0
            for kind in KINDS:
                if kind in self.scfg.kinds or any((d / kind).is_dir() for d in (
                        store, self.out, self.path(DROPPED))):
                    samples, n = self._filter_kind(kind, flt.key, bench, stats)
                    reused += n
                    if kind in self.scfg.kinds:
                        rows.append(kind_stats(kind, samples, counts, drops, metrics))
            n_gen = sum(r["generated"] for r in rows)
            metrics["tokens"] = sum(r["kept tokens"] for r in rows)
            metrics["keep_rate"] = sum(r["kept"] for r in rows) / max(n_gen, 1)
            counts.update(corrupt_records=stats.n_corrupt, filter_verdicts_reused=reused)
        self.record("filter", fingerprint=fp, counts=counts, drops=drops, metrics=metrics,
                    seconds=t["seconds"], outputs_digest=self._digest(*outputs), table=rows)
        return kinds_table(rows)

    def _filter_kind(self, kind: str, filter_key: str, bench, stats: ReadStats) -> tuple[list, int]:
        """(the samples of `kind` with their verdicts, verdicts reused), written to the kept and
        dropped folders (removed where the kind is no longer asked for)."""
        samples = [dict(sample_record(r), filter_fingerprint=filter_key)
                   for r in read_generated(self.out, kind, stats)]
        reused = self._reuse_verdicts(kind, samples, filter_key)
        quality.check_alone([r for r in samples if "_reused" not in r], self.scfg, bench,
                            getattr(bench, "code", None), getattr(bench, "embedder", None))
        quality.drop_near_duplicates(samples, self.scfg.dedup_threshold)
        for r in samples:
            r.pop("_reused", None)
        self._write_samples(kind, samples, keep_folders=kind in self.scfg.kinds)
        return samples, reused

    def _sample_dirs(self) -> tuple[Path, ...]:
        return tuple(p for k in KINDS for p in (self.out / k, self.path(DROPPED) / k))

    def _benchmarks(self, flt: Fingerprint):
        from phi_lib.decontaminate import BenchmarkNgrams
        from phi_lib.hf_models import cache_dir

        # the cache folder is keyed by the benchmark files' contents too
        return BenchmarkNgrams.build(
            list(self.scfg.decontaminate_against), self.scfg.decontaminate_ngram,
            data_dir=self.cfg.run.data_dir, key="synth.decontaminate_against",
            cache_dir=cache_dir() / "decontaminate" / digest(flt.inputs))

    def _code_benchmarks(self):
        from phi_lib.synth.code_decontam import CodeBenchmarks

        return CodeBenchmarks.build(self.scfg.decontaminate_code_against, self.cfg.run.data_dir)

    def _code_embedder(self):
        from phi_lib.embed import get_embedder

        return get_embedder(self.scfg.decontaminate_embedder, run_dir=self.cfg.run_dir,
                            data_dir=self.cfg.run.data_dir)

    def _reuse_verdicts(self, kind: str, samples: list[dict], filter_key: str) -> int:
        """Copy the verdict of the alone-judging filters from the sample written last time
        when its completion and the filter settings are the same (marks them `_reused`)."""
        prior = {r["id"]: r for folder in (self.out / kind, self.path(DROPPED) / kind)
                 for r in read_jsonl_folder(folder)
                 if r.get("filter_fingerprint") == filter_key}
        n = 0
        for r in samples:
            p = prior.get(r["id"])
            if p is None or p.get("completion_hash") != r["completion_hash"] \
                    or p.get("fingerprint") != r["fingerprint"]:
                continue
            if p.get("drop_reason") and p["drop_reason"] != "near_duplicate":
                r["drop_reason"] = p["drop_reason"]
                if "drop_detail" in p:
                    r["drop_detail"] = p["drop_detail"]
            for k in ("ast_match", "embedding_match", "sandbox_status"):
                if k in p:
                    r[k] = p[k]
            r["_reused"] = True
            n += 1
        return n

    def _write_samples(self, kind: str, samples: list[dict], keep_folders: bool) -> None:
        """Rewrite the kept and dropped folders of `kind` whole (write beside, then swap)."""
        for dest, recs in ((self.out / kind, [r for r in samples if not r.get("drop_reason")]),
                           (self.path(DROPPED) / kind, [r for r in samples if r.get("drop_reason")])):
            new = dest.with_name(f".{dest.name}.new")
            for leftover in (new, dest.with_name(f".{dest.name}.old")):
                if leftover.exists():
                    shutil.rmtree(leftover)
            if not keep_folders and not recs:
                if dest.exists():
                    shutil.rmtree(dest)
                continue
            with ShardedJsonlWriter(new, "shard", self.scfg.shard_size, "id") as w:
                for r in sorted(recs, key=lambda r: r["id"]):
                    w.write(r)
            replace_dir(new, dest)

    # ------------------------------------------------------------------ step 5: report
    def report(self, device: str = "cpu"):
        """Diversity of the kept samples (distinct-n, coverage, embedding spread) and plots."""
        import matplotlib.pyplot as plt

        from phi_lib.synth import report as rep

        kinds = list(self.scfg.kinds)
        fp = Fingerprint.of(
            config={"synth": {"audiences": self.scfg.audiences, "styles": self.scfg.styles,
                              "kinds": kinds}},
            inputs={"samples": self._digest(*self._sample_dirs()),
                    "topics": path_digest(self.path(TOPICS_FILE))})
        figures = tuple(self.out / f for f in FIGURES)
        kept = {k: read_samples(self.out, k) for k in kinds}
        if not self._up_to_date("report", fp, figures):
            with self.timed() as t:
                metrics, emb, embedded = rep.diversity_metrics(self.cfg, kept, self.read_topics(), device)
                counts = kinds_table((self.step_stats("filter") or {}).get("table") or [])
                everything = [r for k in kinds for r in kept[k]]
                made = {"counts.png": rep.counts_figure(counts) if len(counts) else None,
                        "audiences.png": rep.audiences_figure(everything),
                        "embeddings.png": rep.embeddings_figure(
                            emb, embedded, kinds, metrics["all/embedding_spread"])}
                self.figures = []
                for name, fig in made.items():
                    if fig is None:  # not drawable this time: no stale plot stays behind
                        self.path(name).unlink(missing_ok=True)
                        continue
                    self.save_figure(fig, name)
                    plt.close(fig)
            self.record("report", fingerprint=fp, metrics=metrics, seconds=t["seconds"],
                        figures=self.figures, outputs_digest=self._digest(*figures))
        self._restore_figures()
        rep.samples_table(kept, self.scfg.report_samples).to_csv(self.path("samples.csv"), index=False)
        return rep.metrics_table(self.step_stats("report")["metrics"])

    def _restore_figures(self) -> None:
        if not self.figures:
            self.figures = list((self.step_stats("report") or {}).get("figures") or [])

    def show_figures(self) -> None:
        """Display the report's plots inline (in a notebook)."""
        from IPython.display import Image, display

        self._restore_figures()
        display(*[Image(filename=str(self.path(f))) for f in self.figures])

    def samples(self):
        """A few kept samples (written by `report`)."""
        import pandas as pd

        return pd.read_csv(self.path("samples.csv"))

    def write_manifest(self, **extra) -> dict:
        """`01_synthesize/manifest.json`: every step's counts, drops and metrics; raises
        StageIncomplete (after writing it) while failed requests are pending."""
        from phi_lib.sandbox import isolation_report

        self._restore_figures()
        scfg = self.cfg.synth  # the walls the exercise checks ran behind (None: no code ran)
        ran = scfg.check_exercises and scfg.kinds.get("code_exercises", 0)
        extra.setdefault("sandbox", isolation_report(scfg.sandbox_isolation) if ran else None)
        return super().write_manifest(**extra)


# ---------------------------------------------------------------------------- tables, helpers
def kinds_table(rows: list[dict]):
    """Rows of per-kind counts (a step's `table`) as a DataFrame indexed by kind (0 where a
    kind has no entry for a column, e.g. a drop reason)."""
    import pandas as pd

    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index("kind").fillna(0).astype(int)


def topics_table(topics: list[Topic]):
    """Topics per (group, subject, origin) as a DataFrame."""
    import pandas as pd

    df = pd.DataFrame([{"group": t.group, "subject": t.subject, "origin": t.origin} for t in topics])
    return df.value_counts().rename("topics").reset_index()


def prompts_table(specs: list[PromptSpec], n: int = 6):
    """The first `n` prompts of each kind as a DataFrame."""
    import pandas as pd

    rows, seen = [], {}
    for s in specs:
        if seen.get(s.kind, 0) < n:
            seen[s.kind] = seen.get(s.kind, 0) + 1
            rows.append({"id": s.id, "topic": s.topic, "audience": s.audience, "style": s.style,
                         "function": s.function_name or "", "prompt": s.prompt[:160]})
    return pd.DataFrame(rows)


def kind_stats(kind: str, samples: list[dict], counts: dict, drops: dict, metrics: dict) -> dict:
    """The table row of a kind's filtered samples; adds its counts (`<kind>/generated`,
    `<kind>/kept`), drops (`<kind>/<reason>`) and metrics (`<kind>/tokens`, `/chars`); for
    exercises also `code_exercises/sandbox_run` (how many ran their asserts in the sandbox)
    and `code_exercises/sandbox_<status>` for each status."""
    kept = [r for r in samples if not r.get("drop_reason")]
    row = {"kind": kind, "generated": len(samples), "kept": len(kept)}
    for r in samples:
        if r.get("drop_reason"):
            drops[f"{kind}/{r['drop_reason']}"] = drops.get(f"{kind}/{r['drop_reason']}", 0) + 1
            col = f"dropped: {r['drop_reason']}"
            row[col] = row.get(col, 0) + 1
    row["kept tokens"] = sum(int(r.get("completion_tokens", 0)) for r in kept)
    counts[f"{kind}/generated"], counts[f"{kind}/kept"] = len(samples), len(kept)
    rates = [r["ast_match"]["rate"] for r in samples if r.get("ast_match")]
    if kind == "code_exercises":  # phi-1's table: what each AST match-rate threshold would prune
        from phi_lib.synth.code_decontam import prune_table

        counts[f"{kind}/ast_checked"] = len(rates)
        ran = [r["sandbox_status"] for r in samples if r.get("sandbox_status")]
        counts[f"{kind}/sandbox_run"] = len(ran)  # reached the sandbox: its asserts ran
        counts.update({f"{kind}/sandbox_{s}": ran.count(s) for s in SANDBOX_STATUSES})
        counts.update({f"{kind}/ast_prune_at_{t}": n for t, n in prune_table(rates).items()})
    metrics[f"{kind}/tokens"] = row["kept tokens"]
    metrics[f"{kind}/chars"] = sum(len(r["text"]) for r in kept)
    return row


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


class _Lazy:
    """A value built on first call (the benchmark n-grams: only if a sample gets that far)."""

    def __init__(self, make):
        self.make, self.value = make, None

    def __call__(self):
        if self.value is None:
            self.value = self.make()
        return self.value
