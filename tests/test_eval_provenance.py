"""Stage 06 provenance, confirmed on the code before the fix (issue 12): a retrained checkpoint
must be re-evaluated, not answered from the per-task results of the old one."""
import os

import torch

from phi_lib.config import EvaluateConfig
from phi_lib.evaluate import evaluate_model


def _checkpoint(run_dir, seed):
    """A random phi-tiny at `05_train/checkpoints/step-1` of `run_dir` (what `checkpoint` names)."""
    from phi_lib.model import PhiConfig, PhiForCausalLM
    from phi_lib.model.checkpoint import save_pretrained

    torch.manual_seed(seed)
    return save_pretrained(PhiForCausalLM(PhiConfig.from_preset("phi-tiny")).eval(),
                           run_dir / "05_train" / "checkpoints" / "step-1")


def test_retrained_checkpoint_is_reevaluated(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "eval"
    ckpt = _checkpoint(run_dir, seed=0)
    cfg = EvaluateConfig(limit=2, device="cpu")
    evaluate_model("checkpoint", ["arc_easy"], out, cfg=cfg, run_dir=run_dir, progress=False)
    before = _lls(out)
    st = (ckpt / "model.safetensors").stat()
    _checkpoint(run_dir, seed=1)  # retrained: same name, same step, same size, other weights
    os.utime(ckpt / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    evaluate_model("checkpoint", ["arc_easy"], out, cfg=cfg, run_dir=run_dir, progress=False)
    assert _lls(out) != before, "the per-task result of the old checkpoint was reused"


def _lls(out):
    import json

    return [json.loads(x)["loglikelihoods"]
            for x in (out / "samples" / "arc_easy.jsonl").read_text().splitlines()]
