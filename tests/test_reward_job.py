"""`batray reward` end to end on Ray Train: demo-world preferences, held-out accuracy, the saved
checkpoint, skip when complete, and exact resume after a crash."""

from __future__ import annotations

import json
import random

import pytest
from faults import FailBeforeStep

from batray import hooks
from batray.checkpoint import read_marker
from batray.config import DemoDataConfig, load_config
from batray.data.demo import build_world, render
from batray.data.demo_text import TEMPLATES
from batray.metrics import read_metrics


def demo_world_preferences(n_entities: int = 8, distractors: int = 3, tie_every: int = 0, seed: int = 0) -> list[dict]:
    """Oracle preferences over the demo world: for every fact, the right answer against `distractors`
    wrong ones (each pair in random order, d by docs/DESIGN.md §3), plus a tie of two wrong answers every
    `tie_every` facts. A held-out pair pits a known right answer against a wrong one never seen with it,
    so ranking it takes what the model learned about the fact, not the pair."""
    world = build_world(DemoDataConfig(num_countries=n_entities, num_people=n_entities))
    rng = random.Random(seed)
    rows = []
    for i, f in enumerate(world.facts.values()):
        t = TEMPLATES[f.relation]
        gold = f.object
        if isinstance(gold, int):
            pool = [gold + k for k in (-30, -17, -9, -4, 3, 8, 14, 25)]
        else:
            pool = [e.id for e in world.of_type(world.entities[gold].type) if e.id != gold]
        wrong = rng.sample(pool, min(len(pool), distractors + 1))  # a world may have only 4 languages
        answer = lambda obj: render(world, t["answer"]["en"][0], f.subject, obj, "en")  # noqa: E731
        for j, obj in enumerate(wrong[:distractors]):
            question = render(world, rng.choice(t["ask"]["en"]), f.subject, None, "en")
            a_wins = rng.random() < 0.5
            a, b = (answer(gold), answer(obj)) if a_wins else (answer(obj), answer(gold))
            rows.append({"pair_id": f"{f.id}:{j}", "prompt": question, "response_a": a, "response_b": b,
                         "d": -1 if a_wins else 1, "source": "ai", "rater": "oracle"})
        if tie_every and i % tie_every == 0:
            question = render(world, t["ask"]["en"][0], f.subject, None, "en")
            rows.append({"pair_id": f"{f.id}:tie", "prompt": question, "response_a": answer(wrong[-1]),
                         "response_b": answer(wrong[0]), "d": 0, "source": "ai", "rater": "oracle"})
    return rows


def write_prefs(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def reward_cfg(run_dir, *extra):
    return load_config(None, [
        f"run_dir={run_dir}", "model.vocab_size=400", "reward.seq_len=64", "reward.micro_batch_size=16",
        "reward.optim.lr=3e-3", "reward.optim.schedule=constant", "reward.log_every=10", "reward.eval_every=40",
        "reward.ckpt_every=100", "reward.eval_batches=2", *extra,
    ])


def test_reward_on_demo_world_preferences_beats_chance_on_held_out_pairs(ray_session, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from batray.reward.stage import run_reward, summary

    data = write_prefs(tmp_path / "prefs.jsonl", demo_world_preferences(n_entities=16, tie_every=4))
    cfg = reward_cfg(tmp_path / "run", "reward.max_steps=320", "reward.eval_every=80", "reward.held_out_fraction=0.25")
    out = tmp_path / "run" / "reward"
    final = run_reward(cfg, str(out), init_from="batgpt-tiny", data=data)

    meta = read_marker(final)
    held = meta["reward_stats"]["held_out"]
    assert meta["stage"] == "reward" and meta["step"] == 320
    assert held["strict_pairs"] >= 60
    # Clearly above chance, with a bar set from the spread over seeds, since the trajectory differs between
    # CPUs like a change of seed: 8 entities (33 held-out pairs) gave 0.64-0.79 over seeds 0-4 at 240 and
    # at 400 steps (one CPU failed the former 0.72 bar at seed 0, 23/33), sampling noise of 33 pairs. With
    # 16 entities, 67 pairs: 0.687-0.746 over seeds 0-3 (46-50 of 67). The bar, 43 of 67, is 3 pairs under
    # the lowest and P(>= 43 of 67 | coin) ~ 0.01.
    assert held["accuracy"] >= 0.64, summary(final)
    assert held["ties"] > 0 and held["tie_accuracy"] is not None
    assert sum(row["pairs"] + row["ties"] for row in held["calibration"]) == held["pairs"]
    stats = json.loads((out / "final" / "reward_stats.json").read_text())
    assert stats["mean"] == held["reward_mean"] and stats["std"] == held["reward_std"] > 0
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 1

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(10, 321, 10))
    for r in rows:  # Eq. 3 with its constant tie term = without it, weighted by the strict share
        assert r["loss"] == pytest.approx(r["loss_eq3"])
        assert r["loss_eq3"] == pytest.approx(r["tie_share"] * 1.0 + (1 - r["tie_share"]) * r["loss_eq3_strict"], rel=1e-4)
    assert 0 < rows[0]["tie_share"] < 0.2
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert "eval_accuracy" in rows[7] and "eval_tie_accuracy" in rows[7]  # step 80
    assert (out / "tb").is_dir()
    assert run_reward(cfg, str(out), init_from="batgpt-tiny", data=data) == final  # complete: skipped
    assert read_marker(final)["saved_at"] == meta["saved_at"]


# Opt-in (-m slow): three Ray Train launches (~95 s). The reward job trains through the same loop and
# checkpoint code as pretraining, whose exact resume (2 workers, ZeRO-2) runs in the default suite.
@pytest.mark.slow
def test_reward_resumes_exactly_after_a_crash(ray_session, tmp_path):
    """Rao-Kupper ties, so the learned threshold is checkpointed and restored with the model."""
    from batray.train import TrainingFailed
    from batray.reward.stage import run_reward

    data = write_prefs(tmp_path / "prefs.jsonl", demo_world_preferences(n_entities=4, distractors=2, tie_every=2))
    extra = ("reward.max_steps=8", "reward.micro_batch_size=8", "reward.log_every=1", "reward.eval_every=100",
             "reward.ckpt_every=3", "reward.tie_loss=rao_kupper", "reward.held_out_fraction=0.1")
    ref = run_reward(reward_cfg(tmp_path / "ref", *extra), str(tmp_path / "ref" / "reward"), init_from="batgpt-tiny",
                     data=data)
    cfg = reward_cfg(tmp_path / "crash", *extra)
    out = str(tmp_path / "crash" / "reward")
    with pytest.raises(TrainingFailed, match="rerun the same command"), hooks.on(hooks.TRAIN_BEFORE_STEP, FailBeforeStep(5)):
        run_reward(cfg, out, init_from="batgpt-tiny", data=data)
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    final = run_reward(cfg, out, init_from="batgpt-tiny", data=data)

    ref_rows, rows = read_metrics(tmp_path / "ref" / "reward"), read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for a, b in zip(ref_rows, rows):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["theta"] == pytest.approx(a["theta"], rel=1e-5)
    theta = read_marker(final)["reward_stats"]["theta"]
    assert theta == pytest.approx(read_marker(ref)["reward_stats"]["theta"], rel=1e-5) and theta != 0.25
