"""The annotation app's pure parts and its database layer, without HTTP: label mapping, export,
Cohen's kappa, task import (order randomization and overlap), handout, skip, undo."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batray.annotate.agreement import agreement_summary, cohen_kappa
from batray.annotate.db import Database, Task, add_user
from batray.annotate.labels import HUMAN_PREFERENCES, export, export_rows, helpfulness_to_ab, helpfulness_to_d
from batray.annotate.store import Conflict, NotFound, Store, import_tasks, task_order_and_overlap
from batray.data.schemas import PAIRS, PREFERENCES


def _pairs(path, n, extra=()):
    rows = [
        {"pair_id": f"p{i}", "prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}", "model_a": "m", "model_b": "m"}
        for i in range(n)
    ] + list(extra)
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS), path)
    return str(path)


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'a.db'}")
    yield d
    d.close()


def test_helpfulness_maps_back_to_a_and_b_and_d_follows_it_alone():
    assert helpfulness_to_ab("left_better", left_is_a=True) == "a_better"
    assert helpfulness_to_ab("left_better", left_is_a=False) == "b_better"
    assert helpfulness_to_ab("right_better", left_is_a=True) == "b_better"
    assert helpfulness_to_ab("right_better", left_is_a=False) == "a_better"
    for tie in ("both_good", "both_bad"):
        assert helpfulness_to_ab(tie, True) == helpfulness_to_ab(tie, False) == tie
    assert [helpfulness_to_d(h) for h in ("a_better", "b_better", "both_good", "both_bad")] == [-1, 1, 0, 0]
    with pytest.raises(ValueError):
        helpfulness_to_ab("a_better", True)


def test_cohen_kappa_matches_the_textbook_example():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15 -> p_o = 0.7, p_e = 0.5, kappa = 0.4
    r1 = ["y"] * 25 + ["n"] * 25
    r2 = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(r1, r2) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1: undefined


def test_import_randomizes_order_and_overlap_reproducibly(db, tmp_path):
    uri = _pairs(tmp_path / "pairs.parquet", 400, extra=[{"pair_id": "p3", "prompt": "dup", "response_a": "x", "response_b": "y"},
                                                         {"pair_id": None, "prompt": "no id", "response_a": "x", "response_b": "y"}])
    added, report = import_tasks(db, uri, seed=7, overlap=0.25)
    assert added == 400 and len(report.rejected) == 2  # the duplicate id and the missing id, both reported
    with db.read() as s:
        tasks = s.query(Task).all()
    left_is_a = sum(t.left_is_a for t in tasks)
    doubled = sum(t.needed == 2 for t in tasks)
    assert 150 < left_is_a < 250  # about half shown with a on the left
    assert 60 < doubled < 140  # about a quarter for two annotators
    assert all((t.left_is_a, t.needed) == task_order_and_overlap(t.pair_id, 7, 0.25) for t in tasks)
    assert import_tasks(db, uri, seed=7, overlap=0.25)[0] == 0  # a restart re-imports nothing
    assert {task_order_and_overlap(f"p{i}", 8, 0.25)[0] for i in range(50)} == {True, False}


def test_handout_resume_skip_undo_and_duplicates(db, tmp_path):
    import_tasks(db, _pairs(tmp_path / "pairs.parquet", 3), seed=0, overlap=0.0)
    add_user(db, "alice")
    add_user(db, "bob")
    store = Store(db)
    alice, bob = 1, 2
    t1 = store.next_task(alice)
    assert store.next_task(alice)["task_id"] == t1["task_id"]  # resume: the same task until answered
    assert store.next_task(bob)["task_id"] != t1["task_id"]  # alice's lease keeps it from bob
    store.skip(alice, t1["task_id"])
    t2 = store.next_task(alice)
    assert t2["task_id"] not in (t1["task_id"],)
    store.submit(alice, t2["task_id"], True, True, "both_good", "fine")
    with pytest.raises(Conflict):
        store.submit(alice, t2["task_id"], True, True, "both_good", None)
    with pytest.raises(NotFound):
        store.submit(alice, 999, True, True, "both_good", None)
    undone = store.undo_last(alice)
    assert undone["task_id"] == t2["task_id"] and undone["previous"]["comment"] == "fine"
    assert store.next_task(alice)["task_id"] == t2["task_id"]  # the undone task is current again
    store.submit(alice, t2["task_id"], False, True, "right_better", None)
    # remaining counts tasks still needing a label from alice, leases aside: the skipped one and bob's
    assert store.progress(alice) == {"labeled": 1, "remaining": 2, "total_tasks": 3}
    # only the skipped task is left for alice (bob holds the third): it comes back
    assert store.next_task(alice)["task_id"] == t1["task_id"]
    with pytest.raises(NotFound):
        store.undo_last(bob)


def test_export_maps_left_right_to_a_b_for_both_orders(db, tmp_path):
    import_tasks(db, _pairs(tmp_path / "pairs.parquet", 40), seed=1, overlap=0.0)
    add_user(db, "alice")
    store = Store(db)
    while (task := store.next_task(1)) is not None:
        # alice always prefers the left response and finds only it acceptable
        store.submit(1, task["task_id"], True, False, "left_better", None)
    rows = export_rows(db)
    assert len(rows) == 40
    with db.read() as s:
        order = {t.pair_id: t.left_is_a for t in s.query(Task)}
    assert set(order.values()) == {True, False}
    for row in rows:
        if order[row["pair_id"]]:
            assert (row["d"], row["helpfulness"], row["acceptable_a"], row["acceptable_b"]) == (-1, "a_better", True, False)
        else:
            assert (row["d"], row["helpfulness"], row["acceptable_a"], row["acceptable_b"]) == (1, "b_better", False, True)
    out = tmp_path / "human.parquet"
    assert export(db, str(out)) == 40
    schema = pq.read_table(out).schema
    assert schema.equals(HUMAN_PREFERENCES) and schema.names[: len(PREFERENCES)] == PREFERENCES.names
    assert not any(r["admin_override"] for r in rows)
    assert export(db, str(tmp_path / "human.jsonl")) == 40


def test_agreement_summary_on_doubly_labeled_tasks(db, tmp_path):
    import_tasks(db, _pairs(tmp_path / "pairs.parquet", 4), seed=0, overlap=1.0)
    add_user(db, "alice")
    add_user(db, "bob")
    store = Store(db)
    answers = {1: ["both_good", "both_bad", "left_better", "right_better"], 2: ["both_good", "both_bad", "left_better", "left_better"]}
    for user, helps in answers.items():
        for task_id, h in zip(range(1, 5), helps):
            assert store.next_task(user)["task_id"] == task_id  # handed out in order
            store.submit(user, task_id, True, True, h, None)
    summary = agreement_summary(db)
    with db.read() as s:
        order = {t.id: t.left_is_a for t in s.query(Task)}
    a = [helpfulness_to_ab(h, order[i]) for i, h in zip(range(1, 5), answers[1])]
    b = [helpfulness_to_ab(h, order[i]) for i, h in zip(range(1, 5), answers[2])]
    assert summary["overall"]["tasks"] == 4
    assert summary["overall"]["helpfulness_kappa"] == pytest.approx(cohen_kappa(a, b))
    assert summary["overall"]["helpfulness_agreement"] == pytest.approx(0.75)
    assert summary["pairs"] == [{"annotators": ["alice", "bob"], "tasks": 4, "helpfulness_kappa": pytest.approx(cohen_kappa(a, b))}]
