"""Stage 08: post-training as Phi-3 did it, SFT then DPO (with TRL), and its effect measured.

The Phi-3 report (sec. 3): "Post-training of phi-3-mini went through two stages, including
supervised finetuning (SFT) and direct preference optimization (DPO). SFT leverages highly
curated high-quality data across diverse domains, e.g., math, coding, reasoning,
conversation, model identity, and safety. [...] DPO data covers chat format data, reasoning,
and responsible AI (RAI) efforts."

Modules, one job each: `chat` (templates and assistant masks), `records` (formats ->
conversations / pairs, malformed ones with a reason), `sources` (read a source, mix by weight),
`synthetic` (generated conversations), `judging` (FastChat's judge rubrics and parsers),
`pairs` (generated, judged preference pairs), `launch` + `train` (the TRL program and how it is
started), `mt_bench`, `measure` (stage 06 and 07 through their commands), `report`, `stage`.
"""
