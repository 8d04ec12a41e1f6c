"""Attention kernels and masks (flash-attn 2, PyTorch SDPA, an fp32 reference), and the
attention step every block shares (rotary, KV cache, kernel).

All take q (B, H, Tq, D), k/v (B, Hkv, Tk, D) and return (B, H, Tq, D). A mask is boolean
(B, 1, Tq, Tk), True = may attend; `None` means plain causal (bottom-right aligned when
Tq < Tk, as in cached decoding).

fp16 safety: phi-2 overflows fp16 when q.k is computed in half precision (scores past 65504).
Flash-attn and the CUDA SDPA kernels accumulate q.k and the softmax in fp32; the eager path
and the CPU SDPA path upcast to fp32 themselves.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

from phi_lib.model.rotary import apply_rotary


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_implementation(requested: str, q: torch.Tensor) -> str:
    """The kernel for this call: `auto` takes flash-attn 2 on CUDA in fp16/bf16 when installed."""
    if requested == "auto":
        ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()
        return "flash_attention_2" if ok else "sdpa"
    if requested == "flash_attention_2":
        if not flash_attn_available():
            raise ImportError("attn_implementation='flash_attention_2' needs the flash-attn package "
                              "(pip install flash-attn --no-build-isolation)")
        if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError("flash_attention_2 runs on CUDA in fp16/bf16 only; "
                             f"got {q.device.type} {q.dtype} (use 'auto' or 'sdpa')")
    return requested


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], *,
           impl: str, dropout_p: float = 0.0, sliding_window: Optional[int] = None,
           cu_seqlens: Optional[torch.Tensor] = None, max_seqlen: int = 0,
           scale: Optional[float] = None) -> torch.Tensor:
    """Scaled dot-product attention with the kernel `impl` (after `pick_implementation`).

    `cu_seqlens` (flash-attn only): packed documents of one row each (varlen), instead of a mask.
    `scale`: of the scores; default 1/sqrt(head dim) (phi-3-small's muP uses 1/head dim).
    """
    if impl == "flash_attention_2" and (mask is None or cu_seqlens is not None):
        return _flash(q, k, v, dropout_p, sliding_window, cu_seqlens, max_seqlen, scale)
    if mask is None and sliding_window is not None and k.shape[2] > sliding_window:
        mask = causal_mask(q.shape[2], k.shape[2], q.device, sliding_window=sliding_window)
    if impl == "eager":
        return _eager(q, k, v, mask, dropout_p, scale)
    return _sdpa(q, k, v, mask, dropout_p, scale)


def _sdpa(q, k, v, mask, dropout_p, scale=None):
    dtype = q.dtype
    if q.device.type == "cpu" and dtype == torch.float16:  # CPU math kernel: q.k in fp16 overflows
        q, k, v = q.float(), k.float(), v.float()
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    if mask is None and q.shape[2] != k.shape[2]:
        if q.shape[2] == 1:  # one new token sees the whole cache: no mask at all
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale).to(dtype)
        mask = causal_mask(q.shape[2], k.shape[2], q.device)  # SDPA's is_causal is top-left aligned
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                         is_causal=mask is None, scale=scale)
    return out.to(dtype)


def _eager(q, k, v, mask, dropout_p, scale=None):
    """Reference path, all in fp32: readable, and safe for phi-2 in fp16."""
    dtype = q.dtype
    k, v = _repeat_kv(k, q.shape[1]), _repeat_kv(v, q.shape[1])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is None:
        mask = causal_mask(q.shape[2], k.shape[2], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return (probs @ v.float()).to(dtype)


def _flash(q, k, v, dropout_p, sliding_window, cu_seqlens, max_seqlen, scale=None):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
    # flash-attn wants (B, T, H, D); its causal mask is bottom-right aligned (cached decoding)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if cu_seqlens is None:
        out = flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale, causal=True,
                              window_size=window)
    else:
        b, t = q.shape[:2]
        flat = [x.reshape(b * t, *x.shape[2:]) for x in (q, k, v)]
        out = flash_attn_varlen_func(*flat, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                     dropout_p=dropout_p, softmax_scale=scale, causal=True,
                                     window_size=window)
        out = out.view(b, t, *out.shape[1:])
    return out.transpose(1, 2)


def _repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Grouped-query attention: repeat each key/value head for its group of query heads."""
    b, h_kv, t, d = x.shape
    if h_kv == n_heads:
        return x
    return x[:, :, None].expand(b, h_kv, n_heads // h_kv, t, d).reshape(b, n_heads, t, d)


# ----------------------------------------------------------------------------- masks
def causal_mask(tq: int, tk: int, device, sliding_window: Optional[int] = None) -> torch.Tensor:
    """(1, 1, Tq, Tk) bool: query i (at absolute position Tk - Tq + i) sees keys <= itself."""
    q_pos = torch.arange(tk - tq, tk, device=device)[:, None]
    k_pos = torch.arange(tk, device=device)[None, :]
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask[None, None]


def build_mask(tq: int, tk: int, device, *, key_padding: Optional[torch.Tensor] = None,
               document_ids: Optional[torch.Tensor] = None,
               sliding_window: Optional[int] = None) -> Optional[torch.Tensor]:
    """The (B, 1, Tq, Tk) mask for padding and/or packed documents; None when plain causal works.

    `key_padding` (B, Tk): 1 = real token, 0 = padding (the transformers `attention_mask`).
    `document_ids` (B, Tk): tokens attend only within their own document.
    """
    if key_padding is None and document_ids is None:
        return None
    mask = causal_mask(tq, tk, device, sliding_window)
    if key_padding is not None:
        mask = mask & key_padding.bool()[:, None, None, :]
    if document_ids is not None:
        mask = mask & (document_ids[:, None, -tq:, None] == document_ids[:, None, None, :])
    # A padded query sees no key at all; let it see itself so softmax stays finite (its
    # output is never used).
    return mask | _diagonal(tq, tk, device)


def _diagonal(tq: int, tk: int, device) -> torch.Tensor:
    q_pos = torch.arange(tk - tq, tk, device=device)[:, None]
    return (torch.arange(tk, device=device)[None, :] == q_pos)[None, None]


def document_ids_from_eos(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document index of each token of packed rows: a new document starts after each EOS."""
    starts = torch.zeros_like(input_ids)
    starts[:, 1:] = (input_ids[:, :-1] == eos_id).long()
    return starts.cumsum(dim=1)


def positions_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own document (restarts at 0 per document)."""
    b, t = document_ids.shape
    idx = torch.arange(t, device=document_ids.device).expand(b, t)
    new_doc = torch.ones_like(document_ids, dtype=torch.bool)
    new_doc[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start = torch.where(new_doc, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start


def cu_seqlens_from_document_ids(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document lengths over the flattened batch (flash-attn varlen) and the longest."""
    b, t = document_ids.shape
    new_doc = torch.ones_like(document_ids, dtype=torch.bool)
    new_doc[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    starts = new_doc.flatten().nonzero().flatten()
    cu = torch.cat([starts, torch.tensor([b * t], device=starts.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


# ----------------------------------------------------------------------------- one layer's attention
class AttentionContext:
    """What every layer's attention needs for one forward call (built once by the model)."""

    def __init__(self, impl: str, mask, cache, dropout_p: float, cu_seqlens=None, max_seqlen: int = 0):
        self.impl, self.mask, self.cache, self.dropout_p = impl, mask, cache, dropout_p
        self.cu_seqlens, self.max_seqlen = cu_seqlens, max_seqlen


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope, ctx: AttentionContext,
                   layer_idx: int, sliding_window: Optional[int]) -> torch.Tensor:
    """Rotary on q (B, H, T, D) and k/v (B, Hkv, T, D), the KV cache, the kernel; (B, T, H*D)."""
    cos, sin = rope
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    if ctx.cache is not None:
        k, v = ctx.cache.update(layer_idx, k, v)
    out = attend(q, k, v, ctx.mask, impl=ctx.impl, dropout_p=ctx.dropout_p,
                 sliding_window=sliding_window, cu_seqlens=ctx.cu_seqlens, max_seqlen=ctx.max_seqlen)
    b, _, t, _ = out.shape
    return out.transpose(1, 2).reshape(b, t, -1)

