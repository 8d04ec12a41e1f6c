"""Sizing a phi model before training it: parameters, FLOPs per token, memory per GPU.

Everything here is arithmetic on the config (no weights), so it is instant for any size;
`tests/test_model_planning.py` checks `param_count` against a model built on the meta device
and the published counts of the real models.
"""
from __future__ import annotations

from typing import Optional

from phi_lib.model.config import PhiConfig

GB = 1024 ** 3
PRECISIONS = ("fp16", "bf16", "fp32")


def param_count(config: PhiConfig) -> dict[str, int]:
    """Parameters by component: embedding, attention, mlp, norms, lm_head, total, non_embedding."""
    h, i, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    if config.arch == "phi":
        attention = h * (q + 2 * kv) + (q + 2 * kv) + q * h + h            # q,k,v,dense + biases
        if config.qk_layernorm:
            attention += 4 * config.head_dim
        mlp = h * i + i + i * h + h                                        # fc1, fc2 + biases
        norms = 2 * h                                                      # one LayerNorm (w, b)
        final_norm = 2 * h
        lm_head = h * config.vocab_size + config.vocab_size
    elif config.arch == "phi3small":
        attention = h * (q + 2 * kv) + (q + 2 * kv) + q * h + h            # query_key_value, dense + biases
        mlp = h * 2 * i + 2 * i + i * h + h                                # up_proj, down_proj + biases
        norms = 4 * h                                                      # two LayerNorms (w, b)
        final_norm = 2 * h
        lm_head = h * config.vocab_size                                    # tied: subtracted below
    else:
        attention = h * (q + 2 * kv) + q * h                               # qkv_proj, o_proj
        mlp = h * 2 * i + i * h                                            # gate_up, down
        norms = 2 * h                                                      # two RMSNorms
        final_norm = h
        lm_head = h * config.vocab_size
    embedding = config.vocab_size * h
    if config.tie_word_embeddings:
        lm_head -= h * config.vocab_size
    counts = {
        "embedding": embedding,
        "attention": n_layers * attention,
        "mlp": n_layers * mlp,
        "norms": n_layers * norms + final_norm,
        "lm_head": lm_head,
    }
    if hasattr(config, "clip_hidden_size"):  # phi-3-vision: CLIP, projector, separators
        counts["vision"] = vision_param_count(config)
    counts["total"] = sum(counts.values())
    counts["non_embedding"] = counts["total"] - embedding
    return counts


def vision_param_count(config) -> int:
    """phi-3-vision's image side: CLIP vision tower (embeddings, pre/post LayerNorm, layers),
    the projector MLP (4D -> h -> h) and the two separators (4D each)."""
    d, i, layers = config.clip_hidden_size, config.clip_intermediate_size, config.clip_num_hidden_layers
    grid, p, h = config.clip_image_size // config.clip_patch_size, config.clip_patch_size, config.hidden_size
    embeddings = d + 3 * p * p * d + (grid * grid + 1) * d      # CLS, patch conv (no bias), positions
    per_layer = 4 * (d * d + d) + 4 * d + (d * i + i) + (i * d + d)  # q/k/v/out, 2 LayerNorms, fc1/fc2
    clip = embeddings + 2 * d + layers * per_layer + 2 * d
    projector = (4 * d * h + h) + (h * h + h)
    return clip + projector + 2 * 4 * d


def flops_per_token(config: PhiConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), the denominator of MFU.

    6 N for the matmuls over the N parameters a token passes through (all but the input
    embedding, which is a lookup), plus 12 L d T for attention scores and their weighted sum
    over a context of T (the PaLM appendix B formula; no credit for causal masking).
    phi-3-vision: the image encoder and projector are counted per crop and image token
    (`vision_flops_per_sequence`), not per text token, spread over the sequence's tokens.
    """
    counts = param_count(config)
    n = counts["non_embedding"] - counts.get("vision", 0)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    vision = vision_flops_per_sequence(config) / seq_len if "vision" in counts else 0.0
    return 6.0 * n + attention + vision


def vision_flops_per_sequence(config, crops: Optional[int] = None) -> float:
    """phi-3-vision's image side per training sequence (forward + backward; the whole tower,
    frozen or not, as MFU counts the model's work): CLIP over `crops` crops
    (PLAN_CROPS_PER_SEQUENCE) of grid^2 + 1 tokens, its matmuls 6 N_layers per crop token
    (the patch embedding 6 x 3 p^2 d per patch) plus 12 L d T attention over each crop's T
    tokens, and the projector's 6 N per image token (crops x 144; separators left out)."""
    crops = PLAN_CROPS_PER_SEQUENCE if crops is None else crops
    d, i, layers = config.clip_hidden_size, config.clip_intermediate_size, config.clip_num_hidden_layers
    grid, p, h = config.clip_image_size // config.clip_patch_size, config.clip_patch_size, config.hidden_size
    t = grid * grid + 1
    per_layer = 4 * d * d + 2 * d * i                            # q/k/v/out, fc1/fc2
    clip = 6.0 * layers * per_layer * t + 12.0 * layers * d * t * t + 6.0 * 3 * p * p * d * grid * grid
    projector = 6.0 * (4 * d * h + h * h) * config.image_token_count
    return crops * (clip + projector)


def memory_per_gpu(config: PhiConfig, zero_stage: int, precision: str, n_gpus: int,
                   micro_batch_size: int, seq_len: int, *, activation_checkpointing: bool = False,
                   flash_attention: bool = True) -> dict[str, float]:
    """Training memory per GPU in GB: params, grads, optimizer_states, activations, total.

    Mixed precision with Adam (ZeRO paper, sec. 3): 16-bit params (2 B) and grads (2 B), fp32
    master params + momentum + variance (12 B); fp32 training keeps 4 + 4 + 8 B. ZeRO-1
    partitions the optimizer states over the GPUs, ZeRO-2 also the gradients, ZeRO-3 also the
    parameters. Activations follow Korthikanti et al. 2022 for one micro batch, adapted to the
    phi block (see `activation_bytes`). Buffers, fragmentation and the CUDA context (~1-3 GB)
    are not included.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    n = param_count(config)["total"]
    p_bytes, g_bytes, o_bytes = (4, 4, 8) if precision == "fp32" else (2, 2, 12)
    params = n * p_bytes / (n_gpus if zero_stage >= 3 else 1)
    grads = n * g_bytes / (n_gpus if zero_stage >= 2 else 1)
    optimizer = n * o_bytes / (n_gpus if zero_stage >= 1 else 1)
    acts = activation_bytes(config, micro_batch_size, seq_len, precision,
                            activation_checkpointing=activation_checkpointing,
                            flash_attention=flash_attention)
    out = {"params": params / GB, "grads": grads / GB, "optimizer_states": optimizer / GB,
           "activations": acts / GB}
    out["total"] = sum(out.values())
    return out


def activation_bytes(config: PhiConfig, micro_batch_size: int, seq_len: int, precision: str = "bf16",
                     *, activation_checkpointing: bool = False, flash_attention: bool = True) -> float:
    """Bytes of activations kept for the backward pass of one micro batch.

    Per phi block (s tokens, b rows, h width, i MLP width, 16-bit = 2 B per value):
    LayerNorm input 2sbh, its output (shared by attention and MLP) 2sbh, q/k/v 6sbh,
    attention output 2sbh, fc1 output 2sbi, gelu output 2sbi, two dropout masks 2sbh when
    dropout is on; without flash attention also the softmax 2as^2b (+ its dropout mask as^2b).
    The phi-3 block adds a second norm (4sbh) and its SwiGLU keeps gate+up 4sbi and their
    product 2sbi; phi-3-small's GEGELU keeps the same (its 2i-wide input, i-wide output) and it
    has one dropout mask (sbh). The LM head keeps logits and their log-softmax in fp32 (8 B x s b V).
    With activation checkpointing only each block's input (2sbh) is kept, plus one block's
    worth during recomputation.
    """
    s, b, h, i = seq_len, micro_batch_size, config.hidden_size, config.intermediate_size
    a = config.num_attention_heads
    word = 4 if precision == "fp32" else 2
    if config.arch == "phi":
        per_layer = (2 + 2 + 6 + 2) * s * b * h * word / 2 + 2 * s * b * i * word
    else:
        per_layer = (2 + 2 + 6 + 2 + 4) * s * b * h * word / 2 + 3 * s * b * i * word
    if config.arch == "phi3small":  # one dropout per block, on the MLP output
        masks = s * b * h if config.ffn_dropout_prob > 0 else 0
        attention_dropout = config.attention_dropout_prob
    else:
        masks = 2 * s * b * h if config.resid_pdrop > 0 else 0
        attention_dropout = config.attention_dropout
    per_layer += masks  # 1-byte dropout masks
    if not flash_attention:
        per_layer += a * s * s * b * word + (a * s * s * b if attention_dropout > 0 else 0)
    logits = 8 * s * b * config.vocab_size
    if activation_checkpointing:
        layers = config.num_hidden_layers * s * b * h * word + per_layer
    else:
        layers = config.num_hidden_layers * per_layer
    if hasattr(config, "clip_hidden_size"):
        layers += vision_activation_bytes(config, micro_batch_size, word, activation_checkpointing)
    return float(layers + logits)


PLAN_CROPS_PER_SEQUENCE = 17
"""Crops through CLIP per training sequence the planner assumes for phi-3-vision: one image at
the published 16 crops + its global view (the image's tokens are part of seq_len already)."""


def vision_activation_bytes(config, micro_batch_size: int, word: int, activation_checkpointing: bool) -> float:
    """CLIP's activations for PLAN_CROPS_PER_SEQUENCE crops of (grid^2 + 1) tokens per row, per
    layer as a pre-LN block (2 LayerNorm inputs, q/k/v, attention output: 12th; fc1 and its
    quick-gelu: 2ti) with flash attention; checkpointed: each layer's input + one layer."""
    d, i = config.clip_hidden_size, config.clip_intermediate_size
    t = micro_batch_size * PLAN_CROPS_PER_SEQUENCE * ((config.clip_image_size // config.clip_patch_size) ** 2 + 1)
    per_layer = 12 * t * d * word / 2 + 2 * t * i * word
    if activation_checkpointing:
        return config.clip_num_hidden_layers * t * d * word + per_layer
    return config.clip_num_hidden_layers * per_layer


def memory_table(config: PhiConfig, n_gpus: int, micro_batch_size: int, seq_len: int,
                 precisions=("fp16", "bf16"), stages=(0, 1, 2, 3)) -> list[dict]:
    """Rows of `memory_per_gpu` for each ZeRO stage x precision (the notebook's table)."""
    rows = []
    for zero in stages:
        for prec in precisions:
            gb = memory_per_gpu(config, zero, prec, n_gpus, micro_batch_size, seq_len)
            rows.append({"zero_stage": zero, "precision": prec, **{k: round(v, 2) for k, v in gb.items()}})
    return rows


def fit_training(config: PhiConfig, *, n_gpus: int, seq_len: int, global_batch_size: int,
                 precision: str = "bf16", gpu_gb: float = 80.0, usable: float = 0.85,
                 max_micro_batch: int = 64) -> dict:
    """ZeRO stage, micro batch and activation checkpointing for training on `n_gpus` GPUs of
    `gpu_gb` (`memory_per_gpu` within `usable` of it, the rest for buffers and the CUDA context).

    The rule: ZeRO-2 (the papers') unless only ZeRO-3 fits; activation checkpointing only when
    nothing fits without it; then the largest power-of-two micro batch that fits and divides
    the global batch over the GPUs (no remainder for gradient accumulation).
    """
    budget = usable * gpu_gb
    for checkpointing in (False, True):
        for zero in (2, 3):
            micro = 0
            for mb in (2 ** k for k in range(max_micro_batch.bit_length())):
                if mb > max_micro_batch or global_batch_size % (mb * n_gpus):
                    break
                gb = memory_per_gpu(config, zero, precision, n_gpus, mb, seq_len,
                                    activation_checkpointing=checkpointing)["total"]
                if gb > budget:
                    break
                micro = mb
            if micro:
                gb = memory_per_gpu(config, zero, precision, n_gpus, micro, seq_len,
                                    activation_checkpointing=checkpointing)["total"]
                return {"zero_stage": zero, "micro_batch_size": micro,
                        "activation_checkpointing": checkpointing, "memory_gb": round(gb, 2),
                        "accumulation": global_batch_size // (micro * n_gpus)}
    raise ValueError(f"{config.name or 'the model'} does not fit {n_gpus} GPUs of {gpu_gb:g} GB at "
                     f"seq_len {seq_len} with global batch {global_batch_size} (ZeRO-3, activation "
                     "checkpointing, micro batch 1): add GPUs or shorten the sequences")
