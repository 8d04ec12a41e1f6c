"""Prompts of the multiple-choice tasks: lm-evaluation-harness's task YAMLs, in Python.

Each function turns one item (hub schema, see `data.py`) into a :class:`MCItem`: the
context(s), the continuations scored, the choice strings (whose character lengths
normalise `acc_norm`) and the gold index. The templates are lm-eval's (`lm_eval/tasks/...`);
`tests/test_eval_lm_eval_parity.py` checks them against lm-eval itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass
class MCItem:
    contexts: list[str]
    """One context per continuation (same string for all, except WinoGrande)."""
    continuations: list[str]
    choices: list[str]
    """The choice strings (their lengths in characters normalise acc_norm)."""
    gold: int


def _single(ctx: str, choices: list[str], gold: int) -> MCItem:
    return MCItem([ctx] * len(choices), [TARGET_DELIMITER + c for c in choices], choices, gold)


def arc(doc: dict) -> MCItem:
    return _single(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]),
                   list(doc["choices"]["label"]).index(doc["answerKey"]))


def boolq(doc: dict) -> MCItem:
    return _single(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"],
                   int(doc["label"]))


def siqa(doc: dict) -> MCItem:
    return _single(f"Q: {doc['context']} {doc['question']}\nA:",
                   [doc["answerA"], doc["answerB"], doc["answerC"]], int(doc["label"]) - 1)


def piqa(doc: dict) -> MCItem:
    return _single(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]],
                   int(doc["label"]))


def openbookqa(doc: dict) -> MCItem:
    return _single(doc["question_stem"], list(doc["choices"]["text"]),
                   list(doc["choices"]["label"]).index(doc["answerKey"].lstrip()))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag `preprocess` (WikiHow bracket artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: dict) -> MCItem:
    return _single(doc["query"], list(doc["choices"]), int(doc["gold"]))


def winogrande(doc: dict) -> MCItem:
    """Partial scoring: each option fills the blank in its own context; the rest of the
    sentence is the one continuation scored."""
    cont = TARGET_DELIMITER + doc["continuation"]
    return MCItem(list(doc["contexts"]), [cont] * len(doc["contexts"]), list(doc["contexts"]),
                  int(doc["gold"]))


def mmlu_question(doc: dict) -> str:
    c = doc["choices"]
    return (f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:")


def mmlu_description(subject: str) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{subject.replace('_', ' ')}.{FEWSHOT_DELIMITER}")


def mmlu_prefix(subject: str, shots: Optional[list[dict]] = None) -> str:
    """What every question of a subject starts with: the description and the answered shots."""
    return mmlu_description(subject) + "".join(
        mmlu_question(s) + TARGET_DELIMITER + "ABCD"[s["answer"]] + FEWSHOT_DELIMITER
        for s in shots or [])


def mmlu(doc: dict, shots: Optional[list[dict]] = None) -> MCItem:
    """Description, then the first k dev items of the subject answered, then the question."""
    ctx = mmlu_prefix(doc["subject"], shots) + mmlu_question(doc)
    return _single(ctx, ["A", "B", "C", "D"], int(doc["answer"]))


def mmlu_cloze(doc: dict) -> MCItem:
    """0-shot cloze form (lm-eval's `mmlu_<subject>_continuation`): the answer text itself is
    the continuation, no letters, so a small base model is not at chance on the format."""
    ctx = (f"The following are questions (with answers) about {doc['subject'].replace('_', ' ')}."
           f"{FEWSHOT_DELIMITER}Question: {doc['question'].strip()}\nAnswer:")
    return _single(ctx, list(doc["choices"]), int(doc["answer"]))


def commonsense_qa(doc: dict) -> MCItem:
    """lm-eval's `commonsense_qa`: the five options lettered in the prompt, a letter scored."""
    t = doc["choices"]["text"]
    ctx = (f"Question: {doc['question'].strip()}\n"
           + "".join(f"{k}. {c}\n" for k, c in zip("ABCDE", t)) + "Answer:")
    return _single(ctx, list("ABCDE"), "ABCDE".index(doc["answerKey"]))


def commonsense_qa_cloze(doc: dict) -> MCItem:
    """Cloze form (as FineWeb's/lighteval's CSQA): the option text is the continuation."""
    return _single(f"Question: {doc['question'].strip()}\nAnswer:", list(doc["choices"]["text"]),
                   list(doc["choices"]["label"]).index(doc["answerKey"]))


MC_PROMPTS: dict[str, Callable[[dict], MCItem]] = {
    "arc_easy": arc, "arc_challenge": arc, "boolq": boolq, "siqa": siqa, "piqa": piqa,
    "openbookqa": openbookqa, "hellaswag": hellaswag, "winogrande": winogrande, "mmlu": mmlu,
    "mmlu_cloze": mmlu_cloze, "commonsense_qa": commonsense_qa,
    "commonsense_qa_cloze": commonsense_qa_cloze}

MC_METRICS: dict[str, tuple[str, ...]] = {
    "arc_easy": ("acc", "acc_norm"), "arc_challenge": ("acc", "acc_norm"),
    "piqa": ("acc", "acc_norm"), "openbookqa": ("acc", "acc_norm"),
    "hellaswag": ("acc", "acc_norm"), "boolq": ("acc",), "siqa": ("acc",),
    "winogrande": ("acc",), "mmlu": ("acc",), "mmlu_cloze": ("acc", "acc_norm"),
    "commonsense_qa": ("acc",), "commonsense_qa_cloze": ("acc", "acc_norm")}
"""The metrics lm-eval's YAML of each task lists."""
