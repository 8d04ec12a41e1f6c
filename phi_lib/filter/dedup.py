"""Near-duplicate removal with MinHash LSH (datasketch), streaming: the first copy is kept.

Shingles are word 5-grams (FineWeb's setting); two documents whose estimated Jaccard
similarity is above the threshold are near-duplicates.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+")


class MinHashDedup:
    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 1):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        # One permutation set for all documents (MinHash() would rebuild it per call).
        self._template = MinHash(num_perm=num_perm, seed=seed)

    def signature(self, text: str) -> MinHash:
        words = _WORD.findall(text.lower())
        k = self.shingle
        grams = {" ".join(words[i:i + k]) for i in range(max(len(words) - k + 1, 1))}
        m = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=self._template.permutations,
                    scheme=self._template.scheme)
        m.update_batch([g.encode("utf-8") for g in grams])
        return m

    def duplicate_of(self, key: str, text: str) -> Optional[str]:
        """The key of an earlier near-duplicate of `text`, else None (and `text` is remembered)."""
        sig = self.signature(text)
        hits = self.lsh.query(sig)
        if hits:
            return sorted(hits)[0]
        if key not in self.lsh:
            self.lsh.insert(key, sig)
        return None


def jaccard(a: MinHash, b: MinHash) -> float:
    return float(np.mean(a.hashvalues == b.hashvalues))
