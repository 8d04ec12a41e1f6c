"""Our models inside lm-evaluation-harness: the `phi_workbook` model type.

Any workbook model name (`checkpoint` with `run_dir=`, a checkpoint dir, `smollm2`, a
`.gguf` file, an HF dir or hub name) loads through `phi_lib.hf_models.load_causal_lm`, so
every lm-eval task runs on it:

    python -m phi_lib.evaluate.lm_eval_model --model phi_workbook \
        --model_args name=outputs/smoke/05_train/checkpoints/step-20 --tasks lambada_openai

or, in Python, ``import phi_lib.evaluate.lm_eval_model`` and then
``lm_eval.simple_evaluate(model="phi_workbook", model_args="name=smollm2", ...)``.
"""
from __future__ import annotations

import sys

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM


@register_model("phi_workbook")
class PhiWorkbookLM(HFLM):
    """lm-eval's HFLM over a model loaded by workbook name (HFLM does all the scoring)."""

    def __init__(self, name: str = "smollm2", run_dir: str | None = None,
                 data_dir: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int | str = 8, **kwargs):
        from phi_lib.hf_models import load_causal_lm

        model, tok = load_causal_lm(name, device=device, dtype=dtype, run_dir=run_dir,
                                    data_dir=data_dir)
        super().__init__(pretrained=model, tokenizer=tok, batch_size=batch_size, **kwargs)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()
