"""lm-eval task YAMLs over the data folder's benchmark files.

`write_lm_eval_tasks(folder, tasks, limit)` writes our loaders' documents (hub schema) as
JSONL plus one YAML per task that includes lm-eval's *shipped* task config (or copies its
template), so `lm_eval --include_path folder --tasks local_arc_easy ...` runs lm-eval
itself on exactly the items our harness scores: the reference for our parity test and
benchmark, and a way to run lm-eval offline on the workbook's data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from phi_lib.evaluate.data import load_mmlu, load_task
from phi_lib.io import ReadStats

SHIPPED = {"arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
           "piqa": "piqa/piqa.yaml", "boolq": "super_glue/boolq/default.yaml",
           "siqa": "siqa/siqa.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
           "hellaswag": "hellaswag/hellaswag.yaml", "commonsense_qa": "commonsense_qa/default.yaml"}


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _local(f: str, dev: Optional[str] = None) -> dict:
    files = {"test": f, **({"dev": dev} if dev else {})}
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files},
            "test_split": "test", "training_split": None, "validation_split": None}


def _write(path: Path, docs: list[dict]) -> str:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def write_lm_eval_tasks(folder: Union[str, Path], tasks: Sequence[str], limit: Optional[int] = None,
                        *, mmlu_subjects: Optional[Sequence[str]] = None, mmlu_shots: int = 2,
                        prefix: str = "local_", data_dir: Optional[str] = None) -> dict[str, str]:
    """Write data + YAMLs into `folder`; returns lm-eval task name -> our task name.
    MMLU becomes one task per subject (`<prefix>mmlu_<subject>`), `mmlu_shots`-shot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shipped = lm_eval_tasks_dir()
    names = {}
    for task in tasks:
        name = f"{prefix}{task}"
        if task in SHIPPED:
            cfg = {"include": str(shipped / SHIPPED[task]), "task": name, "tag": [],
                   **_local(_write(folder / f"{task}.jsonl", load_task(task, limit, None, data_dir)))}
            if task == "hellaswag":  # our docs are already lm-eval's process_docs output
                cfg.update({"process_docs": None, "doc_to_target": "{{gold}}"})
            _dump(folder / f"{name}.yaml", cfg)
            names[name] = task
        elif task == "winogrande":  # partial scoring: lm-eval's doc_to_* values, precomputed
            f = _write(folder / "winogrande.jsonl", load_task(task, limit, None, data_dir))
            _dump(folder / f"{name}.yaml", {
                "task": name, "output_type": "multiple_choice", "doc_to_text": "gold",
                "doc_to_choice": "contexts", "doc_to_target": "continuation",
                "metric_list": [{"metric": "acc"}], **_local(f)})
            names[name] = task
        elif task in ("mmlu", "mmlu_cloze"):  # the cloze form is lm-eval's `continuation` one
            cloze = task == "mmlu_cloze"
            template = yaml.safe_load((shipped / ("mmlu/continuation/_continuation_template_yaml"
                                                  if cloze else
                                                  "mmlu/default/_default_template_yaml")).read_text())
            for subject in mmlu_subjects or sorted({d["subject"] for d in load_mmlu(1, ReadStats())}):
                test = _write(folder / f"mmlu_{subject}_test.jsonl",
                              load_mmlu(limit, ReadStats(), data_dir, subjects=(subject,)))
                dev = _write(folder / f"mmlu_{subject}_dev.jsonl",
                             load_mmlu(5, ReadStats(), data_dir, split="dev", subjects=(subject,)))
                sub = f"{name}_{subject}"
                kind = "" if cloze else "multiple choice "
                _dump(folder / f"{sub}.yaml", {
                    **template, **_local(test, dev), "task": sub, "fewshot_split": "dev",
                    "num_fewshot": 0 if cloze else mmlu_shots,
                    "description": f"The following are {kind}questions (with answers) "
                                   f"about {subject.replace('_', ' ')}.\n\n"})
                names[sub] = task
        else:
            raise ValueError(f"no lm-eval YAML mapping for task {task!r} (multiple-choice only)")
    return names


def _dump(path: Path, cfg: dict) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
