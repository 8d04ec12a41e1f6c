"""The phi-3 family through stage 05 on CPU: phi3-tiny (the phi-3 block, GQA, the phi-3-mini
tokenizer) trains a few steps on real web text packed with its own tokenizer, its checkpoint
carries that tokenizer and loads in transformers with the same logits; data packed with
another tokenizer is refused before the first step."""
import pytest
import torch

from phi_lib.data.tokenizer import load_tokenizer
from phi_lib.train.launcher import prepare
from phi_lib.train.loop import Trainer
from phi_lib.train.metrics import read_metrics
from test_train_fixtures import build_tiny_mix, tiny_mix, train_config  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
PHI3_TINY = {"preset": "phi3-tiny"}  # model.tokenizer: the preset's, phi-3-mini


@pytest.fixture(scope="module")
def phi3_mix(tmp_path_factory):
    return build_tiny_mix(tmp_path_factory.mktemp("phi3_mix"), tokenizer="phi-3-mini")


def test_phi3_tiny_trains_and_its_checkpoint_loads_in_transformers(phi3_mix, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phi_lib.model import PhiForCausalLM

    cfg = train_config(tmp_path, phi3_mix, "phi3", model=PHI3_TINY, max_steps=4, save_every=4,
                       eval_every=4, warmup_steps=1, global_batch_size=4, lr=5e-3)
    assert cfg.model.tokenizer == "phi-3-mini"
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    Trainer(cfg, out).run()
    train = [r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r]
    assert len(train) == 4 and train[-1] < train[0] - 0.3, train  # from ln(32064) = 10.4 down
    step = out / "checkpoints" / "step-4"
    hf = AutoModelForCausalLM.from_pretrained(step, dtype=torch.float32).eval()
    ours = PhiForCausalLM.from_pretrained(step).eval()
    assert type(hf).__name__ == "Phi3ForCausalLM" and ours.config.num_key_value_heads == 1
    tok = load_tokenizer("phi-3-mini")
    text = " The tokenizer travels with the checkpoint.<|end|>\n"
    assert AutoTokenizer.from_pretrained(step)(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)


def test_data_packed_with_another_tokenizer_is_refused(tiny_mix, tmp_path):  # noqa: F811
    cfg = train_config(tmp_path, tiny_mix, "mismatch", model=PHI3_TINY, max_steps=2)
    out = cfg.run_dir / "05_train"
    prepare(cfg, out)
    with pytest.raises(ValueError, match="packed with the tokenizer 'codegen-350M-mono'.*'phi-3-mini'"):
        Trainer(cfg, out).run()
