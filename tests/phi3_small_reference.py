"""Microsoft's Phi-3-small remote code (data folder, `references/phi-3-small/`) as a CPU oracle.

Tests only: phi_lib never imports it. The reference needs Triton (its block-sparse kernels) and
flash-attn (its dense layers), which do not run on CPU. For the import, stand-in `triton` and
`flash_attn` modules sit in sys.modules (removed again right after, so nothing else sees them);
then the three kernels the model calls are replaced by plain PyTorch computing what each
kernel computes:

- `flash_attn_varlen_kvpacked_func`: softmax attention per packed sequence, causal aligned
  bottom-right (flash-attn >= 2.1), as the dense layers use it;
- `blocksparse_flash_attn_padded_fwd` (batched inference with left padding): per row, keys
  from the row's first real token, each query block sees the key blocks of the reference's own
  CSR layout row (decoded with its `crow_col_to_dense`), causal inside the diagonal block;
- `get_local_strided_sparse_attention_op` (no mask): the same over the whole sequence, from the
  block pattern of the reference's `_get_sparse_attn_mask`.

Everything else — layout construction, the per-group query_key_value split, left-padding
bookkeeping, rotary, GEGELU, muP scales, the dummy-token mask — runs as Microsoft wrote it.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from phi_lib.paths import data_path

PACKAGE = "ms_phi3_small"  # not this module's own name: the package replaces no module in sys.modules


def reference_dir() -> Path | None:
    return data_path("references/phi-3-small")


# ----------------------------------------------------------------------------- import stand-ins
def _fake_triton() -> dict[str, types.ModuleType]:
    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    language.constexpr = object  # only annotations of the (never run) kernels use it
    triton.language = language
    triton.cdiv = lambda a, b: (a + b - 1) // b
    triton.next_power_of_2 = lambda n: 1 << (int(n) - 1).bit_length()
    triton.jit = lambda fn=None, **_: fn if fn is not None else (lambda f: f)
    triton.heuristics = lambda _: (lambda f: f)
    return {"triton": triton, "triton.language": language}


def _fake_flash_attn() -> dict[str, types.ModuleType]:
    root = types.ModuleType("flash_attn")
    root.__version__ = "2.6.3"
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    interface.flash_attn_varlen_kvpacked_func = flash_attn_varlen_kvpacked_func
    padding = types.ModuleType("flash_attn.bert_padding")
    padding.index_first_axis = lambda x, indices: x[indices]
    padding.pad_input = pad_input
    padding.unpad_input = unpad_input
    root.flash_attn_interface, root.bert_padding = interface, padding
    return {"flash_attn": root, "flash_attn.flash_attn_interface": interface,
            "flash_attn.bert_padding": padding}


# ----------------------------------------------------------------------------- kernels in PyTorch
def _softmax_attention(q, k, v, allowed, scale):
    """q (H, Tq, D), k/v (H, Tk, D), allowed (H or 1, Tq, Tk) -> (H, Tq, D), fp32 math."""
    scores = torch.einsum("hqd,hkd->hqk", q.float(), k.float()) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=0.0, softmax_scale=None, causal=False,
                                    return_attn_probs=False, **_):
    assert dropout_p == 0.0 and not return_attn_probs
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        ks, ke = int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        lq, lk = qe - qs, ke - ks
        allowed = torch.ones(1, lq, lk, dtype=torch.bool)
        if causal:  # bottom-right aligned: query i is at key position lk - lq + i
            allowed = (torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None])[None]
        qi, ki, vi = q[qs:qe].transpose(0, 1), kv[ks:ke, 0].transpose(0, 1), kv[ks:ke, 1].transpose(0, 1)
        out[qs:qe] = _softmax_attention(qi, ki, vi, allowed, scale).transpose(0, 1)
    return out


def pad_input(x, indices, batch, seqlen):
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out[indices] = x
    return out.view(batch, seqlen, *x.shape[1:])


def unpad_input(hidden, attention_mask):
    indices = attention_mask.flatten().nonzero().flatten()
    lens = attention_mask.sum(-1, dtype=torch.int32)
    cu = F.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))
    return hidden.flatten(0, 1)[indices], indices, cu, int(lens.max())


def _blocksparse_rows(q, k, v, layout, block, scale, q_pos, k_len):
    """One row: q (Lq, H, D) at layout positions q_pos, keys k/v (k_len, H, D) from position 0."""
    k_pos = torch.arange(k_len)
    allowed = layout[:, q_pos[:, None] // block, k_pos[None, :] // block] & (k_pos[None, :] <= q_pos[:, None])
    return _softmax_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), allowed,
                              scale).transpose(0, 1)


def blocksparse_flash_attn_padded_fwd(q, k, v, sm_scale, sparse_layout, *, left_paddings=None,
                                      seqlens=None, block_size=64, max_seqlen=None):
    """q (B, Tq, H, D), k/v (B, Tk, H, D); Tq is Tk (prefill) or 1 (decode)."""
    assert seqlens is None
    layout = _reference("triton_flash_blocksparse_attn").crow_col_to_dense(
        *sparse_layout, dtype=torch.float32).bool()
    out = torch.zeros_like(q)  # as the kernel: padding rows stay 0
    b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
    for row in range(b):
        start = int(left_paddings[row]) if left_paddings is not None else 0
        k_len = tk - start
        rows = slice(0, 1) if tq == 1 else slice(start, tq)
        q_pos = torch.tensor([k_len - 1]) if tq == 1 else torch.arange(k_len)
        out[row, rows] = _blocksparse_rows(q[row, rows], k[row, start:], v[row, start:], layout,
                                           block_size, sm_scale, q_pos, k_len)
    return out


def get_local_strided_sparse_attention_op(n_heads, max_seq_len, sparse_block_size=128,
                                          local_blocks=4, vert_stride=4, homo_head=False,
                                          device=None, inference=None, **_):
    _, pattern, _ = _reference("triton_flash_blocksparse_attn")._get_sparse_attn_mask(
        n_heads, max_seq_len, max_seq_len, torch.float32, "cpu", BLOCK=sparse_block_size,
        local_blocks=local_blocks, vert_stride=vert_stride, homo_head=homo_head, return_dense=False)
    layout = pattern.bool()
    if layout.dim() == 2:
        layout = layout[None].expand(n_heads, -1, -1)

    def op(q, k, v, sm_scale):  # (B, H, T, D), whole sequences from position 0
        tq, tk = q.shape[2], k.shape[2]
        q_pos = torch.arange(tk - tq, tk)
        return torch.stack([_blocksparse_rows(q[i].transpose(0, 1), k[i].transpose(0, 1),
                                              v[i].transpose(0, 1), layout, sparse_block_size,
                                              sm_scale, q_pos, tk).transpose(0, 1)
                            for i in range(q.shape[0])])

    return op


# ----------------------------------------------------------------------------- loading
def _reference(module: str):
    return sys.modules[f"{PACKAGE}.{module}"]


def load() -> types.SimpleNamespace:
    """The reference modules (configuration, modeling, layout), kernels swapped as above."""
    if f"{PACKAGE}.modeling_phi3_small" not in sys.modules:
        folder = reference_dir()
        if folder is None:
            raise FileNotFoundError("references/phi-3-small is not in the data folder")
        # what the reference imports from transformers, first: transformers probes for
        # flash_attn itself on import and must find the real (absent) package
        for name in ("configuration_utils", "modeling_utils", "modeling_outputs", "cache_utils"):
            importlib.import_module(f"transformers.{name}")
        fakes = {**_fake_triton(), **_fake_flash_attn()}
        saved = {name: sys.modules.get(name) for name in fakes}
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        sys.modules.update(fakes)
        try:
            importlib.import_module(f"{PACKAGE}.modeling_phi3_small")
        finally:  # nothing else may see the stand-ins (torch probes for triton, phi_lib for flash)
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
        # transformers 5 spells the same tie as a mapping (4.x: a list of the tied names)
        _reference("modeling_phi3_small").Phi3SmallForCausalLM._tied_weights_keys = {
            "lm_head.weight": "model.embed_tokens.weight"}
        layer = _reference("triton_blocksparse_attention_layer")
        layer.blocksparse_flash_attn_padded_fwd = blocksparse_flash_attn_padded_fwd
        layer.get_local_strided_sparse_attention_op = get_local_strided_sparse_attention_op
    return types.SimpleNamespace(config=_reference("configuration_phi3_small"),
                                 modeling=_reference("modeling_phi3_small"),
                                 layout=_reference("triton_flash_blocksparse_attn"))


def reference_config(config):
    """The reference's Phi3SmallConfig for one of ours (our config.json is its input)."""
    ref = load()
    d = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "model_type")}
    cfg = ref.config.Phi3SmallConfig(**d)
    # its dummy ids come from the tokenizer module (not shipped with the code): ours, given
    cfg.dummy_token_indices = list(config.masked_token_ids)
    # transformers 5 fills rope_scaling with {"rope_type": "default"}, which the 2024 code reads
    # as LongRoPE factors; the model has none (its rotary reads rope_embedding_base)
    if (cfg.rope_scaling or {}).get("rope_type") == "default":
        cfg.rope_scaling = None
    return cfg


def reference_model(config, state_dict=None):
    """The reference Phi3SmallForCausalLM for our config, optionally with given weights."""
    model = load().modeling.Phi3SmallForCausalLM(reference_config(config)).eval()
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected, unexpected
        assert all(k.endswith("rotary_emb.inv_freq") for k in missing), missing  # its buffers
    return model
