"""Reservoir sampling: n items drawn uniformly from a stream in one pass (Algorithm R)."""
from __future__ import annotations

import random
from typing import Iterable, TypeVar

T = TypeVar("T")


def reservoir(items: Iterable[T], n: int, rng: random.Random) -> list[T]:
    """`n` items of `items` (all of them if fewer), each kept with equal probability."""
    chosen: list[T] = []
    for seen, item in enumerate(items):
        if len(chosen) < n:
            chosen.append(item)
        else:
            j = rng.randint(0, seen)
            if j < n:
                chosen[j] = item
    return chosen
