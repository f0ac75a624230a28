"""Markdown tables in the paper's layouts (§4), accuracies in percent with two decimals.

- Table 1 (CMMLU): a row per model and setting; STEM, Humanities, Social Science, Other, China
  specific, Average.
- Table 2: direct answer vs chain of thought, the average of each, per model, benchmark and shots.
- Table 3 (C-Eval): STEM, Social Science, Humanities, Other, Average, Avg(Hard).
"""

from __future__ import annotations

from batray.eval.subjects import subject_table

TITLES = {"cmmlu": "Table 1: CMMLU", "ceval": "Table 3: C-Eval"}


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def setting(r: dict) -> str:
    return f"{r['shots']}-shot {r['mode'].upper()}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _order(results: list[dict]) -> list[dict]:
    # 5-shot before zero-shot (the paper's order), then the mode, then the model as given.
    return sorted(results, key=lambda r: (-r["shots"], r["mode"]))


def category_table(results: list[dict], benchmark: str) -> str:
    """Table 1 (CMMLU) or Table 3 (C-Eval) with a row per result."""
    cats = list(subject_table(benchmark).categories)
    header = ["Model", "Setting", *cats, "Average"] + (["Avg(Hard)"] if benchmark == "ceval" else [])
    rows = []
    for r in _order([r for r in results if r["benchmark"] == benchmark]):
        row = [r["model_label"], setting(r), *(pct(r["categories"][c]["accuracy"]) for c in cats), pct(r["average"])]
        if benchmark == "ceval":
            row.append(pct(r.get("hard", {}).get("accuracy")))
        rows.append(row)
    return f"**{TITLES[benchmark]}** (accuracy %, average = mean over subjects)\n\n" + _md(header, rows)


def da_vs_cot_table(results: list[dict]) -> str | None:
    """Table 2: the averages of DA and COT side by side, where both were run."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in results:
        by_key.setdefault((r["model_label"], r["benchmark"], r["shots"]), {})[r["mode"]] = r
    rows = []
    for (label, bench, shots), modes in by_key.items():
        if "da" in modes and "cot" in modes:
            cot = modes["cot"]
            rows.append([label, bench.upper().replace("CEVAL", "C-Eval"), f"{shots}-shot", pct(modes["da"]["average"]),
                         pct(cot["average"]), str(cot.get("unparsable", 0))])
    if not rows:
        return None
    header = ["Model", "Benchmark", "Shots", "DA", "COT", "COT unparsable"]
    return "**Table 2: direct answer (DA) vs chain of thought (COT)** (average accuracy %)\n\n" + _md(header, rows)


def render(results: list[dict]) -> str:
    """Every table the results allow, in the paper's order."""
    benches = {r["benchmark"] for r in results}
    parts = [
        category_table(results, "cmmlu") if "cmmlu" in benches else None,
        da_vs_cot_table(results),
        category_table(results, "ceval") if "ceval" in benches else None,
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
