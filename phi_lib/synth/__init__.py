"""Stage 01: synthetic textbooks and exercises (phi-1 sec. 2.2, phi-1.5 sec. 2).

    topics = synth.load_topics(cfg.synth, seed=cfg.run.seed, backend=backend)
    specs = synth.build_prompts(cfg.synth, topics, cfg.run.seed)
    summary = synth.Synthesizer(cfg, out, backend).run(specs)
    report = synth.diversity_report(cfg, out, topics, summary)
    synth.write_stage_manifest(cfg, out, summary, report)
"""
from __future__ import annotations

from pathlib import Path

from phi_lib.synth.generate import SynthSummary, Synthesizer, read_samples, summarize
from phi_lib.synth.prompts import KINDS, PromptSpec, build_prompt, build_prompts
from phi_lib.synth.report import DiversityReport, diversity_report
from phi_lib.synth.topics import Topic, load_topics, seed_taxonomy

__all__ = ["KINDS", "PromptSpec", "SynthSummary", "Synthesizer", "Topic", "DiversityReport",
           "build_prompt", "build_prompts", "diversity_report", "load_topics", "read_samples",
           "seed_taxonomy", "summarize", "topics_table", "prompts_table", "write_stage_manifest"]


def topics_table(topics: list[Topic]):
    """Topics per (group, subject, origin) as a DataFrame."""
    import pandas as pd

    df = pd.DataFrame([{"group": t.group, "subject": t.subject, "origin": t.origin} for t in topics])
    return df.value_counts().rename("topics").reset_index()


def prompts_table(specs: list[PromptSpec], n: int = 6):
    """The first `n` prompts of each kind as a DataFrame."""
    import pandas as pd

    rows, seen = [], {}
    for s in specs:
        if seen.get(s.kind, 0) < n:
            seen[s.kind] = seen.get(s.kind, 0) + 1
            rows.append({"id": s.id, "topic": s.topic, "audience": s.audience, "style": s.style,
                         "function": s.function_name or "", "prompt": s.prompt[:160]})
    return pd.DataFrame(rows)


def write_stage_manifest(cfg, out: Path, summary: SynthSummary, report: DiversityReport,
                         topics: list[Topic]) -> dict:
    """`01_synthesize/manifest.json`: counts and tokens per kind, diversity metrics, figures."""
    from phi_lib.io import write_manifest
    from phi_lib.sandbox import isolation_report

    # the walls the exercise checks run behind (None: this stage runs no code)
    ran = cfg.synth.check_exercises and summary.generated.get("code_exercises", 0)
    sandbox = isolation_report(cfg.synth.sandbox_isolation) if ran else None

    counts: dict[str, int] = {"topics": len(topics), "corrupt_records": summary.corrupt}
    metrics: dict[str, float] = {}
    for kind in summary.generated:
        counts[f"{kind}/generated"] = summary.generated[kind]
        counts[f"{kind}/kept"] = summary.kept[kind]
        for reason, n in summary.dropped[kind].items():
            counts[f"{kind}/dropped/{reason}"] = n
        metrics[f"{kind}/tokens"] = summary.tokens[kind]
        metrics[f"{kind}/chars"] = summary.chars[kind]
    metrics["tokens"] = sum(summary.tokens.values())
    metrics["keep_rate"] = (sum(summary.kept.values()) / max(sum(summary.generated.values()), 1))
    metrics["generation_tokens_per_s"] = summary.new_tokens / summary.seconds if summary.seconds else 0.0
    metrics.update({k: v for k, v in report.metrics.items() if not k.endswith("/kept")})
    return write_manifest(out, cfg, "01", metrics=metrics, counts=counts, figures=report.figures,
                          timings={"generate_s": round(summary.seconds, 2)},
                          cached_completions=summary.cached, sandbox=sandbox)
