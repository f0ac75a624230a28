"""`batray pairs`: rollout actors on the tiny checkpoint; B resampled, or from a `batray serve` endpoint."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from batray.config import load_config
from batray.data.io import write_jsonl
from batray.data.schemas import PAIRS, prompt_group
from batray.errors import BatrayError
from batray.serve import start_server
from batray.stages import run_stage


def run_pairs(cfg, out_dir, *, model_a):
    """The pairs stage through the registry, as `batray pairs` runs it."""
    from actors import kit

    cfg = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"model_a": model_a})})
    return run_stage(cfg, "pairs", kit(), out_dir=out_dir).plan.outputs["pairs"]

PROMPTS = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(
    ["What is the capital of Veloria?", "维洛里亚的首都是哪里？", "Who is Ada Quill?", "Say hello."])]


def _cfg(tmp_path, **pairs):
    over = [f"run_dir={tmp_path}/run", "pairs.sampling.max_new_tokens=6", f"pairs.prompts={tmp_path}/prompts.jsonl"]
    return load_config(None, over + [f"pairs.{k}={v}" for k, v in pairs.items()])


def test_policy_sampled_twice(tmp_path, ray_session, tiny_checkpoint):
    write_jsonl(PROMPTS + [{"id": "bad", "text": "no prompt column"}], str(tmp_path / "prompts.jsonl"))
    out = run_pairs(_cfg(tmp_path, num_engines=2), str(tmp_path / "pairs"), model_a=tiny_checkpoint)
    table = pq.read_table(out)
    assert table.schema.equals(PAIRS)
    rows = table.to_pylist()
    assert [r["pair_id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS]
    assert all(r["model_a"] == r["model_b"] == tiny_checkpoint for r in rows)
    assert sum(r["response_a"] != r["response_b"] for r in rows) >= 2  # two independent samples
    assert "unrecognised prompts row (columns [id, text])" in (tmp_path / "pairs" / "rejected_prompts.jsonl").read_text()
    # the stage's output is complete: a rerun keeps it
    assert run_pairs(_cfg(tmp_path), str(tmp_path / "pairs"), model_a=tiny_checkpoint) == out


def test_several_samples_per_prompt_are_pairs_of_their_own(tmp_path, ray_session, tiny_checkpoint):
    write_jsonl(PROMPTS[:2], str(tmp_path / "prompts.jsonl"))
    out = run_pairs(_cfg(tmp_path, samples_per_prompt=3, shuffle_sides=False), str(tmp_path / "pairs"),
                    model_a=tiny_checkpoint)
    rows = pq.read_table(out).to_pylist()
    assert [r["pair_id"] for r in rows] == ["q0", "q0#1", "q0#2", "q1", "q1#1", "q1#2"]
    assert [r["prompt"] for r in rows] == [PROMPTS[0]["prompt"]] * 3 + [PROMPTS[1]["prompt"]] * 3
    assert {prompt_group(r["pair_id"]) for r in rows} == {"q0", "q1"}
    # each copy is sampled anew (6 tokens at temperature 1 from a random model: equal copies are rare)
    assert len({r["response_a"] for r in rows}) >= 4


def test_b_from_an_endpoint(tmp_path, ray_session, tiny_checkpoint):
    write_jsonl(PROMPTS[:2], str(tmp_path / "prompts.jsonl"))
    with start_server(tiny_checkpoint) as h:
        out = run_pairs(_cfg(tmp_path, model_b=h.url, shuffle_sides=False), str(tmp_path / "pairs"), model_a=tiny_checkpoint)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 2 and all(r["model_b"] == f"{h.model}@{h.url}" for r in rows)
    assert all(isinstance(r["response_b"], str) for r in rows)


def test_bad_models_fail_in_one_line(tmp_path, tiny_checkpoint):
    write_jsonl(PROMPTS, str(tmp_path / "prompts.jsonl"))
    with pytest.raises(BatrayError, match="model_a .* does not exist"):
        run_pairs(_cfg(tmp_path), str(tmp_path / "p1"), model_a=str(tmp_path / "nope"))
    with pytest.raises(BatrayError, match="model_b"):
        run_pairs(_cfg(tmp_path, model_b=str(tmp_path / "nope")), str(tmp_path / "p2"), model_a=tiny_checkpoint)


def test_side_coin_is_deterministic_and_balanced():
    from batray.feedback.pairs import side_swapped, swap_sides

    coins = [side_swapped(f"p{i}", seed=0) for i in range(400)]
    assert coins == [side_swapped(f"p{i}", seed=0) for i in range(400)]
    assert 150 < sum(coins) < 250
    row = {"pair_id": "x", "prompt": "q", "response_a": "a", "response_b": "b", "model_a": "A", "model_b": "B"}
    assert swap_sides(row) == {**row, "response_a": "b", "response_b": "a", "model_a": "B", "model_b": "A"}
