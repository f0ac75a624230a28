"""`batray experiment hallucination` (issue 11): the measure on a demo world, and the whole experiment
end to end at tiny step counts (two models trained with Ray Train, both decodings, the table)."""

from __future__ import annotations

import json

import pytest

from batray.bidirectional.hallucination import Tally, format_table, load_questions, measure
from batray.config import DemoDataConfig
from batray.data.demo import generate_demo
from batray.data.world import World
from batray.errors import DataError
from batray.models.presets import load_causal_lm
from batray.models.tokenizer import load_tokenizer
from batray.rollout.engine import SamplingParams

SMALL_WORLD = DemoDataConfig(num_countries=4, num_people=4, corpus_repeats=1, held_out_share=0.3, unseen_share=0.3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(str(tmp_path_factory.mktemp("demo")), SMALL_WORLD)


def test_tally_grades_and_table(demo):
    world = World.load(demo["world"])
    questions = load_questions(demo["hallucination"])
    assert {q["kind"] for q in questions} == {"held_out", "unseen"}
    q = next(q for q in questions if q["kind"] == "held_out" and q["lang"] == "en")
    wrong = next(c for c in q["choices"] if c != q["answer"])
    tally = Tally()
    for text in (f"It is {q['answer']}.", f"It is {wrong}.", "I am not sure."):
        tally.add("held_out", world.grade(q["fact_id"], text))
    d = tally.to_dict()["held_out"]
    assert (d["right"], d["wrong"], d["unanswered"], d["n"]) == (1, 1, 1, 3)
    assert d["accuracy"] == pytest.approx(1 / 3) and d["confidently_wrong"] == pytest.approx(1 / 3)
    table = format_table({"m": {"greedy": tally.to_dict()}})
    assert "| m | greedy | 33.3% (1/3) | 33.3% | n/a | n/a |" in table


def test_bad_questions_are_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "Where?", "fact_id": "capital:x", "kind": "maybe"}) + "\n")
    with pytest.raises(DataError, match="1 rejected"):
        load_questions(str(path))


def test_measure_grades_every_decoding(demo, tiny_checkpoint):
    world = World.load(demo["world"])
    questions = load_questions(demo["hallucination"])[:4]
    model, tok = load_causal_lm(tiny_checkpoint), load_tokenizer(tiny_checkpoint)
    out = measure(model, tok, world, questions, n=2, weight=0.5, params=SamplingParams(1.0, 1.0, 6, 0),
                  backward_model=load_causal_lm(tiny_checkpoint))
    assert set(out) == {"greedy", "best-of-2 l2r", "rerank w=0.5", "rerank w=0.5 (pretrain r2l)", "oracle@2",
                        "examples"}
    for name, t in out.items():
        if name != "examples":
            assert sum(t[k]["n"] for k in t) == len(questions)
    # the same weights read the backward samples, so an outside backward model changes nothing here
    assert [e["rerank w=0.5"] for e in out["examples"]] == [e["rerank w=0.5 (pretrain r2l)"] for e in out["examples"]]


# Opt-in (-m slow): four Ray Train launches (~2 min on 2 cores); the measure and table above cover the logic.
@pytest.mark.slow
def test_experiment_end_to_end(ray_session, tmp_path, capsys):
    from jobs.experiment import main

    rc = main(["hallucination", "--run-dir", str(tmp_path), "--pretrain-steps", "2", "--sft-steps", "2", "--n", "2",
               "--limit", "6", "data.demo.num_countries=4", "data.demo.num_people=4", "data.demo.corpus_repeats=1",
               "data.demo.held_out_share=0.3", "model.vocab_size=400", "eval.rerank.max_new_tokens=8",
               "pretrain.seq_len=64", "sft.seq_len=128", "pretrain.micro_batch_size=4", "sft.micro_batch_size=4"])
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "experiments" / "hallucination" / "results.json").read_text())
    assert results["pretrain_steps"] == 2 and results["n"] == 2
    assert set(results["models"]) == {"bidirectional (Eq. 1)", "left-to-right only"}
    for model in results["models"].values():
        assert {"greedy", "best-of-2 l2r", "rerank w=0.5", "oracle@2"} <= set(model)
    for direction in ("both", "l2r"):
        marker = json.loads((tmp_path / "experiments" / "hallucination" / direction / "pretrain" / "final"
                             / "batray.json").read_text())
        assert marker.get("step") == 2 and marker.get("direction") == direction
    assert "| bidirectional (Eq. 1) | rerank w=0.5 |" in printed and "| left-to-right only | greedy |" in printed
