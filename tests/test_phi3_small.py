"""Phi-3-small against Microsoft's reference implementation (tests/phi3_small_reference.py)."""
import inspect
import json

import pytest
import torch
from safetensors.torch import load_file

from phi_lib.model import PhiConfig, PhiForCausalLM, build_model
from phi_lib.model.planning import memory_per_gpu, param_count
from phi_lib.model.phi3_small import (PHI3_SMALL_DUMMY_IDS, Phi3SmallConfig, Phi3SmallForCausalLM,
                                      block_layout, dense_mask, gegelu, sparse_mask_mod)

import phi3_small_reference as reference

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(reference.reference_dir() is None, reason="needs the data folder")]
TOL = 1e-5
PUBLISHED_PARAMS = 7_392_272_384  # Phi-3-small-8k, tied head


def tiny(**kw) -> Phi3SmallConfig:
    """phi3-small-tiny at test size: blocks of 16, 2 local, every 3rd vertical, 4 heads / 2 kv."""
    # init std 0.1 (not 0.02): peaked attention, logits of std ~0.15, so that mistakes show
    base = dict(vocab_size=512, dummy_token_ids=(3, 200, 511), max_position_embeddings=256,
                embedding_dropout_prob=0.0, ffn_dropout_prob=0.0, initializer_range=0.1)
    return Phi3SmallConfig.from_preset("phi3-small-tiny", **{**base, **kw})


CASES = {
    "tiny": tiny(),
    # published 4:1 grouping; 8 heads under a stride of 8 shift by 1 block; muP attention x2;
    # a GEGELU clamp of 4 that the up_proj outputs (up to ~8 here) pass
    "gqa 4:1, clamped": tiny(num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                             blocksparse_vert_stride=8, mup_attn_multiplier=2.0, gegelu_limit=4.0),
    # 2 heads under a stride of 6: the heads' vertical blocks shift by 3
    "stride > heads": tiny(num_attention_heads=2, num_key_value_heads=1, hidden_size=64,
                           blocksparse_vert_stride=6, blocksparse_num_local_blocks=1),
    # (kernel tiles smaller than blocks, e.g. 16 in 32, are left out: as written, the reference's
    # batched-inference call passes its 32-token layout with block_size=16, so the kernel would
    # read layout rows as 16-token blocks; its training path kron-expands correctly. 64/64 in
    # the published model)
    "homo heads, 32-token blocks, no clamp": tiny(
        blocksparse_homo_head_pattern=True, blocksparse_block_size=32,
        blocksparse_triton_kernel_block_size=32, blocksparse_num_local_blocks=1,
        blocksparse_vert_stride=2, gegelu_limit=None, dense_attention_every_n_layers=3),
}
LAYOUTS = {name: cfg for name, cfg in CASES.items()}
LAYOUTS["published"] = Phi3SmallConfig.from_preset("phi-3-small")


def pair(cfg: Phi3SmallConfig, seed: int = 0):
    torch.manual_seed(seed)
    ours = Phi3SmallForCausalLM(cfg.replace()).eval()  # its own config: tests switch kernels
    with torch.no_grad():  # LayerNorms and biases away from 1/0 so that a mix-up shows
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return ours, reference.reference_model(cfg, ours.state_dict())


def batch(cfg, b=3, t=83, pad=(0, 7, 37)):
    """83 tokens = 6 blocks of 16; row 2's padding moves its layout by more than 2 blocks."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for row, n in enumerate(pad[:b]):
        mask[row, :n] = 0
    return ids, mask


def ref_logits(ref, ids, mask=None):
    return ref(ids, attention_mask=mask, use_cache=False).logits


# ----------------------------------------------------------------------------- config and size
def test_presets_are_the_reference_defaults_and_the_published_size():
    ref_cls = reference.load().config.Phi3SmallConfig
    ref_cfg, ours = ref_cls(), Phi3SmallConfig.from_preset("phi-3-small")
    published = set(inspect.signature(ref_cls.__init__).parameters) - {"self", "kwargs", "rope_scaling"}
    assert published <= set(ours.to_hf_dict())  # every argument of the reference config
    for key in published:
        assert getattr(ref_cfg, key) == ours.to_hf_dict()[key], key
    assert ours.intermediate_size == ref_cfg.intermediate_size == 14336
    with torch.device("meta"):
        n = Phi3SmallForCausalLM(ours).num_parameters()
    assert n == PUBLISHED_PARAMS
    for cfg in (ours, Phi3SmallConfig.from_preset("phi3-small-tiny")):  # the planner's arithmetic
        with torch.device("meta"):
            model = Phi3SmallForCausalLM(cfg)
        counts = param_count(cfg)
        assert counts["total"] == model.num_parameters()
        assert counts["non_embedding"] == model.num_parameters(exclude_embeddings=True)
        assert memory_per_gpu(cfg, 2, "bf16", 8, 1, 8192)["total"] > 0
    assert PhiConfig.from_preset("phi-3-small") == ours  # the workbook's preset lookup
    assert isinstance(build_model(tiny()), Phi3SmallForCausalLM)


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_names_and_shapes_are_the_references(name):
    # (the reference cannot be built on the meta device: its rotary init autocasts there)
    ours, ref = pair(CASES[name])
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items() if "rotary_emb" not in k}
    assert shapes == ref_shapes
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())


def test_config_json_round_trip_and_errors():
    cfg = CASES["homo heads, 32-token blocks, no clamp"]
    assert Phi3SmallConfig.from_hf_dict(cfg.to_hf_dict()).replace(name=cfg.name) == cfg
    assert "dummy_token_ids" not in Phi3SmallConfig.from_preset("phi-3-small").to_hf_dict()
    written_by_transformers_5 = {**cfg.to_hf_dict(), "rope_scaling": {"rope_type": "default"}}
    assert Phi3SmallConfig.from_hf_dict(written_by_transformers_5).rope_scaling is None
    with pytest.raises(NotImplementedError, match="LongRoPE"):
        tiny(rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})
    with pytest.raises(ValueError, match="dummy_token_ids"):
        tiny(dummy_token_ids=(512,))
    with pytest.raises(ValueError, match="did you mean 'phi-3-small'"):
        Phi3SmallConfig.from_preset("phi-3-smal")
    with pytest.raises(ValueError, match="Phi3SmallConfig"):
        PhiConfig.from_hf_dict(cfg.to_hf_dict())


def test_dummy_ids_are_the_tokenizers_unused_ids():
    real_specials = {100257, 100261, 100262, 100263, 100266}  # endoftext, system, user, assistant, end
    assert set(PHI3_SMALL_DUMMY_IDS) == set(range(100256, 100352)) - real_specials
    cfg = Phi3SmallConfig.from_preset("phi-3-small")
    assert cfg.masked_token_ids == PHI3_SMALL_DUMMY_IDS
    ours, _ = pair(CASES["tiny"])
    with torch.no_grad():
        logits = ours(torch.tensor([[1, 2, 3]]))
    assert (logits[..., [3, 200, 511]] == torch.finfo(torch.float32).min).all()
    assert not torch.isin(logits.argmax(-1), torch.tensor([3, 200, 511])).any()


def test_gegelu_matches_reference():
    x = 12 * torch.randn(4, 64)
    x[0, :4] = torch.tensor([float("inf"), float("-inf"), 30.0, -30.0])
    x[1, :4] = torch.tensor([-25.0, float("inf"), 25.0, float("-inf")])
    ref = reference.load().modeling.gegelu
    for limit in (20.0, None):
        assert torch.equal(gegelu(x, limit).nan_to_num(), ref(x, limit=limit).nan_to_num())


# ----------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_block_layout_equals_reference(name):
    cfg = LAYOUTS[name]
    layout_fn = reference.load().layout._get_sparse_attn_mask
    n_blocks = cfg.max_position_embeddings // cfg.blocksparse_block_size
    _, ref_blocks, _ = layout_fn(cfg.num_attention_heads, cfg.max_position_embeddings,
                                 cfg.max_position_embeddings, torch.float32, "cpu",
                                 BLOCK=cfg.blocksparse_block_size,
                                 local_blocks=cfg.blocksparse_num_local_blocks,
                                 vert_stride=cfg.blocksparse_vert_stride,
                                 homo_head=cfg.blocksparse_homo_head_pattern)
    ours = block_layout(cfg, n_blocks)
    assert torch.equal(*torch.broadcast_tensors(ours, ref_blocks.bool()))
    assert not ours.all()  # really sparse at this length
    if name == "published":
        assert ours.sum(-1)[0, -1] == 16 + 128 // 8 - 2  # 16 local + every 8th block before them


@pytest.mark.parametrize("name", list(CASES))
def test_token_mask_equals_reference_dense_mask(name):
    # the reference's token-level mask (its test utility; rows are right for whole blocks)
    cfg = CASES[name]
    t = 6 * cfg.blocksparse_block_size
    layout_fn = reference.load().layout._get_sparse_attn_mask
    for q_len in (t, 1):  # prefill and the last decoding row
        _, _, ref_mask = layout_fn(cfg.num_attention_heads, q_len, t, torch.float32, "cpu",
                                   BLOCK=cfg.blocksparse_block_size,
                                   local_blocks=cfg.blocksparse_num_local_blocks,
                                   vert_stride=cfg.blocksparse_vert_stride,
                                   homo_head=cfg.blocksparse_homo_head_pattern, return_dense=True)
        mod = sparse_mask_mod(cfg, torch.arange(t)[None], q_len)
        ours = dense_mask(mod, 1, cfg.num_attention_heads, q_len, t, "cpu")[0]
        assert torch.equal(*torch.broadcast_tensors(ours, ref_mask.bool()))


# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("name", list(CASES))
@torch.no_grad()
def test_logits_match_reference(name, padded):
    cfg = CASES[name]
    ours, ref = pair(cfg)
    ids, mask = batch(cfg)
    if not padded:
        assert (ours(ids) - ref_logits(ref, ids)).abs().max() < TOL
        return
    real = mask.bool()
    mine = ours(ids, attention_mask=mask)
    assert (mine - ref_logits(ref, ids, mask))[real].abs().max() < TOL
    assert torch.isfinite(mine).all()
    # each padded row equals that row alone, unpadded (the layout starts at its first token)
    for row in (1, 2):
        alone = ours(ids[row:row + 1, mask[row].bool()])
        assert (mine[row, real[row]] - alone[0]).abs().max() < TOL


@torch.no_grad()
def test_sparse_layers_change_the_logits_only_beyond_the_local_window():
    cfg = CASES["tiny"]
    ours, _ = pair(cfg)
    dense = Phi3SmallForCausalLM(cfg.replace(dense_attention_every_n_layers=1)).eval()
    dense.load_state_dict(ours.state_dict())
    ids, _ = batch(cfg, b=1)
    window = cfg.blocksparse_num_local_blocks * cfg.blocksparse_block_size  # 32 tokens
    assert (ours(ids[:, :window]) - dense(ids[:, :window])).abs().max() < TOL
    assert (ours(ids) - dense(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@torch.no_grad()
def test_flex_attention_path_equals_masked_path(padded):
    cfg = CASES["gqa 4:1, clamped"]
    ours, _ = pair(cfg)
    ids, mask = batch(cfg)
    mask = mask if padded else None
    masked = ours(ids, attention_mask=mask)
    ours.config.attn_implementation = "flex"
    flex = ours(ids, attention_mask=mask)
    real = mask.bool() if padded else torch.ones_like(ids, dtype=torch.bool)
    assert (flex - masked)[real].abs().max() < TOL


@torch.no_grad()
def test_packed_documents_equal_separate_forwards_on_both_paths():
    cfg = CASES["tiny"]
    ours, _ = pair(cfg)
    a, b = torch.randint(0, 512, (1, 37)), torch.randint(0, 512, (1, 58))
    docs = torch.tensor([[0] * 37 + [1] * 58])
    for impl in ("sdpa", "flex"):
        ours.config.attn_implementation = impl
        out = ours(torch.cat([a, b], 1), document_ids=docs)
        assert (out[:, :37] - ours(a)).abs().max() < TOL
        assert (out[:, 37:] - ours(b)).abs().max() < TOL  # layout restarts with the document


# ----------------------------------------------------------------------------- checkpoints
@torch.no_grad()
def test_checkpoint_ours_to_reference_and_back(tmp_path):
    cfg = CASES["gqa 4:1, clamped"]
    ours, _ = pair(cfg)
    ours.save_pretrained(tmp_path / "ours")
    hf = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert hf["model_type"] == "phi3small" and hf["architectures"] == ["Phi3SmallForCausalLM"]
    state = load_file(tmp_path / "ours" / "model.safetensors")
    assert "lm_head.weight" not in state  # tied, as in the published checkpoint
    ref = reference.reference_model(cfg)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"} | {
        k for k in missing if k.endswith("rotary_emb.inv_freq")}
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()
    ids, mask = batch(cfg)
    assert (ours(ids) - ref_logits(ref, ids)).abs().max() < TOL

    # the reference's own save_pretrained (its config.json, its names) loads into ours
    torch.manual_seed(3)
    ref = reference.reference_model(cfg)
    ref.save_pretrained(tmp_path / "ref")
    back = PhiForCausalLM.from_pretrained(tmp_path / "ref")  # dispatched on model_type
    assert isinstance(back, Phi3SmallForCausalLM)
    assert back.config.blocksparse_vert_stride == 8 and back.config.mup_attn_multiplier == 2.0
    real = mask.bool()
    assert (back(ids, attention_mask=mask) - ref_logits(ref, ids, mask))[real].abs().max() < TOL


# ----------------------------------------------------------------------------- decoding
@torch.no_grad()
def test_kv_cache_incremental_equals_full_forward():
    cfg = CASES["tiny"]
    ours, _ = pair(cfg)
    ids, mask = batch(cfg, t=70)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes with left padding
    for m, p in ((None, None), (mask, pos)):
        full = ours(ids, attention_mask=m)
        cache = ours.new_cache(max_length=70)
        steps = [ours(ids[:, :40], attention_mask=None if m is None else m[:, :40],
                      position_ids=None if p is None else p[:, :40], cache=cache)]
        for i in range(40, 70):  # one token at a time, across the blocks at 48 and 64
            steps.append(ours(ids[:, i:i + 1], attention_mask=None if m is None else m[:, :i + 1],
                              position_ids=None if p is None else p[:, i:i + 1], cache=cache))
        real = m.bool() if m is not None else torch.ones_like(ids, dtype=torch.bool)
        assert (torch.cat(steps, 1) - full)[real].abs().max() < TOL


@torch.no_grad()
def test_greedy_generation_matches_reference():
    # the reference's generate() needs GenerationMixin, which its class lacks under transformers
    # 5: its greedy tokens come from re-running its forward on the growing sequence instead
    cfg = CASES["tiny"].replace(eos_token_id=None)
    ours, ref = pair(cfg)
    ids, mask = batch(cfg, t=41, pad=(0, 5, 19))
    new = 12  # rows of 41, 36 and 22 real tokens grow across the blocks at 48 and 32
    mine = ours.generate(ids, mask, max_new_tokens=new, temperature=0.0, eos_token_id=None)
    seq, m = ids, mask
    for _ in range(new):
        nxt = ref_logits(ref, seq, m)[:, -1].argmax(-1, keepdim=True)
        seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
    assert torch.equal(mine, seq)


# ----------------------------------------------------------------------------- training
def test_training_grads_match_reference():
    # grad mode: the reference pads to a multiple of 64 and runs its training kernels
    cfg = CASES["tiny"]
    ours, ref = pair(cfg)
    ids, _ = batch(cfg, b=2, t=70)
    for model in (ours.train(), ref.train()):
        logits = model(ids) if model is ours else model(ids, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():  # gradients are ~1e-2 here: a tighter bound
        assert (grads[name].grad - p.grad).abs().max() < 1e-7, name


def test_gradient_checkpointing_same_grads():
    ours, _ = pair(CASES["tiny"])
    ids, _ = batch(CASES["tiny"], b=2, t=40)
    grads = []
    for ckpt in (False, True):
        ours.zero_grad()
        ours.train().gradient_checkpointing_enable(ckpt)
        ours(ids).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters()]))
    assert (grads[0] - grads[1]).abs().max() < 1e-6


def test_dropout_only_in_training():
    cfg = CASES["tiny"].replace(embedding_dropout_prob=0.5, ffn_dropout_prob=0.5)
    ours, _ = pair(cfg)
    ids, _ = batch(cfg, b=1, t=20)
    with torch.no_grad():
        assert torch.equal(ours.eval()(ids), ours(ids))
        ours.train()
        assert not torch.equal(ours(ids), ours(ids))


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_cuda_flex_block_mask_equals_masked_sdpa(dtype):
    cfg = tiny(blocksparse_block_size=64, blocksparse_triton_kernel_block_size=64,
               blocksparse_num_local_blocks=4, blocksparse_vert_stride=8,
               max_position_embeddings=2048, num_attention_heads=8, num_key_value_heads=2,
               hidden_size=512)
    torch.manual_seed(0)
    ours = Phi3SmallForCausalLM(cfg).cuda().to(dtype).eval()
    ids, mask = batch(cfg, b=2, t=1500, pad=(0, 333))
    ids, mask = ids.cuda(), mask.cuda()
    out = {}
    for impl in ("sdpa", "auto"):  # auto on CUDA = compiled flex for the sparse layers
        ours.config.attn_implementation = impl
        out[impl] = ours(ids, attention_mask=mask)[mask.bool()]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (out["sdpa"] - out["auto"]).abs().max() < tol
