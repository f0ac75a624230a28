"""`report.html` and `report.json`: what a recipe run showed, measured (issue 19).

The page opens with the headline table (`batray.measure`): one row per stage's claim, measured on
data that stage never trained on, with its baseline, its figure and 95% interval, and whether it held.
Then one section per stage: its inputs and outputs (paths), time, summary, the measurements behind
its headline row as tables, and its plots (loss per direction, PPO's reward/KL/entropy per step, the
reward model's calibration, Algorithm 1's loss against compute), all inlined as PNG data URIs. Opens
from disk: no network, no scripts. Every value is rendered as text or a table, never as JSON.
`report.json` holds the same figures for scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from batray.metrics import read_metrics

# Panels of each stage's metrics plot: (title, key substrings); a key matches when it holds any of them.
CURVES = {
    "pretrain": [("loss per direction", ["loss_l2r", "loss_r2l"]), ("loss", ["loss"])],
    "grow": [("loss per direction", ["loss_l2r", "loss_r2l"]), ("loss", ["loss"])],
    "sft": [("loss", ["loss"])],
    "reward": [("loss", ["loss"]), ("accuracy", ["acc"])],
    "ppo": [("reward", ["reward"]), ("KL to the reference", ["kl"]), ("entropy", ["entropy"]),
            ("losses", ["policy_loss", "value_loss", "ptx"])],
}
SKIP_KEYS = {"step", "time", "lr", "epoch", "tokens", "tokens_seen", "samples"}
PAPER = {"data": "", "pretrain": "§3.1, Eq. 1", "grow": "Alg. 1", "expand": "§3.4, Eqs. 5-7", "sft": "§3.2, Eq. 2",
         "pairs": "§3.3", "label": "§3.3", "prefs": "§3.3", "reward": "§3.3, Eq. 3", "ppo": "§3.3, Eq. 4",
         "eval": "§4, Tables 1-3"}


def esc(x) -> str:
    return html.escape(str(x))


def fmt(v) -> str:
    """A scalar as short text: floats to 4 significant digits, None as a dash."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def value_html(v, depth: int = 0) -> str:
    """Any value as HTML: dicts as two-column tables, lists of dicts as tables, other lists joined."""
    if isinstance(v, dict):
        if not v:
            return "<span class='muted'>none</span>"
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{value_html(x, depth + 1)}</td></tr>" for k, x in v.items())
        return f"<table class='kv'>{rows}</table>"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return rows_table(list(v))
        return esc(", ".join(fmt(x) for x in v)) if v else "<span class='muted'>none</span>"
    if isinstance(v, str) and ("/" in v or "\\" in v) and " " not in v:
        return f"<code>{esc(v)}</code>"
    return esc(fmt(v))


def rows_table(rows: list[dict], columns: list[str] | None = None) -> str:
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{value_html(r.get(c), 1)}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: list[dict], panels: list[tuple[str, list[str]]], title: str) -> str | None:
    """One panel per (title, patterns) that matches a numeric series; each matched series against step."""
    plt = _pyplot()
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k not in SKIP_KEYS})
    used: set[str] = set()
    found = []
    for name, patterns in panels:
        ks = [k for k in keys if any(p in k for p in patterns) and k not in used]
        if ks:
            used.update(ks)
            found.append((name, ks[:6]))
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.0), squeeze=False)
    for ax, (name, ks) in zip(axes[0], found):
        for k in ks:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and "step" in r]
            if pts:
                ax.plot(*zip(*pts), label=k, marker="." if len(pts) < 30 else None)
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    src = _png(fig)
    plt.close(fig)
    return src


def plot_calibration(rows: list[dict]) -> str | None:
    """Reward-model calibration: observed pairwise accuracy per |reward gap| bin against sigmoid(|gap|)."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    x = [r["mean_gap"] for r in rows]
    ax.plot(x, [r["accuracy"] for r in rows], marker="o", label="observed accuracy")
    ax.plot(x, [r["p_bt"] for r in rows], marker="x", linestyle="--", label="sigmoid(|gap|) (Bradley-Terry)")
    for r in rows:
        ax.annotate(str(r["pairs"]), (r["mean_gap"], r["accuracy"]), fontsize=7, textcoords="offset points",
                    xytext=(3, 3))
    ax.set_xlabel("mean |reward gap| in the bin")
    ax.set_ylabel("share right")
    ax.set_ylim(0, 1.05)
    ax.set_title("reward model calibration (held-out pairs; labels: pairs per bin)", fontsize=9)
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
        out.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr>")
        out.extend("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            text = esc(line.strip().lstrip("#").strip())
            out.append(f"<h4>{text}</h4>" if line.lstrip().startswith("#") else f"<p>{text}</p>")
    flush()
    return "\n".join(out)


STYLE = """
body{font-family:system-ui,-apple-system,'Noto Sans CJK SC',sans-serif;margin:1.2em auto;max-width:1200px;color:#222}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}img{max-width:100%}.muted{color:#777}.kv th{width:13em;font-weight:normal}
table.headline caption{text-align:left;font-size:1.5em;font-weight:bold;padding:.3em 0}
table.headline td.held{background:#e3f4e3;font-weight:bold}table.headline td.failed{background:#fbe1e1;font-weight:bold}
table.headline td.none{background:#eee}code{font-size:.9em;word-break:break-all}
"""

VERDICT = {True: ("held", "held"), False: ("did not hold", "failed"), None: ("not measured", "none")}


def headline_html(rows: list[dict], run: Path) -> str:
    held = sum(r["held"] is True for r in rows)
    caption = (f"batray run report: {held} of {len(rows)} claims held "
               f"<span class='muted' style='font-size:.6em;font-weight:normal'>({esc(run.resolve())}; "
               "every figure on data the stage never trained on; 95% intervals)</span>")
    head = "".join(f"<th>{c}</th>" for c in ("stage", "claim", "measurement", "baseline", "figure (95% CI)", "verdict"))
    body = []
    for r in rows:
        text, css = VERDICT[r["held"]]
        note = f"<br><span class='muted'>{esc(r['note'])}</span>" if r.get("note") else ""
        body.append(f"<tr><td>{esc(r['stage'])}</td><td>{esc(r['claim'])}</td><td>{esc(r['measurement'])}</td>"
                    f"<td>{esc(r['baseline'])}</td><td>{esc(r['figure'])}</td><td class='{css}'>{text}{note}</td></tr>")
    return f"<table class='headline'><caption>{caption}</caption><tr>{head}</tr>{''.join(body)}</table>"


def build_report(run_dir: str | Path, state: dict, measurements: dict | None = None,
                 out: str | Path | None = None) -> Path:
    """Write `<run_dir>/report.html` and `report.json` from the run state (`stage -> {seconds, inputs,
    outputs, summary}`) and the measurements (`batray.measure.measure_run`)."""
    run = Path(run_dir)
    measurements = measurements or {"headline": [], "stages": {}}
    stages = state.get("stages", {})
    parts = [headline_html(measurements["headline"], run)]
    times = {s: v.get("seconds") for s, v in stages.items()}
    if times:
        total = sum(t for t in times.values() if t)
        rows = "".join(f"<tr><td>{esc(s)}</td><td>{(t or 0):.1f}</td><td>{esc(stages[s].get('status', ''))}</td></tr>"
                       for s, t in times.items())
        parts.append(f"<h2>Time per stage</h2><table><tr><th>stage</th><th>seconds</th><th>status</th></tr>{rows}"
                     f"<tr><th>total</th><th>{total:.1f}</th><th></th></tr></table>")
    for stage, info in stages.items():
        parts.append(f"<h2>{esc(stage)} <span class='muted'>{esc(PAPER.get(stage, ''))}</span></h2>")
        io_rows = [{"": kind, "name": k, "path": v} for kind in ("inputs", "outputs")
                   for k, v in (info.get(kind) or {}).items()]
        if io_rows:
            parts.append("<h3>Inputs and outputs</h3>" + rows_table(io_rows))
        claims = [r for r in measurements["headline"] if r["stage"] == stage or (stage == "grow" and r["stage"] == "pretrain")]
        if claims:
            parts.append("<h3>Measured</h3>" + rows_table(
                [{"claim": r["claim"], "figure": r["figure"], "verdict": VERDICT[r["held"]][0]} for r in claims]))
        parts += _measurement_parts(stage, measurements["stages"].get(stage, {}))
        if info.get("summary"):
            parts.append("<h3>Summary</h3>" + value_html(info["summary"]))
        parts += _stage_figures(run, stage)
    html_doc = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>batray report</title>"
                f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(out) if out else run / "report.html"
    path.write_text(html_doc, encoding="utf-8")
    doc = {"run_dir": str(run.resolve()), "headline": measurements["headline"], "stages": measurements["stages"],
           "seconds": times, "total_seconds": sum(t for t in times.values() if t)}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return path


def _ci(m: dict | None, digits: int = 3, percent: bool = False) -> str:
    if not m or m.get("value") is None:
        return "-"
    k = 100 if percent else 1
    unit = "%" if percent else ""
    count = f" ({m['k']}/{m['n']})" if "k" in m else f" (n={m['n']})"
    return f"{k * m['value']:.{digits}f}{unit} [{k * m['low']:.{digits}f}, {k * m['high']:.{digits}f}]{count}"


def _measurement_parts(stage: str, d: dict) -> list[str]:
    """The figures behind a stage's headline rows, as tables (and the calibration plot)."""
    parts: list[str] = []
    if stage in ("pretrain", "grow") and d.get("direction_loss"):
        rows = [{"direction": k, "at initialization": _ci(v["init"]), "trained": _ci(v["final"])}
                for k, v in d["direction_loss"].items()]
        parts.append(f"<p>Held-out loss (nats/token) on {d['held_out_texts']} corpus texts never trained on:</p>"
                     + rows_table(rows))
        if d.get("stacked_vs_scratch"):
            s = d["stacked_vs_scratch"]
            parts.append(rows_table([{"stacked (Alg. 1)": _ci(s["stacked"]), "from scratch": _ci(s["scratch"]),
                                      "stacked - scratch": _ci(s["difference"]),
                                      "compute grown / scratch": fmt(s.get("compute_ratio"))}]))
    if stage == "expand" and d.get("deviation"):
        parts.append(rows_table([{"source": d.get("source"), "target": d.get("target"), **d["deviation"]}]))
    if stage == "sft" and d.get("figures"):
        rows = [{"model": k, "accuracy": _ci(v["accuracy"], 1, True), "wrong": v["wrong"], "unanswered": v["unanswered"],
                 "ends with end-of-turn": _ci(v["ends_with_eot"], 1, True),
                 "names the subject asked": _ci(v["names_subject"], 1, True),
                 "holds the fact (likeliest corpus sentence)": _ci(v["knows_fact"], 1, True)}
                for k, v in d["figures"].items()]
        parts.append(rows_table(rows))
        for name, ex in d.get("examples", {}).items():
            parts.append(f"<p class='muted'>examples, {esc(name)} SFT</p>" + rows_table(ex))
    if stage == "reward" and d.get("accuracy"):
        parts.append(rows_table([{"held-out strict pairs": d["accuracy"]["n"], "accuracy": _ci(d["accuracy"], 1, True),
                                  "ties": d.get("ties"), "tie accuracy": d.get("tie_accuracy")}]))
        if d.get("calibration"):
            parts.append("<p>Calibration by |reward gap| bin:</p>" + rows_table(d["calibration"]))
            src = plot_calibration(d["calibration"])
            if src:
                parts.append(f"<img src='{src}' alt='reward model calibration'>")
    if stage == "ppo" and d.get("accuracy_sft"):
        rows = [{"policy": "SFT (start, reference)", "mean reward": _ci(d.get("reward_sft")),
                 "accuracy": _ci(d["accuracy_sft"], 1, True)},
                {"policy": "PPO", "mean reward": _ci(d.get("reward_ppo")), "accuracy": _ci(d["accuracy_ppo"], 1, True)}]
        parts.append(f"<p>{d['prompts']} held-out questions x {d['samples_per_prompt']} samples each; "
                     f"reward rise {esc(_ci(d.get('reward_rise')))}; KL(PPO || SFT) per token "
                     f"{esc(_ci(d.get('kl_per_token')))}</p>" + rows_table(rows))
    if stage == "eval":
        rows = []
        for bench, models in (d.get("demo") or {}).items():
            for label, runs in models.items():
                for key, p in runs.items():
                    rows.append({"benchmark": f"demo {bench}", "model": label, "setting": key, "accuracy": _ci(p, 1, True)})
        for label, p in (d.get("real_cmmlu") or {}).items():
            rows.append({"benchmark": "real CMMLU sample", "model": label, "setting": "da_0shot", "accuracy": _ci(p, 1, True)})
        if rows:
            parts.append("<p>Accuracy with Wilson 95% intervals (chance: 25%):</p>" + rows_table(rows))
    return parts


def _stage_figures(run: Path, stage: str) -> list[str]:
    parts: list[str] = []
    stage_dir = run / stage
    if not stage_dir.is_dir():
        return parts
    panels = CURVES.get(stage)
    if panels:
        for metrics in sorted(stage_dir.rglob("metrics.jsonl")):
            rows = read_metrics(metrics)
            rel = metrics.parent.relative_to(run)
            src = plot_metrics(rows, panels, str(rel)) if rows else None
            if src:
                parts.append(f"<p class='muted'>{esc(rel)}/metrics.jsonl, {len(rows)} rows</p><img src='{src}'>")
    for png in sorted(stage_dir.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<p class='muted'>{esc(png.relative_to(run))}</p><img src='data:image/png;base64,{data}'>")
    for md in sorted(stage_dir.glob("*.md")):
        parts.append(f"<h3>{esc(md.relative_to(run))}</h3>" + markdown_table_to_html(md.read_text(encoding="utf-8")))
    return parts
