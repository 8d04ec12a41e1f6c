"""CUDA paths: flash-attn 2 against SDPA, half precision. Skipped without a GPU."""
import pytest
import torch

from phi_lib.model import PhiConfig, PhiForCausalLM
from phi_lib.model.attention import document_ids_from_eos, flash_attn_available
from phi_lib.model.parity import shrink, to_transformers

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
needs_flash = pytest.mark.skipif(not flash_attn_available(), reason="needs flash-attn")


def model(preset="phi-2", **kw):
    torch.manual_seed(0)
    cfg = shrink(PhiConfig.from_preset(preset), vocab=1024).replace(sliding_window=None, **kw)
    return PhiForCausalLM(cfg).cuda().eval()


@torch.no_grad()
def test_sdpa_cuda_matches_transformers_fp32():
    ours = model()
    ids = torch.randint(0, 1024, (2, 64), device="cuda")
    assert (ours(ids) - to_transformers(ours)(ids).logits).abs().max() < 1e-4


@needs_flash
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_flash_matches_sdpa(dtype):
    ours = model(attn_implementation="flash_attention_2").to(dtype)
    ids = torch.randint(0, 1024, (2, 128), device="cuda")
    flash = ours(ids).float()
    ours.config.attn_implementation = "sdpa"
    sdpa = ours(ids).float()
    assert (flash - sdpa).abs().max() < 5e-2


@needs_flash
@torch.no_grad()
def test_flash_varlen_documents_match_sdpa_mask():
    ours = model(attn_implementation="flash_attention_2").to(torch.bfloat16)
    ids = torch.randint(8, 1024, (2, 96), device="cuda")
    ids[:, 30] = ids[0, 70] = 7
    docs = document_ids_from_eos(ids, 7)
    flash = ours(ids, document_ids=docs).float()
    ours.config.attn_implementation = "sdpa"
    assert (flash - ours(ids, document_ids=docs).float()).abs().max() < 5e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_training_step_is_finite(dtype):
    ours = model().to(dtype).train()
    ids = torch.randint(0, 1024, (2, 128), device="cuda")
    loss = torch.nn.functional.cross_entropy(ours(ids)[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in ours.parameters())


@torch.no_grad()
def test_generation_on_cuda_with_padding():
    ours = model("phi-1.5").to(torch.bfloat16)
    out = ours.generate([[1, 2, 3], [4, 5, 6, 7, 8]], max_new_tokens=16, eos_token_id=None)
    assert out.shape == (2, 5 + 16) and out.is_cuda
