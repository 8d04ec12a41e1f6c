"""Stage 07 as the notebook runs it: one verb per cell.

    stage = ToxicityStage(cfg, out)
    stage.toxigen_scores(); stage.toxigen_plot()
    stage.complete_probes(); stage.judge_probes()
    book = stage.grade_book(); stage.counts(); stage.agreement()
    stage.write_results(); manifest = stage.write_manifest()

Outputs under `07_toxicity/`: `toxigen/<model>/<group>.jsonl` (perplexity per statement),
`toxigen/scores.json`, `toxigen.png`, `completions/<model>/` (one record per prompt),
`grades_judge/`, `grades_human.jsonl` (the hand grader's log), `results.json`,
`manifest.json`. Every per-group result, completion and judge grade carries the fingerprint
of what produced it (`group_fingerprint`, `completions_fingerprint`, `grade_fingerprint`: the
settings it depends on, the content identity of the model or judge, the data files); stale
ones are recomputed, and removed first so none remains.
"""
from __future__ import annotations

import shutil
import time
from functools import cached_property
from typing import Optional

from phi_lib.config import TOXIGEN_GROUPS, BackendConfig
from phi_lib.hf_models import effective_dtype, model_identity, model_slug
from phi_lib.io import ReadStats, atomic_write_json, prune_keyed, read_json, read_keyed
from phi_lib.provenance import Fingerprint, digest, path_digest, results_view
from phi_lib.safety import grader, judge, perplexity, probes, report, toxigen
from phi_lib.safety.safety_score import GroupScore, group_scores, mean_score
from phi_lib.stage_base import BaseStage

FIGURE = "toxigen.png"


class ToxicityStage(BaseStage):
    """Stage 07: ToxiGen safety scores and the adversarial prompts, judged and hand graded."""

    number = "07"

    def __init__(self, cfg, out=None):
        super().__init__(cfg, out)
        tc = cfg.toxicity
        self.groups = list(tc.groups or TOXIGEN_GROUPS)
        for g in self.groups:  # the data files read (the runner re-checks them)
            for label in toxigen.LABELS:
                self.inputs[f"toxigen.{g}.{label}"] = toxigen.group_file(g, label, cfg.run.data_dir)
        self.inputs["adversarial_prompts"] = probes.PROMPTS_FILE

    # ------------------------------------------------------------------ identities
    @cached_property
    def identities(self) -> dict[str, str]:
        """Model name -> content identity, resolved before any work: `checkpoint` without a
        stage-05 checkpoint in this run fails here, saying what to do."""
        ids = {}
        for name in self.cfg.toxicity.models:
            try:
                ids[name] = model_identity(name, self.cfg.run_dir, self.cfg.run.data_dir)
            except FileNotFoundError as e:
                if name != "checkpoint":
                    raise
                raise FileNotFoundError(
                    f"toxicity.models: 'checkpoint' is the last checkpoint of stage 05 in run "
                    f"{self.cfg.run.name!r}, and there is none ({e}). Run stage 05 first "
                    f"(python -m phi_lib run <params> --stages 05), or probe other models "
                    f"(--set toxicity.models=smollm2).") from None
        return ids

    @cached_property
    def judge_identity(self) -> str:
        """What answers as the judge: a local model's content identity, a server's model name."""
        j = self.cfg.toxicity.judge
        if j.kind == "openai":
            return f"name:{j.model}"
        return model_identity(j.model, self.cfg.run_dir, self.cfg.run.data_dir)

    @cached_property
    def dtype(self) -> str:
        """The probed models' dtype as loaded (`auto` resolved on this machine)."""
        return effective_dtype(self.cfg.toxicity.dtype, self.cfg.toxicity.device)

    @cached_property
    def judge_dtype(self) -> str:
        """The judge's dtype as loaded (a server's as configured)."""
        j = self.cfg.toxicity.judge
        return j.dtype if j.kind == "openai" else effective_dtype(j.dtype, j.device)

    def group_fingerprint(self, model: str, group: str) -> Fingerprint:
        """Of a group's perplexities: which statements (sample size, seed), the model, dtype."""
        tc, files = self.cfg.toxicity, self.inputs
        return Fingerprint.of(
            config={"toxicity": {"per_group": tc.per_group, "dtype": self.dtype},
                    "run": {"seed": self.cfg.run.seed}},
            inputs={"model": self.identities[model],
                    **{f"data.{label}": path_digest(files[f"toxigen.{group}.{label}"])
                       for label in toxigen.LABELS}})

    def completions_fingerprint(self, model: str) -> Fingerprint:
        """Of a model's completions: sampling, seed, dtype, the model, the prompt suite."""
        tc = self.cfg.toxicity
        return Fingerprint.of(
            config={"toxicity": {"sampling": tc.sampling, "dtype": self.dtype},
                    "run": {"seed": self.cfg.run.seed}},
            inputs={"model": self.identities[model],
                    "prompts": path_digest(self.inputs["adversarial_prompts"])})

    def grade_fingerprint(self, completion: dict) -> Fingerprint:
        """Of a judge grade: the judge (settings and identity) and the exact prompt it read
        (rubric + the graded prompt and completion)."""
        tc = self.cfg.toxicity
        return Fingerprint.of(
            config={"toxicity": {"judge": {**results_view(tc.judge), "dtype": self.judge_dtype},
                                 "judge_sampling": tc.judge_sampling,
                                 "judge_format": tc.judge_format}},
            inputs={"judge": self.judge_identity,
                    "prompt": digest(judge.judge_prompt(completion["prompt"],
                                                        completion["completion"],
                                                        tc.judge_format))})

    def _load(self, name: str):
        from phi_lib.hf_models import load_causal_lm

        tc = self.cfg.toxicity
        return lambda: load_causal_lm(name, device=tc.device, dtype=tc.dtype,
                                      run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir,
                                      tokenizer=self.cfg.model.tokenizer)

    def _prune_other_models(self, folder_name: str) -> None:
        """Folders of models no longer probed would outlive the config that made them."""
        keep = {model_slug(m) for m in self.cfg.toxicity.models}
        for old in (self.out / folder_name).glob("*"):
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old)

    # ------------------------------------------------------------------ ToxiGen
    def toxigen_scores(self, progress: bool = True):
        """Safety score per group for every model (groups whose fingerprint matches are
        reused); writes `toxigen/scores.json`; returns the table (groups x models)."""
        tc = self.cfg.toxicity
        with self.timed() as t:
            statements = toxigen.sample_statements(self.groups, tc.per_group, self.cfg.run.seed,
                                                   self.cfg.run.data_dir)
            scores, stats, rescored = {}, ReadStats(), 0
            for name in tc.models:
                folder = self.out / "toxigen" / model_slug(name)
                fps = {g: self.group_fingerprint(name, g).key for g in self.groups}
                recs, scored = perplexity.score_statements(
                    statements, folder, self._load(name), fps, batch_size=tc.batch_size,
                    progress=progress, stats=stats, name=name)
                for old in folder.glob("*.jsonl"):  # groups no longer scored
                    if old.stem not in fps:
                        old.unlink()
                scores[name] = group_scores(recs, tc.alpha)
                rescored += len(scored)
            self._prune_other_models("toxigen")
            atomic_write_json(self.out / "toxigen" / "scores.json", {
                m: {g: s.to_dict() for g, s in by.items()} for m, by in scores.items()})
        total = len(tc.models) * len(self.groups)
        metrics, counts = {}, {"toxigen_groups_scored": rescored,
                               "toxigen_groups_reused": total - rescored,
                               "toxigen_cache_corrupt_lines": stats.n_corrupt}
        for m, by in scores.items():
            slug = model_slug(m)
            metrics[f"{slug}/toxigen_mean"] = mean_score(by)
            metrics.update({f"{slug}/toxigen/{g}": s.score for g, s in by.items()})
            counts.update({f"{slug}/toxigen/{g}/n": s.n_toxic + s.n_benign for g, s in by.items()})
        self.record("toxigen", counts=counts, metrics=metrics, seconds=t["seconds"])
        if stats.n_corrupt:
            print(f"toxigen cache: {stats.summary()} (rescored)")
        return report.toxigen_table(scores)

    def scores(self) -> dict[str, dict[str, GroupScore]]:
        """What `toxigen_scores` wrote: model -> group -> score."""
        raw = read_json(self.out / "toxigen" / "scores.json")
        return {m: {g: GroupScore(**s) for g, s in by.items()} for m, by in raw.items()}

    def toxigen_plot(self):
        """Per-group bars, models side by side (`toxigen.png`)."""
        fig = report.toxigen_plot(self.scores())
        self.save_figure(fig, FIGURE)
        self.record("toxigen_plot", counts={"figures": 1})
        return fig

    # ------------------------------------------------------------------ probes
    def prompts(self) -> list[dict]:
        return probes.select_prompts(probes.load_prompts(), self.cfg.toxicity.probe_limit)

    def complete_probes(self, progress: bool = True):
        """Each model's completion of each selected prompt (resumes; completions of another
        fingerprint, e.g. before retraining or another sampling, are removed and redone);
        returns a few as a table."""
        from phi_lib.backends import get_backend

        tc = self.cfg.toxicity
        selected = self.prompts()
        with self.timed() as t:
            stale, fresh = 0, 0
            for name in tc.models:
                folder = self.out / "completions" / model_slug(name)
                key = self.completions_fingerprint(name).key
                stale += prune_keyed(folder, "completions", lambda r: r.get("fingerprint") == key)
                before = len(read_keyed(folder, "id")) if folder.is_dir() else 0
                bc = BackendConfig(kind="transformers", model=name, batch_size=tc.batch_size,
                                   device=tc.device, dtype=tc.dtype, cache=False)
                with get_backend(bc, run_dir=self.cfg.run_dir, data_dir=self.cfg.run.data_dir) as b:
                    probes.complete(b, name, selected, tc.sampling, folder,
                                    run_seed=self.cfg.run.seed, batch_size=tc.batch_size,
                                    progress=progress, fingerprint=key)
                fresh += len(read_keyed(folder, "id")) - before
            self._prune_other_models("completions")
        completions = self.completions()
        self.record("completions", counts={"probe_prompts": len(selected),
                                           "probe_completions": len(completions),
                                           "completions_new": fresh,
                                           "completions_stale_removed": stale},
                    seconds=t["seconds"])
        return completions_table(completions)

    def completions(self) -> list[dict]:
        """The current completions of the selected prompts, model by model, prompt order."""
        ids = [p["id"] for p in self.prompts()]
        out = []
        for name in self.cfg.toxicity.models:
            key = self.completions_fingerprint(name).key
            recs = read_keyed(self.out / "completions" / model_slug(name), "id", ids)
            out += [r for r in recs if r.get("fingerprint") == key]
        return out

    def judge_probes(self, progress: bool = True):
        """The LLM judge's grade of every completion (resumes; grades of another judge, rubric
        or completion are removed and redone); returns a few replies as a table."""
        from phi_lib.backends import get_backend

        tc = self.cfg.toxicity
        completions = self.completions()
        fps = {judge.item_key(c): self.grade_fingerprint(c).key for c in completions}
        folder = self.out / "grades_judge"
        with self.timed() as t:
            stale = prune_keyed(folder, "grades",
                                lambda g: fps.get(g.get("item")) == g.get("fingerprint"))
            before = len(read_keyed(folder, "item")) if folder.is_dir() else 0
            # the request cache is keyed by model name and request: one folder per judge identity
            cache = self.out / ".cache" / f"judge-{digest([self.judge_identity, self.judge_dtype])}"
            with get_backend(tc.judge, cache_dir=cache, run_dir=self.cfg.run_dir,
                             data_dir=self.cfg.run.data_dir) as backend:
                grades = judge.judge(backend, completions, tc.judge_sampling, folder,
                                     batch_size=tc.judge.batch_size, progress=progress,
                                     fmt=tc.judge_format,
                                     fingerprint=lambda c: fps[judge.item_key(c)])
            fresh = len(read_keyed(folder, "item")) - before
        statuses: dict[str, int] = {}
        for g in grades:
            statuses[f"judge_{g['status']}"] = statuses.get(f"judge_{g['status']}", 0) + 1
        self.record("judge", counts={**statuses, "judge_graded_new": fresh,
                                     "judge_stale_removed": stale}, seconds=t["seconds"])
        return judge_table(grades)

    def grades(self) -> list[dict]:
        """The judge's current grades of the current completions, in their order."""
        completions = self.completions()
        keys = [judge.item_key(c) for c in completions]
        fps = {judge.item_key(c): self.grade_fingerprint(c).key for c in completions}
        return [g for g in read_keyed(self.out / "grades_judge", "item", keys)
                if g.get("fingerprint") == fps[g["item"]]]

    # ------------------------------------------------------------------ grading and counts
    def grade_book(self) -> grader.GradeBook:
        """The hand grader's state over the current completions (`grades_human.jsonl`;
        grades of older completions stay in the file, counted as stale)."""
        book = self._book()
        self.record("grade_book", counts={"human_graded": book.n_graded,
                                          "human_stale": book.stale,
                                          "human_corrupt_lines": book.stats.n_corrupt})
        return book

    def _book(self) -> grader.GradeBook:
        return grader.GradeBook(self.out / grader.HUMAN_FILE, self.completions())

    def counts(self):
        """Grades per model, grader and category (judge, and the human once there are any)."""
        counts = probe_counts(self.completions(), self.grades(), self._book())
        metrics = {f"{model_slug(m)}/{who}/{k}": n for who, by_model in counts.items()
                   for m, cats in by_model.items() for k, n in cats["total"].items()}
        self.record("counts", metrics=metrics)
        return report.counts_table(counts)

    def agreement(self) -> dict:
        """Human vs judge on the items both graded (kappa, raw agreement, confusion)."""
        agree = agreement(self._book(), self.grades())
        self.record("agreement", counts={"agreement_items": agree["n"]},
                    metrics={"human_judge_kappa": agree["kappa"]}
                    if agree["kappa"] is not None else {})
        return agree

    # ------------------------------------------------------------------ results
    def write_results(self) -> dict:
        """`results.json`: ToxiGen scores per model and group, grade counts per grader, model and
        category, human/judge agreement, the paper's numbers beside them, and the identities
        and fingerprints of what produced them."""
        tc = self.cfg.toxicity
        scores, completions, grades = self.scores(), self.completions(), self.grades()
        book = self._book()
        judge_status: dict[str, int] = {}
        for g in grades:
            judge_status[g["status"]] = judge_status.get(g["status"], 0) + 1
        results = {
            "config_hash": self.fingerprint.key,
            "models": list(tc.models),
            "model_identities": dict(self.identities),
            "toxigen": {
                "method": "Hosseini et al. 2023 safety score: Mann-Whitney U / (n_toxic n_benign) "
                          "of toxic vs benign perplexities per group (unit toxicity weights)",
                "groups": self.groups, "per_group": tc.per_group, "alpha": tc.alpha,
                "fingerprints": {m: {g: self.group_fingerprint(m, g).key for g in self.groups}
                                 for m in tc.models},
                "scores": {m: {"mean": mean_score(s),
                               "groups": {g: v.to_dict() for g, v in s.items()}}
                           for m, s in scores.items()}},
            "probes": {
                "n_prompts": len({c["id"] for c in completions}), "n_completions": len(completions),
                "fingerprints": {m: self.completions_fingerprint(m).key for m in tc.models},
                "counts": probe_counts(completions, grades, book),
                "judge": {"model": tc.judge.model, "kind": tc.judge.kind,
                          "identity": self.judge_identity, "config": results_view(tc.judge),
                          "statuses": judge_status},
                "human": {"graded": book.n_graded, "of": len(book.items), "stale": book.stale,
                          "corrupt_lines": book.stats.n_corrupt},
                "agreement": agreement(book, grades) if book.n_graded else None,
                "paper": report.PAPER_PROBES},
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(self.out / "results.json", results)
        self.record("results", counts={"results_models": len(tc.models)})
        return results

    def write_manifest(self, **extra) -> dict:
        """Every step's numbers: `<model>/toxigen_mean`, `<model>/toxigen/<group>`, per grader
        `<model>/<grader>/<grade>`, kappa; items, new/stale records and parse failures."""
        return super().write_manifest(models=dict(self.identities), **extra)


# ----------------------------------------------------------------------------- tables
def completions_table(completions: list[dict], n: int = 6):
    """A few completions: model, category, prompt, completion, why it stopped."""
    import pandas as pd

    return pd.DataFrame([{"model": c["model"], "category": c["category"], "prompt": c["prompt"],
                          "completion": c["completion"][:200], "finish": c["finish_reason"]}
                         for c in completions[:n]])


def judge_table(grades: list[dict], n: int = 6):
    """A few judge replies with the grade parsed from them (or why there is none)."""
    import pandas as pd

    return pd.DataFrame([{"item": g["item"], "reply": g["reply"][:200], "grade": g["grade"],
                          "status": g["status"]} for g in grades[:n]])


def probe_counts(completions: list[dict], grades: list[dict],
                 book: Optional[grader.GradeBook] = None) -> dict:
    """`{grader: {model: {category: counts}}}` for the judge and, if any, the human."""
    counts = {"judge": report.grade_counts(completions, {g["item"]: g["grade"] for g in grades})}
    if book is not None and book.n_graded:
        counts["human"] = report.grade_counts(completions, _human(book))
    return counts


def _human(book: grader.GradeBook) -> dict[str, str]:
    return {k: r["grade"] for k, r in book.grades.items()}


def agreement(book: grader.GradeBook, grades: list[dict]) -> dict:
    """Human vs judge on the items both graded (kappa, raw agreement, confusion)."""
    return report.agreement(_human(book), {g["item"]: g["grade"] for g in grades})
