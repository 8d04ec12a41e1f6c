"""phi3-small-tiny as a runnable system on CPU: stage 03 packs real web text with the
phi-3-small tokenizer (uint32 ids), stage 04 builds and sizes it, stage 05 trains a few steps,
and the checkpoint reloads: the reloaded model reproduces the validation loss stage 05 logged,
Microsoft's reference implementation (tests/phi3_small_reference.py, the oracle) reading the
same checkpoint gives the same logits, and stage 06's evaluation loads it (with the tokenizer
stage 05 saved into it) and scores an item as the model does."""
import json

import pytest
import torch

from phi_lib.model.stage import ModelStage
from phi_lib.packed import PackedDataset
from phi_lib.train.engines import lm_loss
from phi_lib.train.launcher import prepare
from phi_lib.train.loop import Trainer
from phi_lib.train.metrics import read_metrics
from phi_lib.train.summary import summarize
from test_train_fixtures import build_tiny_mix, train_config

pytestmark = pytest.mark.slow
SMALL_TINY = {"preset": "phi3-small-tiny"}  # model.tokenizer: the preset's, phi-3-small


@pytest.fixture(scope="module")
def small_mix(tmp_path_factory):
    return build_tiny_mix(tmp_path_factory.mktemp("phi3_small_mix"), tokenizer="phi-3-small")


def test_phi3_small_tiny_trains_and_its_checkpoint_reloads(small_mix, tmp_path):
    import phi3_small_reference as reference

    from phi_lib.model import PhiForCausalLM, Phi3SmallForCausalLM

    mix = json.loads((small_mix / "mix.json").read_text())
    assert (mix["dtype"], mix["tokenizer"], mix["vocab_size"]) == ("uint32", "phi-3-small", 100_352)
    # 2 x 64 tokens per step: the 100,352-row head is most of the cost (muP divides the
    # logits by 8, hence the higher lr)
    cfg = train_config(tmp_path, small_mix, "small", model=SMALL_TINY, max_steps=4, save_every=4,
                       eval_every=4, warmup_steps=1, global_batch_size=2, micro_batch_size=2,
                       eval_batches=1, lr=2e-2)
    assert cfg.model.tokenizer == "phi-3-small"

    stage = ModelStage(cfg, cfg.run_dir / "04_model")  # stage 04: the phi3small family
    assert stage.summary()["value"]["block"].startswith("sequential, LayerNorm")
    assert stage.params().data.loc["total", "parameters"] == 13_737_728
    assert json.loads(stage.write_config().read_text())["model_type"] == "phi3small"

    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    Trainer(cfg, out).run()
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4]
    assert summarize(out)["mfu_device"] == "cpu"  # the planner counts this MFU on CPUs only
    logged_val = next(r["val_loss"] for r in records if r["step"] == 4 and "val_loss" in r)

    val = PackedDataset(small_mix, "val")
    mb, n = cfg.train.micro_batch_size, cfg.train.eval_batches
    n = max(1, min(n, len(val) // mb))

    def val_loss(model):
        with torch.no_grad():
            return float(torch.stack([lm_loss(model.eval()(ids), ids) for _, (ids, _) in
                                      zip(range(n), val.iter_batches(mb, 0, 1, seed=0))]).mean())

    initial = val_loss(Trainer(cfg, out).build_model(None))  # the same seeded init, untrained
    assert logged_val < initial - 0.05, (initial, logged_val)  # ~ln(100352) = 11.5 before

    step = out / "checkpoints" / "step-4"
    ours = PhiForCausalLM.from_pretrained(step)  # dispatched on model_type phi3small
    assert isinstance(ours, Phi3SmallForCausalLM) and ours.config.blocksparse_block_size == 16
    # the reloaded weights give the validation loss the trainer measured on them
    assert abs(val_loss(ours) - logged_val) < 1e-5

    # the reference implementation reads the trained checkpoint to the same logits, on a
    # window long enough for the sparse layers to skip key blocks (64 tokens, blocks of 16)
    from safetensors.torch import load_file

    ref = reference.load().modeling.Phi3SmallForCausalLM(reference.reference_config(ours.config)).eval()
    missing, unexpected = ref.load_state_dict(load_file(step / "model.safetensors"), strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith("inv_freq") for k in missing)
    assert ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()  # tied
    ids = next(val.iter_batches(2, 0, 1, seed=0))[0]
    with torch.no_grad():
        theirs = ref(ids, use_cache=False).logits
        assert (ours(ids) - theirs).abs().max() < 1e-4

    # stage 06: the eval loads the checkpoint folder (phi3small: our class, its saved
    # tokenizer) and scores an arc_easy item as the reloaded model does
    import torch.nn.functional as F

    from phi_lib.config import EvaluateConfig
    from phi_lib.evaluate import evaluate_model
    from phi_lib.hf_models import load_causal_lm
    from phi_lib.scoring import encode_pair

    loaded = load_causal_lm(str(step), device="cpu", dtype="float32")  # what stage 06 calls
    tok = loaded[1]
    evaluate_model(str(step), ["arc_easy"], tmp_path / "06_evaluate", limit=1, progress=False,
                   cfg=EvaluateConfig(device="cpu", dtype="float32"), loaded=loaded)
    sample = json.loads((tmp_path / "06_evaluate/samples/arc_easy.jsonl").read_text().splitlines()[0])
    ctx, cont = encode_pair(tok, sample["prompt"], sample["continuations"][0])
    with torch.no_grad():
        logp = F.log_softmax(ours(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1], dim=-1)
    assert sample["loglikelihoods"][0] == pytest.approx(
        float(logp.gather(1, torch.tensor(cont)[:, None]).sum()), abs=2e-4)
