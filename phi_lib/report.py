"""The end-of-run report: one page with each stage's status, metrics and figures.

Built only from files: each stage's ``manifest.json`` (see ``phi_lib.io.write_manifest``).
A stage that is not built or did not run says so; nothing is invented.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from phi_lib.io import atomic_write_text, read_json
from phi_lib.stages import STAGES


def collect_metrics(run_dir: Path) -> dict[str, float]:
    """Flat `{"<NN_stage>/<metric>": value}` over every stage manifest of a run."""
    out: dict[str, float] = {}
    for stage in STAGES.values():
        man = Path(run_dir) / stage.dirname / "manifest.json"
        if man.is_file():
            for k, v in (read_json(man).get("metrics") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{stage.dirname}/{k}"] = v
    return out


def stage_rows(cfg, statuses: Optional[list] = None) -> list[dict]:
    """One row per stage: status (from this run's statuses, else from disk), time, detail."""
    by_stage = {s.stage: s for s in statuses or []}
    rows = []
    for number, stage in STAGES.items():
        st = by_stage.get(number)
        seconds = round(st.seconds, 1) if st and st.seconds else None
        detail = st.detail.splitlines()[0] if st and st.detail else ""
        if not stage.built:
            status = "not built yet"
        elif st is not None and st.status != "not selected":
            status = st.status
        else:  # from disk: a stage this invocation did not run may have gone stale
            reasons = stage.stale_reasons(cfg)
            status = "done" if not reasons else "not run" if reasons == ["not run"] else "stale"
            if status == "stale":
                detail = "changed: " + ", ".join(reasons[:6])
        rows.append({"stage": stage.dirname, "status": status, "seconds": seconds,
                     "detail": detail})
    return rows


def write_report(cfg, statuses: Optional[list] = None) -> Path:
    """Write `<run>/report.md` and `report.html`; returns the markdown path."""
    run_dir = cfg.run_dir
    md = [f"# Run `{cfg.run.name}`", "",
          f"Params: `{cfg.params_file or '(dict)'}` - config hash `{cfg.hash()}`", "",
          "| stage | status | time (s) | detail |", "|---|---|---|---|"]
    sections = []
    for row in stage_rows(cfg, statuses):
        secs = "" if row["seconds"] is None else f"{row['seconds']:.1f}"
        md.append(f"| {row['stage']} | {row['status']} | {secs} | {row['detail']} |")
        man_path = run_dir / row["stage"] / "manifest.json"
        if man_path.is_file():
            sections.append(_stage_section(row["stage"], read_json(man_path)))
    md += [""] + sum(sections, [])
    text = "\n".join(md) + "\n"
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    atomic_write_text(run_dir / "report.html", _to_html(cfg.run.name, text))
    return path


def _stage_section(dirname: str, man: dict) -> list[str]:
    out = [f"## {dirname}", ""]
    if man.get("metrics"):
        out += ["| metric | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in man["metrics"].items()]
        out.append("")
    if man.get("counts"):
        out += ["| count | value |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in man["counts"].items()]
        out.append("")
    for fig in man.get("figures", []):
        out += [f"![{fig}]({dirname}/{fig})", ""]
    return out


def _fmt(v) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _to_html(title: str, md_text: str) -> str:
    """A dependency-free rendering of the report's markdown (headings, tables, images)."""
    body, in_table = [], False
    for line in md_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            body.append(f'<img src="{html.escape(src)}" style="max-width:720px">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")
