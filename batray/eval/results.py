"""Accuracy per subject, per category and on average, as the benchmarks' official code computes it.

- Subject accuracy: correct / items of that subject.
- Category accuracy: the mean of its subjects' accuracies (CMMLU's `get_results`; C-Eval's
  leaderboard categories). A CMMLU subject counts in every category it belongs to (the 15 "China
  specific" subjects also count in their discipline's category).
- Average (the official number): the mean over subjects. `weighted_average` (correct / all items)
  is reported beside it, labeled, because it differs when subjects differ in size.
- C-Eval Avg(Hard): the mean over the Hard subjects present.
An unparsable answer (`cot` text naming no option) is wrong and counted separately.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

from batray.eval.subjects import subject_table

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
TABLE_FILE = "table.md"


def aggregate(benchmark: str, rows: list[dict], meta: dict | None = None) -> dict:
    """results.json's content from prediction rows (`subject`, `correct`, `pred`)."""
    table = subject_table(benchmark)
    per: dict[str, dict] = {}
    for r in rows:
        s = per.setdefault(r["subject"], {"n": 0, "correct": 0, "unparsable": 0})
        s["n"] += 1
        s["correct"] += int(bool(r["correct"]))
        s["unparsable"] += int(r.get("pred") is None)
    subjects = {}
    for name in sorted(per):
        s = per[name]
        info = table[name]
        subjects[name] = {"name_zh": info.zh, "categories": list(info.categories), **s,
                          "accuracy": s["correct"] / s["n"] if s["n"] else None}
    accs = {k: v["accuracy"] for k, v in subjects.items() if v["accuracy"] is not None}
    categories = {}
    for cat in table.categories:
        members = [k for k in accs if cat in subjects[k]["categories"]]
        categories[cat] = {
            "accuracy": fmean(accs[k] for k in members) if members else None,
            "subjects": len(members),
            "n": sum(subjects[k]["n"] for k in members),
        }
    n = sum(s["n"] for s in subjects.values())
    correct = sum(s["correct"] for s in subjects.values())
    out = {
        **(meta or {}),
        "benchmark": benchmark,
        "n": n,
        "correct": correct,
        "unparsable": sum(s["unparsable"] for s in subjects.values()),
        "average": fmean(accs.values()) if accs else None,
        "average_definition": "mean over subjects (as the official code)",
        "weighted_average": correct / n if n else None,
        "weighted_average_definition": "correct / items over all subjects",
        "categories": categories,
        "missing_subjects": sorted(set(table.subjects) - set(subjects)),
        "subjects": subjects,
    }
    if benchmark == "ceval":
        hard = [k for k in accs if table[k].hard]
        out["hard"] = {"accuracy": fmean(accs[k] for k in hard) if hard else None, "subjects": len(hard)}
    return out


def write_run(out_dir: str | Path, results: dict, predictions: list[dict], table_md: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / PREDICTIONS_FILE).open("w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / TABLE_FILE).write_text(table_md, encoding="utf-8")
    # results.json last: its presence marks the run complete.
    tmp = out / (RESULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(out / RESULTS_FILE)


def find_results(paths: list[str | Path]) -> list[dict]:
    """Every results.json at or under `paths` (a run folder, an eval folder, a whole run dir)."""
    found: list[dict] = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else ([p / RESULTS_FILE] if (p / RESULTS_FILE).is_file() else sorted(p.rglob(RESULTS_FILE)))
        for f in files:
            data = json.loads(f.read_text(encoding="utf-8"))
            data.setdefault("path", str(f.parent))
            found.append(data)
    return found
