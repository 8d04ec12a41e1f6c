"""Stage 06 on phi-3-small: a `phi3small` checkpoint folder (no class in transformers) loads
through `phi_lib.hf_models.load_causal_lm` into our model behind transformers' call
convention, and the eval code path (`evaluate_model`: batched, right-padded, contexts shared
on the KV cache; left-padded batched generation) gives what our model computes directly, one
unpadded request at a time, without a cache."""
import json

import pytest
import torch
import torch.nn.functional as F

from phi_lib.config import EvaluateConfig
from phi_lib.evaluate import evaluate_model
from phi_lib.evaluate.generation import generate
from phi_lib.hf_models import load_causal_lm, own_model_type
from phi_lib.model import Phi3SmallForCausalLM
from phi_lib.model.hf_interface import CausalLMInterface
from phi_lib.scoring import encode_pair

pytestmark = pytest.mark.slow  # a real tokenizer (100K ids) and model through the eval code


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A seeded phi3-small-tiny with blocks of 8 (arc's 20-40 token requests then reach past
    the 2 local blocks: the sparse layers skip key blocks) and the phi-3-small tokenizer, saved
    as stage 05 saves its checkpoints."""
    from phi_lib.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("phi3_small_ckpt")
    torch.manual_seed(0)
    model = Phi3SmallForCausalLM.from_preset("phi3-small-tiny", blocksparse_block_size=8,
                                             blocksparse_triton_kernel_block_size=8)
    with torch.no_grad():  # sharper than the 0.02-std init, so choices differ clearly
        model.model.embed_tokens.weight.mul_(10)
    model.save_pretrained(folder)
    load_tokenizer("phi-3-small").to_transformers().save_pretrained(str(folder))
    return folder


def test_eval_scores_a_phi3_small_checkpoint_as_our_model_does(checkpoint, tmp_path):
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "phi3small"
    assert own_model_type(str(checkpoint)) == "phi3small"
    model, tok = load_causal_lm(str(checkpoint), device="cpu", dtype="float32")  # stage 06's loader
    assert isinstance(model, CausalLMInterface) and isinstance(model.model, Phi3SmallForCausalLM)
    ev = EvaluateConfig(device="cpu", dtype="float32", batch_size=4)
    res = evaluate_model(str(checkpoint), ["arc_easy"], tmp_path / "eval", cfg=ev, limit=2,
                         loaded=(model, tok), progress=False)
    assert res["n"]["arc_easy"] == 2
    samples = [json.loads(x) for x in (tmp_path / "eval/samples/arc_easy.jsonl").read_text().splitlines()]

    ours = model.model
    n_sparse = 0
    for s in samples:
        assert isinstance(s["prompt"], str)  # one context per item: the scorer shares it
        for cont, ll in zip(s["continuations"], s["loglikelihoods"]):
            ctx_ids, cont_ids = encode_pair(tok, s["prompt"], cont)
            ids = torch.tensor([ctx_ids + cont_ids])
            n_sparse += ids.shape[1] > 16  # past the two local blocks of 8
            with torch.no_grad():
                logp = F.log_softmax(ours(ids)[0, :-1], dim=-1)
            direct = float(logp[len(ctx_ids) - 1:].gather(1, torch.tensor(cont_ids)[:, None]).sum())
            assert ll == pytest.approx(direct, abs=2e-4), (s["doc_id"], cont)
    assert n_sparse > 0
    lls = [ll for s in samples for ll in s["loglikelihoods"]]
    assert max(lls) - min(lls) > 1.0  # the choices are told apart, not all alike

    # generation (the path of gsm8k/humaneval/mbpp): a left-padded batch, greedy, equals
    # argmax decoding of each prompt alone
    prompts = [samples[0]["prompt"] * 2, "def add(a, b):"]
    got = generate(model, tok, prompts, max_new_tokens=3, stop=[], batch_size=2, progress=False)
    for prompt, [text] in zip(prompts, got):
        ids = tok.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            for _ in range(3):
                ids.append(int(ours(torch.tensor([ids]))[0, -1].argmax()))
        assert text == tok.decode(ids[-3:], skip_special_tokens=True)
