"""Preference data -> triples: both layouts, chat rendering, truncation, split, collation; the reward
model's save/load round trip and the held-out evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from batray.errors import DataError
from batray.reward.data import (
    EncodedTriple, Triple, collate_triples, encode_response, encode_triples, load_triples, parse_hh_dialogue, render,
    split_held_out,
)
from batray.reward.evaluate import calibration_table, reward_metrics

HH_CHOSEN = ("\n\nHuman: What is the capital of Veloria?\n\nAssistant: Do you mean the country?"
             "\n\nHuman: yes\n\nAssistant: The capital of Veloria is Marnet.")
HH_REJECTED = ("\n\nHuman: What is the capital of Veloria?\n\nAssistant: Do you mean the country?"
               "\n\nHuman: yes\n\nAssistant: I don't know.")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def test_hh_dialogue_maps_to_context_responses_and_d(tmp_path):
    assert parse_hh_dialogue(HH_CHOSEN) == [
        {"role": "user", "content": "What is the capital of Veloria?"},
        {"role": "assistant", "content": "Do you mean the country?"},
        {"role": "user", "content": "yes"},
        {"role": "assistant", "content": "The capital of Veloria is Marnet."},
    ]
    # consecutive turns of one speaker merge; an empty final answer is kept
    assert parse_hh_dialogue("\n\nHuman: a\n\nHuman: b\n\nAssistant:") == [
        {"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": ""}]
    rows = [
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: other\n\nAssistant: hello"},
        {"chosen": "no dialogue here", "rejected": "x"},
        {"chosen": 3, "rejected": "x"},
    ]
    triples, report, layout = load_triples(_write_jsonl(tmp_path / "hh.jsonl", rows))
    assert layout == "hh_rlhf"
    assert len(triples) == 1 and report.total == 4 and len(report.rejected) == 3
    reasons = " | ".join(r["reason"] for r in report.rejected)
    assert "differ before their last assistant turn" in reasons and "chosen must be a list of messages" in reasons
    t = triples[0]
    # y = chosen, y' = rejected, so chosen preferred is d = -1 (docs/DESIGN.md §3)
    assert (t.response_a, t.response_b, t.d) == ("The capital of Veloria is Marnet.", "I don't know.", -1)
    assert [m["role"] for m in t.context] == ["user", "assistant", "user"]
    assert render(t.context, t.response_a) == (
        "<|l2r|>[Turn 1]\n\n[User] What is the capital of Veloria?\n\n[Assistant] Do you mean the country?\n\n<eop>"
        "[Turn 2]\n\n[User] yes\n\n[Assistant] The capital of Veloria is Marnet.\n\n<eop>")


def test_preferences_contract_rows_and_rejects(tmp_path):
    rows = [
        {"pair_id": "p1", "prompt": "q1", "response_a": "a", "response_b": "b", "d": 1},
        {"pair_id": "p2", "prompt": "q2", "response_a": "a", "response_b": "b", "d": 0},
        {"pair_id": "p3", "prompt": "q3", "response_a": "a", "response_b": "b", "d": 2},
        {"pair_id": "p4", "prompt": "q4", "response_a": "a", "response_b": "b", "d": -1,
         "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q4"}]},
    ]
    triples, report, layout = load_triples(_write_jsonl(tmp_path / "prefs.jsonl", rows))
    assert layout == "preferences" and [t.d for t in triples] == [1, 0, -1]
    assert len(report.rejected) == 1 and "d must be -1, 0 or 1" in report.rejected[0]["reason"]
    assert triples[2].context[0] == {"role": "system", "content": "be brief"}
    with pytest.raises(DataError, match="no usable preference rows"):
        load_triples(_write_jsonl(tmp_path / "bad.jsonl", [rows[2]]))


def test_encoding_reads_at_eop_and_truncates_old_turns_then_old_tokens(tiny_tokenizer):
    context = [{"role": "user", "content": "Marnet is the capital of Veloria. " * 4},
               {"role": "assistant", "content": "hello world"},
               {"role": "user", "content": "What is the capital of Veloria?"}]
    ids, dropped, cut = encode_response(tiny_tokenizer, context, "Marnet.", 512)
    assert not dropped and not cut
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|l2r|>")
    assert ids[-1] == tiny_tokenizer.convert_tokens_to_ids("<eop>")  # the token the head reads
    full = len(ids)
    short, dropped, cut = encode_response(tiny_tokenizer, context, "Marnet.", full - 1)
    assert dropped and not cut
    assert tiny_tokenizer.decode(short).startswith("<|l2r|>[Turn 1]\n\n[User] What is the capital")
    tail, dropped, cut = encode_response(tiny_tokenizer, context, "Marnet. " * 20, 24)
    assert dropped and cut and len(tail) == 24
    assert tail[0] == ids[0] and tail[-1] == ids[-1]


def test_split_is_stable_and_collation_stacks_y_over_y_prime():
    items = [EncodedTriple(f"p{i}", [5] * (1 + i % 3), [6] * 2, [-1, 0, 1][i % 3]) for i in range(200)]
    train, held = split_held_out(items, 0.2)
    train2, held2 = split_held_out(list(reversed(items)), 0.2)
    assert {t.pair_id for t in held} == {t.pair_id for t in held2}
    assert 20 <= len(held) <= 60 and len(train) + len(held) == 200
    # The pairs of one prompt (pairs.samples_per_prompt: ids `<id>#<k>`) land on the same side.
    copies = [EncodedTriple(f"{t.pair_id}#{k}", t.ids_a, t.ids_b, t.d) for t in items for k in (1, 2)]
    train3, held3 = split_held_out(items + copies, 0.2)
    assert {t.pair_id.split("#")[0] for t in held3} == {t.pair_id for t in held}
    assert len(held3) == 3 * len(held) and len(train3) == 3 * len(train)
    batch = collate_triples(items[:3], pad_id=0)
    assert batch["input_ids"].shape == (6, 3)
    assert batch["input_ids"][:3].tolist() == [[5, 0, 0], [5, 5, 0], [5, 5, 5]]
    assert batch["input_ids"][3:].tolist() == [[6, 6, 0]] * 3
    assert batch["attention_mask"].sum(1).tolist() == [1, 2, 3, 2, 2, 2]
    assert batch["d"].tolist() == [-1, 0, 1]


def test_reward_model_from_a_causal_checkpoint_saves_and_loads_with_auto_class(tiny_checkpoint, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from batray.reward.model import build_reward_model, pair_rewards, read_reward_stats, save_reward_model

    rm, tok = build_reward_model(tiny_checkpoint, seed=0)
    assert type(rm).__name__ == "GlmForSequenceClassification" and rm.config.num_labels == 1
    lm = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert torch.equal(rm.model.embed_tokens.weight, lm.model.embed_tokens.weight)  # the backbone carried over
    triples = [Triple("t", [{"role": "user", "content": "What is the capital of Veloria?"}], "Marnet.",
                      "I do not know the capital of Veloria at all.", -1)] * 2
    encoded, _ = encode_triples(tok, triples, 64)
    batch = collate_triples(encoded, tok.pad_token_id)
    r_a, r_b = pair_rewards(rm, batch)
    # padded rows read at their own last token: same reward as the sequence scored alone
    alone = rm(input_ids=torch.tensor([encoded[0].ids_a])).logits[0, 0]
    assert torch.allclose(r_a[0], alone, atol=1e-5)
    out = save_reward_model(rm, tok, tmp_path / "rm", {"mean": 0.5, "std": 2.0})
    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert loaded.config.num_labels == 1
    r_a2, r_b2 = pair_rewards(loaded, batch)
    assert torch.allclose(r_a, r_a2, atol=1e-6) and torch.allclose(r_b, r_b2, atol=1e-6)
    assert read_reward_stats(out) == {"mean": 0.5, "std": 2.0}
    assert json.loads((out / "reward_stats.json").read_text())["std"] == 2.0


def test_held_out_metrics_and_calibration_by_hand():
    r_a = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    r_b = torch.tensor([3.0, 0.4, 0.0, 0.1, 2.0])
    d = torch.tensor([1, 1, 1, 0, 0])
    m = reward_metrics(r_a, r_b, d, tie_band=0.25)
    assert m["accuracy"] == pytest.approx(2 / 3)  # the third pair is ranked the wrong way
    assert m["tie_accuracy"] == pytest.approx(0.5)  # gap 0.1 within 0.25, gap 2.0 not
    rewards = torch.cat([r_a, r_b])
    assert m["reward_mean"] == pytest.approx(float(rewards.mean()))
    assert m["reward_std"] == pytest.approx(float(rewards.std(unbiased=False)))
    table = calibration_table(r_a, r_b, d)
    by_bin = {(row["gap_from"], row["gap_to"]): row for row in table}
    assert by_bin[(0.0, 0.25)] == pytest.approx({"gap_from": 0.0, "gap_to": 0.25, "pairs": 0, "accuracy": None,
                                                 "ties": 1, "mean_gap": 0.1, "p_bt": None})
    assert (0.5, 1.0) not in by_bin and len(table) == 4  # empty bins are left out
    assert by_bin[(0.25, 0.5)]["pairs"] == 1 and by_bin[(0.25, 0.5)]["accuracy"] == 1.0
    assert by_bin[(1.0, 2.0)]["pairs"] == 1 and by_bin[(1.0, 2.0)]["accuracy"] == 0.0
    top = by_bin[(2.0, float("inf"))]
    assert top["pairs"] == 1 and top["accuracy"] == 1.0 and top["ties"] == 1
    assert top["p_bt"] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))


def test_cli_reports_missing_inputs_and_bad_tie_settings_in_one_line(tmp_path, capsys):
    from batray.cli import main

    assert main(["reward", "--run-dir", str(tmp_path), "reward.init_from=batgpt-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "preferences.parquet" in err and "batray prefs" in err
    assert main(["reward", "--run-dir", str(tmp_path)]) == 2  # no SFT model in the run yet
    assert "sft/final" in capsys.readouterr().err
    assert main(["reward", "reward.tie_loss=band", "reward.tie_band=1.5"]) == 2
    assert "tie_band (1.5) must be below margin (1.0)" in capsys.readouterr().err
    assert main(["reward", "reward.tie_loss=rao_kupper", "reward.tie_band=0"]) == 2
    assert "initial threshold" in capsys.readouterr().err
