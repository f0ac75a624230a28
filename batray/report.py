"""`report.html`: one self-contained page (plots inlined as PNG data URIs) for a recipe run.

For each stage: what went in and came out, time taken, its curves (loss, per-direction loss, reward,
KL ...) from `metrics.jsonl`, the expansion's function-preservation figures, and the evaluation
tables in the paper's layout. Opens from disk; no network, no scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from batray.metrics import read_metrics

# Which metrics each stage's plot shows, by key substring; the first panel is the headline curve.
CURVES = {
    "pretrain": ["loss", "ppl"],
    "grow": ["loss"],
    "sft": ["loss"],
    "reward": ["loss", "acc"],
    "ppo": ["reward", "kl", "ptx", "value_loss", "entropy"],
}
SKIP_KEYS = {"step", "time", "lr", "epoch", "tokens", "tokens_seen", "samples"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_metrics(rows: list[dict], patterns: list[str], title: str) -> str | None:
    """One panel per matched pattern; every numeric series whose name contains it, against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in SKIP_KEYS})
    panels = [(p, [k for k in keys if p in k]) for p in patterns]
    panels = [(p, ks[:6]) for p, ks in panels if ks]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.0), squeeze=False)
    for ax, (pattern, ks) in zip(axes[0], panels):
        for k in ks:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(f"{title}: {pattern}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    src = _png(fig)
    plt.close(fig)
    return src


def markdown_table_to_html(md: str) -> str:
    """Pipe tables (as the eval stage writes them) -> HTML tables; other lines become paragraphs."""
    out, table = [], []

    def flush():
        if not table:
            return
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
        head, body = rows[0], [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
        out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            text = html.escape(line.strip().lstrip("#").strip())
            out.append(f"<h4>{text}</h4>" if line.lstrip().startswith("#") else f"<p>{text}</p>")
    flush()
    return "\n".join(out)


def _kv_table(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v)}</td></tr>"
        for k, v in d.items()
    )
    return f"<table class='kv'>{rows}</table>"


STYLE = """
body{font-family:system-ui,-apple-system,'Noto Sans CJK SC',sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}img{max-width:100%}.muted{color:#777}.kv th{width:16em}
"""


def build_report(run_dir: str | Path, state: dict, out: str | Path | None = None) -> Path:
    """Write `<run_dir>/report.html` from the run state (`stage -> {seconds, inputs, outputs, summary}`)."""
    run = Path(run_dir)
    parts = [f"<h1>batray run report</h1><p class='muted'>{html.escape(str(run.resolve()))}</p>"]
    times = {s: v.get("seconds") for s, v in state.get("stages", {}).items()}
    if times:
        total = sum(t for t in times.values() if t)
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{(t or 0):.1f}</td><td>{html.escape(state['stages'][s].get('status', ''))}</td></tr>"
            for s, t in times.items()
        )
        parts.append(f"<h2>Time per stage</h2><table><tr><th>stage</th><th>seconds</th><th>status</th></tr>{rows}"
                     f"<tr><th>total</th><th>{total:.1f}</th><th></th></tr></table>")
    for stage, info in state.get("stages", {}).items():
        parts.append(f"<h2>{html.escape(stage)}</h2>")
        io_info = {k: info[k] for k in ("inputs", "outputs") if info.get(k)}
        if io_info:
            parts.append(_kv_table(io_info))
        if info.get("summary"):
            parts.append(_kv_table(info["summary"]))
        parts += _stage_figures(run, stage)
    html_doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>batray report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = Path(out) if out else run / "report.html"
    path.write_text(html_doc, encoding="utf-8")
    return path


def _stage_figures(run: Path, stage: str) -> list[str]:
    parts: list[str] = []
    stage_dir = run / stage
    if not stage_dir.is_dir():
        return parts
    patterns = CURVES.get(stage)
    if patterns:
        for metrics in sorted(stage_dir.rglob("metrics.jsonl")):
            rows = read_metrics(metrics)
            rel = metrics.parent.relative_to(run)
            src = plot_metrics(rows, patterns, str(rel)) if rows else None
            if src:
                parts.append(f"<p class='muted'>{html.escape(str(rel))}/metrics.jsonl, {len(rows)} rows</p><img src='{src}'>")
    for png in sorted(stage_dir.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<p class='muted'>{html.escape(png.name)}</p><img src='data:image/png;base64,{data}'>")
    for exp in sorted(stage_dir.rglob("expansion.json")):
        parts.append(f"<h3>Function preservation ({html.escape(str(exp.parent.relative_to(run)))})</h3>")
        parts.append(_kv_table(json.loads(exp.read_text())))
    for md in sorted(stage_dir.rglob("*.md")):
        parts.append(f"<h3>{html.escape(str(md.relative_to(run)))}</h3>" + markdown_table_to_html(md.read_text(encoding="utf-8")))
    return parts
