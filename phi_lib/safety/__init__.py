"""Stage 07: the phi-1.5 safety measurements (Li et al. 2023, sec. 6 / Figure 2).

* ToxiGen safety score (Hosseini et al. 2023): per demographic group, how much less likely a
  model finds toxic statements than benign ones (`toxigen`, `safety_score`, `perplexity`).
* Adversarial prompts: leading prompts (`data/adversarial_prompts.jsonl`), completions with
  stop rules (`probes`), graded pass / fail / did not understand by an LLM judge (`judge`)
  and by hand (`grader`), counted and compared (`report`).

`stage` holds the calls the notebook makes.
"""
