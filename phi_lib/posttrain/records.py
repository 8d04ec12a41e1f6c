"""Conversations and preference pairs in one chat format, from the formats files come in.

A conversation is `[{"role": "system"|"user"|"assistant", "content": str}, ...]` (the format
of transformers' chat templates and TRL). A pair is TRL's conversational preference record:
`{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`.

Formats (`posttrain.*_sources.*.format`):

- `messages`: `{"messages": [...]}`;
- `instruction`: Alpaca, `instruction` + `input` -> user, `output` -> assistant, or the
  Self-Instruct seed tasks' `instances: [{input, output}]` (one conversation per instance);
- `gsm8k`: `question` -> user, `answer` -> assistant (the `<<48/2=24>>` calculator
  annotations removed, the `#### 72` answer line kept);
- `hh_rlhf`: Anthropic's `"\\n\\nHuman: ...\\n\\nAssistant: ..."` dialogues: for SFT the `chosen`
  dialogue; for DPO the shared turns up to the last `Assistant:` are the prompt, the two last
  answers the chosen and the rejected;
- `prompt_response`: `prompt` + `response` (or `completion`, `output`);
- `pairs`: `prompt`, `chosen`, `rejected` (strings or message lists);
- `auto`: decided per record by its keys.

A record that cannot be used yields a reason (`missing_chosen`, `empty_assistant_turn`,
`unknown_role`, ...) and a detail; callers count and keep them, never drop them silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

ROLES = ("system", "user", "assistant")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_CALC = re.compile(r"<<[^<>]*>>")
RESPONSE_KEYS = ("response", "completion", "output")


@dataclass
class Parsed:
    """A conversation or pair, or why there is none."""

    value: Any = None
    reason: Optional[str] = None
    """None when `value` is usable; else a short reason (counted in the manifest)."""
    detail: str = ""


@dataclass
class Drops:
    """Unusable records: counts by reason, and the first few of each with file and line."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    max_examples: int = 5

    def add(self, reason: str, detail: str = "", where: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.counts[reason] <= self.max_examples:
            self.examples.append({"reason": reason, "detail": detail[:300], "where": where})

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ----------------------------------------------------------------------------- checks
def check_messages(messages: Any, *, need_answer: bool = True) -> Optional[tuple[str, str]]:
    """(reason, detail) if `messages` is not a usable conversation, else None. With
    `need_answer` (SFT) it must end on a non-empty assistant turn."""
    if not isinstance(messages, list) or not messages:
        return "no_messages", f"expected a non-empty list of messages, got {type(messages).__name__}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return "malformed_message", f"message {i} is not {{role, content: str}}: {m!r:.80}"
        if m.get("role") not in ROLES:
            return "unknown_role", f"message {i} has role {m.get('role')!r} (known: {', '.join(ROLES)})"
        if m["role"] == "system" and i > 0:
            return "misplaced_system", f"message {i} is a system turn after the first"
        if not m["content"].strip():
            return f"empty_{m['role']}_turn", f"message {i} ({m['role']}) is empty"
    if need_answer:
        if not any(m["role"] == "assistant" for m in messages):
            return "no_assistant_turn", "the conversation has no assistant turn to learn"
        if messages[-1]["role"] != "assistant":
            return "ends_without_answer", f"the last turn is {messages[-1]['role']!r}, not an answer"
    return None


def _msgs(value: Any, role: str) -> Any:
    """A string as a one-message list of `role`; lists unchanged."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


# ----------------------------------------------------------------------------- HH-RLHF
def parse_hh(text: Any) -> Parsed:
    """Anthropic's dialogue string as messages (Human -> user, Assistant -> assistant)."""
    if not isinstance(text, str):
        return Parsed(reason="malformed_dialogue", detail=f"expected a string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    head, rest = parts[0], parts[1:]
    if head.strip() or not rest:
        return Parsed(reason="unknown_role", detail=f"text not in a Human/Assistant turn: {head[:80]!r}"
                      if head.strip() else "no Human:/Assistant: turn")
    messages = [{"role": _HH_ROLE[rest[i]], "content": rest[i + 1].strip()}
                for i in range(0, len(rest), 2)]
    return Parsed(messages)


def hh_pair(rec: dict) -> Parsed:
    """An HH-RLHF record as a pair: the shared turns before the last answer, and the two answers."""
    for key in ("chosen", "rejected"):
        if key not in rec:
            return Parsed(reason=f"missing_{key}", detail=f"keys: {', '.join(map(str, rec))}")
    chosen, rejected = parse_hh(rec["chosen"]), parse_hh(rec["rejected"])
    for p in (chosen, rejected):
        if p.reason:
            return p
    return _split_pair(chosen.value, rejected.value)


def _split_pair(chosen: list[dict], rejected: list[dict]) -> Parsed:
    for side in (chosen, rejected):
        bad = check_messages(side)
        if bad:
            return Parsed(reason=bad[0], detail=bad[1])
    prompt = chosen[:-1]
    if rejected[:-1] != prompt:
        return Parsed(reason="prompt_mismatch",
                      detail="chosen and rejected differ before their last answer")
    if not prompt or prompt[-1]["role"] != "user":
        return Parsed(reason="no_prompt", detail="the answers do not follow a user turn")
    if chosen[-1]["content"].strip() == rejected[-1]["content"].strip():
        return Parsed(reason="identical_answers", detail=chosen[-1]["content"][:80])
    return Parsed({"prompt": prompt, "chosen": [chosen[-1]], "rejected": [rejected[-1]]})


# ----------------------------------------------------------------------------- formats
def detect_format(rec: dict, want: str) -> Optional[str]:
    """The format of a record by its keys (`want`: `sft` or `pairs`)."""
    if "chosen" in rec or "rejected" in rec:
        return "pairs" if "prompt" in rec else "hh_rlhf"
    if want == "pairs":
        return None
    if "messages" in rec:
        return "messages"
    if "instruction" in rec:
        return "instruction"
    if "question" in rec and "answer" in rec:
        return "gsm8k"
    if "prompt" in rec and any(k in rec for k in RESPONSE_KEYS):
        return "prompt_response"
    return None


def conversations(rec: dict, fmt: str) -> list[Parsed]:
    """The SFT conversations of one record (usually one; one per Self-Instruct instance)."""
    fmt = detect_format(rec, "sft") if fmt == "auto" else fmt
    if fmt == "messages":
        out = [Parsed(rec.get("messages"))]
    elif fmt == "instruction":
        out = _instruction(rec)
    elif fmt == "gsm8k":
        q, a = rec.get("question"), rec.get("answer")
        out = [Parsed([{"role": "user", "content": q},
                       {"role": "assistant", "content": _CALC.sub("", a) if isinstance(a, str) else a}])]
    elif fmt == "hh_rlhf":
        out = [parse_hh(rec["chosen"]) if "chosen" in rec else
               Parsed(reason="missing_chosen", detail=f"keys: {', '.join(map(str, rec))}")]
    elif fmt == "prompt_response":
        resp = next((rec[k] for k in RESPONSE_KEYS if k in rec), None)
        out = [Parsed([{"role": "user", "content": rec.get("prompt")},
                       {"role": "assistant", "content": resp}])]
    elif fmt == "pairs":
        p = pair(rec, "pairs")
        out = [p if p.reason else Parsed(p.value["prompt"] + p.value["chosen"])]
    else:
        return [Parsed(reason="unknown_format", detail=f"keys: {', '.join(map(str, rec))}")]
    return [_checked(p) for p in out]


def _instruction(rec: dict) -> list[Parsed]:
    instr = rec.get("instruction")
    if not isinstance(instr, str):
        return [Parsed(reason="malformed_message", detail="no string `instruction`")]
    instances = rec.get("instances")
    if instances is None:
        instances = [{"input": rec.get("input", ""), "output": rec.get("output")}]
    if not isinstance(instances, list) or not instances:
        return [Parsed(reason="malformed_message", detail="`instances` is not a non-empty list")]
    out = []
    for inst in instances:
        inp = (inst or {}).get("input") or ""
        user = instr.strip() + (f"\n\n{inp.strip()}" if isinstance(inp, str) and inp.strip() else "")
        out.append(Parsed([{"role": "user", "content": user},
                           {"role": "assistant", "content": (inst or {}).get("output")}]))
    return out


def _checked(p: Parsed) -> Parsed:
    if p.reason:
        return p
    bad = check_messages(p.value)
    return Parsed(reason=bad[0], detail=bad[1]) if bad else p


def pair(rec: dict, fmt: str) -> Parsed:
    """The preference pair of one record."""
    fmt = detect_format(rec, "pairs") if fmt == "auto" else fmt
    if fmt == "hh_rlhf":
        return hh_pair(rec)
    if fmt != "pairs":
        return Parsed(reason="unknown_format", detail=f"not a pair format ({fmt}); keys: "
                      f"{', '.join(map(str, rec))}")
    for key in ("prompt", "chosen", "rejected"):
        if key not in rec:
            return Parsed(reason=f"missing_{key}", detail=f"keys: {', '.join(map(str, rec))}")
    prompt = _msgs(rec["prompt"], "user")
    bad = check_messages(prompt, need_answer=False)
    if bad:
        return Parsed(reason=bad[0], detail=bad[1])
    chosen, rejected = _msgs(rec["chosen"], "assistant"), _msgs(rec["rejected"], "assistant")
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return Parsed(reason="malformed_message", detail="chosen/rejected must be strings or lists")
    return _split_pair(prompt + chosen[-1:], prompt + rejected[-1:])
