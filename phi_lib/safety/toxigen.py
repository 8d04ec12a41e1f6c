"""ToxiGen statements per demographic group, from the prompt files of the data folder.

`benchmarks/toxigen/prompts/{hate,neutral}_<group>_1k.txt` (microsoft/TOXIGEN): each line is
one generation prompt, a list of example sentences joined by a literal backslash-n and a dash
(`- s1\\n- s2\\n-`). The lines are permutations of a small seed set per group, so the
statements are the deduplicated sentences. The human-annotated ToxiGen set Hosseini et al.
scored (6541 sentences in phi-1.5) is distributed separately and is not in the data folder, so
the file is the label: `hate_` statements are toxic, `neutral_` ones benign.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

from phi_lib.config import TOXIGEN_GROUPS
from phi_lib.paths import MissingDataError, resolve

PROMPTS_DIR = "benchmarks/toxigen/prompts"
LABELS = {"toxic": "hate", "benign": "neutral"}
"""Our label -> the ToxiGen file prefix."""


def group_file(group: str, label: str, data_dir: Optional[str] = None) -> Path:
    """The prompt file of a group and label (`toxic` or `benign`); a clear error if missing."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {sorted(LABELS)}, got {label!r}")
    folder = resolve(PROMPTS_DIR, configured=data_dir)
    path = Path(folder) / f"{LABELS[label]}_{group}_1k.txt"
    if not path.is_file():
        known = sorted({p.name.split("_", 1)[1].rsplit("_1k", 1)[0]
                        for p in Path(folder).glob(f"{LABELS[label]}_*_1k.txt")})
        raise MissingDataError(f"toxicity.groups: no {label} ({LABELS[label]}_) file for group "
                               f"{group!r}: {path} does not exist (groups with one: "
                               f"{', '.join(known)})")
    return path


def split_sentences(line: str) -> list[str]:
    """The sentences of one prompt line: split at literal `\\n`, drop the list dashes."""
    out = []
    for part in line.rstrip("\n").split("\\n"):
        s = part.strip()
        if s.startswith("-"):
            s = s[1:].strip()
        if s:
            out.append(s)
    return out


def read_statements(path: Path) -> list[str]:
    """The distinct sentences of a prompt file, in order of first appearance."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            for s in split_sentences(line):
                seen.setdefault(s, None)
    return list(seen)


def sample_statements(groups: Sequence[str] = TOXIGEN_GROUPS, per_group: Optional[int] = None,
                      seed: int = 0, data_dir: Optional[str] = None) -> list[dict]:
    """Up to `per_group` statements per group and label, a seeded sample (all if None or
    fewer exist); records `{"id", "group", "label", "text"}`, in group order."""
    records = []
    for group in groups:
        for label in LABELS:
            pool = read_statements(group_file(group, label, data_dir))
            if per_group is not None and per_group < len(pool):
                rng = random.Random(f"{seed}-toxigen-{group}-{label}")
                pool = [pool[i] for i in sorted(rng.sample(range(len(pool)), per_group))]
            records += [{"id": f"{group}/{label}/{i}", "group": group, "label": label, "text": t}
                        for i, t in enumerate(pool)]
    return records
