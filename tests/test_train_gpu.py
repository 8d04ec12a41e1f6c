"""Stage 05 on CUDA: bf16 and fp16 (dynamic loss scaling) steps of the single-process engine."""
import pytest
import torch

from phi_lib.train.loop import Trainer
from phi_lib.train.metrics import read_metrics
from test_train_fixtures import tiny_mix, train_config  # noqa: F401 - fixture

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_gpu(tiny_mix, tmp_path, precision):  # noqa: F811
    cfg = train_config(tmp_path, tiny_mix, precision, precision=precision, max_steps=8)
    cfg.train.peak_tflops = None  # the datasheet peak of this GPU
    out = cfg.run_dir / "05_train"
    Trainer(cfg, out).run()
    recs = read_metrics(out / "metrics.jsonl")
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    if precision == "fp16":
        assert recs[0]["loss_scale"] == 2.0**16
    assert 0 < recs[-1]["mfu"] < 1
