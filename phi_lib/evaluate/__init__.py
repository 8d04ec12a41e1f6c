"""Stage 06: the phi-1.5 benchmark table, with lm-evaluation-harness conventions.

    from phi_lib.evaluate import evaluate_model
    evaluate_model("smollm2", ["arc_easy", "hellaswag"], out_dir="outputs/eval", limit=50)

Or from the shell: `python -m phi_lib eval --model smollm2 --tasks arc_easy --limit 50
--out outputs/eval`. Our models also run under lm-eval itself as `--model phi_workbook`
(see `lm_eval_model.py`).
"""
from phi_lib.evaluate.harness import HEADLINE, evaluate_model, headline, run_task

__all__ = ["evaluate_model", "run_task", "headline", "HEADLINE"]
