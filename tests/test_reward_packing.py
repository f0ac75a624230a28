"""`reward.packing`: a micro batch's sequences packed whole into fewer rows give the padded batch's
rewards, loss and gradients (to 1e-5), with each pair's y and y' in the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batray.reward.packing import best_fit_rows, pack_sequences
from batray.reward.task import RewardModule, RewardTask, triple_rows


def test_best_fit_rows_places_every_sequence_once_within_the_width():
    lengths = [192, 60, 130, 100, 92, 5, 187, 40, 1]
    rows = best_fit_rows(lengths, 192)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 192 for row in rows)
    # best fit decreasing: 192 | 187+5 | 130+60+1 | 100+92 | 40
    assert sorted(sorted(lengths[i] for i in row) for row in rows) == [[1, 60, 130], [5, 187], [40], [92, 100], [192]]
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_rows([193], 192)


def test_pack_sequences_restarts_positions_and_points_at_each_last_token():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [1, 2, 3, 4]])
    packed = pack_sequences(ids, torch.tensor([3, 1, 4]), pad_id=0)
    flat, pos = packed["input_ids"].reshape(-1), packed["position_ids"].reshape(-1)
    assert packed["input_ids"].shape == (2, 4)  # [1 2 3 4] and [5 6 7 8]
    assert flat[packed["ends"]].tolist() == [7, 8, 4]
    assert pos[packed["ends"]].tolist() == [2, 0, 3]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]


def _triples(tokenizer, n: int, width: int, seed: int = 0):
    from batray.reward.data import EncodedTriple

    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    out = []
    for i in range(n):
        la, lb = (int(x) for x in rng.integers(3, width + 1, size=2))
        if i == 0:
            la = width  # one full row, as most HH-RLHF pairs have
        out.append(EncodedTriple(pair_id=str(i), ids_a=rng.integers(5, vocab, la).tolist(),
                                 ids_b=rng.integers(5, vocab, lb).tolist(), d=int(rng.choice([-1, 0, 1]))))
    return out


@pytest.mark.parametrize("tie_loss", ["none", "rao_kupper"])
def test_packed_batch_gives_the_padded_rewards_loss_and_gradients(tiny_tokenizer, tie_loss):
    from batray.reward.model import build_reward_model

    width = 48
    rows = triple_rows(_triples(tiny_tokenizer, 8, width), width, tiny_tokenizer.pad_token_id)
    batch = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
    results = {}
    for packed in (False, True):
        model, _ = build_reward_model("batgpt-tiny", tiny_tokenizer, seed=0)
        module = RewardModule(model, 0.25 if tie_loss == "rao_kupper" else None)
        module.train()
        task = RewardTask(init_from="batgpt-tiny", tokenizer_dir="-", pad_id=tiny_tokenizer.pad_token_id,
                          tie_loss=tie_loss, packed=packed)
        dev = task.to_device(batch, torch.device("cpu"))
        loss, stats = task.loss(module, dev)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results[packed] = (dev, loss.detach(), stats, grads)
    (padded, loss_p, stats_p, grads_p), (packed_b, loss_k, stats_k, grads_k) = results[False], results[True]
    assert packed_b["input_ids"].shape[0] < padded["input_ids"].shape[0] == 16  # fewer rows, same width
    assert packed_b["input_ids"].shape[1] == padded["input_ids"].shape[1] == width
    assert padded["tokens"] == packed_b["tokens"] == int(padded["attention_mask"].sum())
    assert torch.allclose(loss_k, loss_p, atol=1e-5)
    for k in ("reward_sum", "reward_sq", "correct", "gap"):
        assert float(stats_k[k]) == pytest.approx(float(stats_p[k]), abs=1e-4)
    assert grads_k.keys() == grads_p.keys() and len(grads_p) > 10
    for name, g in grads_p.items():
        assert torch.allclose(grads_k[name], g, atol=1e-5, rtol=1e-4), name


def test_packed_rewards_through_lora_adapters(tiny_tokenizer):
    from batray.config.base import LoraConfig
    from batray.models.lora import apply_lora
    from batray.reward.model import build_reward_model

    width = 32
    rows = triple_rows(_triples(tiny_tokenizer, 6, width, seed=1), width, tiny_tokenizer.pad_token_id)
    batch = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
    model, _ = build_reward_model("batgpt-tiny", tiny_tokenizer, seed=0)
    module = RewardModule(apply_lora(model, LoraConfig(dropout=0.0), kind="score"))
    module.eval()
    out = {}
    for packed in (False, True):
        task = RewardTask(init_from="batgpt-tiny", tokenizer_dir="-", pad_id=tiny_tokenizer.pad_token_id, packed=packed)
        dev = task.to_device(batch, torch.device("cpu"))
        with torch.no_grad():
            out[packed] = module(dev["input_ids"], dev.get("attention_mask"), dev.get("position_ids"), dev.get("ends"))[0]
    assert torch.allclose(out[True], out[False], atol=1e-5)


def test_reward_packing_is_a_config_value():
    from batray.config import load_config

    assert load_config(None, []).reward.packing is False
    assert load_config(None, ["reward.packing=true"]).reward.packing is True
