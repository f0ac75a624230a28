"""`batray prefs`: the consolidation policy, rule by rule, and the stage on real files."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from batray.config import load_config
from batray.data.io import write_jsonl, write_parquet
from batray.data.schemas import PREFERENCES
from batray.errors import BatrayError
from batray.feedback.consolidate import Policy, consolidate, label_d
from jobs.prefs import main as prefs_main
from batray.feedback.prefs import run_prefs

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(pid, source, helpfulness, acc_a=True, acc_b=True, rater="r", confidence=None, d=None):
    d = d if d is not None else {"a_better": -1, "b_better": 1}.get(helpfulness, 0)
    return {"pair_id": pid, "prompt": f"q {pid}", "response_a": "a", "response_b": "b", "d": d, "acceptable_a": acc_a,
            "acceptable_b": acc_b, "helpfulness": helpfulness, "source": source, "rater": rater,
            "confidence": confidence, "created_at": T0}


def test_unacceptable_loses_whatever_the_helpfulness():
    r = row("p", "ai", "a_better", acc_a=False, acc_b=True)
    assert label_d(r, Policy(unacceptable_loses=True)) == 1
    assert label_d(r, Policy(unacceptable_loses=False)) == -1
    assert label_d(row("p", "ai", "both_good"), Policy()) == 0
    assert label_d(row("p", "ai", "both_bad", acc_a=False, acc_b=False), Policy()) == 0
    assert label_d(row("p", "ai", None, d=1), Policy()) == 1  # no helpfulness: its own d


def test_human_overrides_ai_and_agreement():
    ai = [row("p1", "ai", "a_better", confidence=0.9), row("p2", "ai", "b_better", confidence=0.8),
          row("p3", "ai", "both_good", confidence=0.7)]
    human = [row("p1", "human", "a_better", rater="ann"), row("p2", "human", "a_better", rater="ann")]
    out, s = consolidate(ai, human, Policy(human_overrides_ai=True))
    by = {(r["pair_id"], r["source"]): r for r in out}
    assert set(by) == {("p1", "human"), ("p2", "human"), ("p3", "ai")}
    assert by[("p2", "human")]["d"] == -1
    assert (s.both_labeled, s.agree, s.overridden) == (2, 1, 2)
    out, s = consolidate(ai, human, Policy(human_overrides_ai=False))
    assert len(out) == 5 and s.overridden == 0


def test_votes_confidence_and_min_confidence():
    ai = [row("p", "ai", "a_better", rater="j1", confidence=0.9), row("p", "ai", "b_better", rater="j2", confidence=0.6),
          row("q", "ai", "a_better", rater="j1", confidence=0.2)]
    humans = [row("t", "human", "a_better", rater="x"), row("t", "human", "b_better", rater="y")]
    out, s = consolidate(ai, humans, Policy(min_confidence=0.5))
    by = {r["pair_id"]: r for r in out}
    assert "q" not in by and s.dropped_low_confidence == 1
    assert by["p"]["d"] == -1 and by["p"]["rater"] == "j1+j2"
    assert by["p"]["confidence"] == pytest.approx(0.9 / 1.5 * 0.9)
    assert by["t"]["d"] == 0  # a balanced human vote is a tie
    assert "ties" in "\n".join(s.lines())


def test_stage_writes_preferences_and_prints_summary(tmp_path, capsys):
    ai = [row(f"p{i}", "ai", h, confidence=0.8, acc_a=i != 3) for i, h in
          enumerate(["a_better", "b_better", "both_good", "a_better"])]
    human = [row("p0", "human", "a_better", rater="ann"), row("p1", "human", "a_better", rater="ann")]
    write_parquet(ai, str(tmp_path / "ai.parquet"), PREFERENCES)
    # JSONL human labels (ISO timestamps) with one broken row: counted and set aside, not fatal
    write_jsonl([{**r, "created_at": r["created_at"].isoformat()} for r in human] + [{"pair_id": "x", "d": 7}],
                str(tmp_path / "human.jsonl"))
    cfg = load_config(None, [f"run_dir={tmp_path}/run"])
    out = run_prefs(cfg, str(tmp_path / "prefs"), ai=str(tmp_path / "ai.parquet"), human=str(tmp_path / "human.jsonl"))
    table = pq.read_table(out)
    assert table.schema.equals(PREFERENCES)
    got = {r["pair_id"]: r for r in table.to_pylist()}
    assert {k: v["d"] for k, v in got.items()} == {"p0": -1, "p1": -1, "p2": 0, "p3": 1}
    assert got["p1"]["source"] == "human" and got["p3"]["source"] == "ai"
    text = capsys.readouterr().out
    assert "human/AI agreement on 2 pairs labeled by both: 50%" in text
    assert (tmp_path / "prefs" / "rejected_human.jsonl").is_file()


def test_stage_needs_some_labels(tmp_path):
    with pytest.raises(BatrayError, match=r"ai_labels .*label/ai.parquet' does not exist \(output of label\); run `batray label` first"):
        prefs_main([f"run_dir={tmp_path}/run"])  # label is in the recipe's stages: its output is expected
    with pytest.raises(BatrayError, match="no labels"):
        prefs_main([f"run_dir={tmp_path}/run", "stages=[data,prefs]"])
