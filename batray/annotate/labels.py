"""From what an annotator clicked (left/right on screen) to the preferences contract (a/b, d).

The page shows each task's responses in a per-task random order; a label is stored as the
annotator saw it and mapped back to a/b here, so position bias can be measured and undone.
The export is the preferences contract plus one column, `admin_override`: true for a label an admin
gave to a task that was not handed to them (the reward data's provenance stays visible).
"""

from __future__ import annotations

from datetime import UTC

import pyarrow as pa
from sqlalchemy import select

from batray.annotate.db import Database, Label, Task, User
from batray.data.schemas import PREFERENCES

HELPFULNESS_LR = ("left_better", "right_better", "both_good", "both_bad")
HUMAN_PREFERENCES = PREFERENCES.append(pa.field("admin_override", pa.bool_()))


def helpfulness_to_ab(helpfulness_lr: str, left_is_a: bool) -> str:
    """`left_better|right_better|both_good|both_bad` on screen -> `a_better|b_better|both_good|both_bad`."""
    if helpfulness_lr not in HELPFULNESS_LR:
        raise ValueError(f"helpfulness {helpfulness_lr!r} not in {HELPFULNESS_LR}")
    if helpfulness_lr in ("both_good", "both_bad"):
        return helpfulness_lr
    left_wins = helpfulness_lr == "left_better"
    return "a_better" if left_wins == left_is_a else "b_better"


def helpfulness_to_d(helpfulness: str) -> int:
    """The preference d of docs/DESIGN.md §3 from the helpfulness answer alone (y = a, y' = b in Eq. 3).

    a_better -> -1 (a preferred), b_better -> +1 (b preferred), both_good / both_bad -> 0 (equivalent).
    Acceptability is exported beside it untouched: whether an unacceptable response loses to an
    acceptable one is the prefs stage's policy (`prefs.unacceptable_loses`), not the annotation app's.
    """
    return {"a_better": -1, "b_better": 1, "both_good": 0, "both_bad": 0}[helpfulness]


def export_rows(db: Database) -> list[dict]:
    """Every stored label as one preferences row (`source: human`, `rater`: the annotator's name)."""
    rows = []
    with db.read() as s:
        query = select(Label, Task, User.name).join(Task, Label.task_id == Task.id).join(User, Label.user_id == User.id)
        for label, task, rater in s.execute(query.order_by(Label.id)):
            helpfulness = helpfulness_to_ab(label.helpfulness, task.left_is_a)
            acc_a, acc_b = (
                (label.acceptable_left, label.acceptable_right)
                if task.left_is_a
                else (label.acceptable_right, label.acceptable_left)
            )
            rows.append(
                {
                    "pair_id": task.pair_id,
                    "prompt": task.prompt,
                    "response_a": task.response_a,
                    "response_b": task.response_b,
                    "d": helpfulness_to_d(helpfulness),
                    "acceptable_a": acc_a,
                    "acceptable_b": acc_b,
                    "helpfulness": helpfulness,
                    "source": "human",
                    "rater": rater,
                    "confidence": None,
                    "created_at": label.created_at.replace(tzinfo=UTC),
                    "admin_override": bool(label.admin_override),
                }
            )
    return rows


def export(db: Database, out_uri: str) -> int:
    """Write the preferences contract (+ `admin_override`) to `out_uri` (.parquet, or .jsonl); returns the row count."""
    from batray.data.io import write_jsonl, write_parquet

    rows = export_rows(db)
    if out_uri.endswith((".jsonl", ".json")):
        write_jsonl([{**r, "created_at": r["created_at"].isoformat()} for r in rows], out_uri)
    else:
        write_parquet(rows, out_uri, schema=HUMAN_PREFERENCES)
    return len(rows)
