"""Eq. 1 / Eq. 2 objectives and the pretraining data path, without Ray.

The central check: the loss the pretraining job computes on a packed batch (built by the job's own
Ray Data transform, `corpus_blocks`) equals Eq. 1 computed directly, one unpacked sequence and one
direction at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batray.data.direction import IGNORE_INDEX
from batray.models.presets import build_model, preset_config
from batray.models.tokenizer import direction_ids
from batray.objectives.lm import (
    bidirectional_lm_loss,
    eq1_log_likelihood,
    lm_metrics,
    segment_causal_mask,
    sft_loss,
    token_nll,
)
from batray.train.engine import lr_factor
from batray.train.lm_data import corpus_blocks, stable_fraction
from batray.train.task import CausalLMTask, ModelSource

TEXTS = ["The capital of Veloria is Marnet.", "马尔内是维洛里亚的首都。", "Ada Quill works in Marnet.",
         "Question: What is the capital of Veloria? Answer: Marnet."]


def blocks(tokenizer, texts, **kw):
    args = dict(tokenizer=tokenizer, seq_len=64, direction="both", r2l_share=1.0, held_out_fraction=0.0,
                split="train", seed=0)
    args.update(kw)
    return corpus_blocks({"text": np.asarray(texts, dtype=object)}, **args)


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=0).eval()


def test_job_eq1_equals_direct_computation(tiny_tokenizer, model, tmp_path):
    cols = blocks(tiny_tokenizer, TEXTS, seq_len=512)  # one roomy block: every segment whole
    assert cols["input_ids"].shape[0] == 1
    task = CausalLMTask(model_source=ModelSource(preset="batgpt-tiny"), tokenizer_dir=str(tmp_path))
    batch = task.to_device(cols, torch.device("cpu"))
    with torch.no_grad():
        loss, stats = task.loss(model, batch)
    l2r_id, r2l_id = direction_ids(tiny_tokenizer)
    direct = sum(
        eq1_log_likelihood(model, tiny_tokenizer(t, add_special_tokens=False)["input_ids"], l2r_id, r2l_id,
                           tiny_tokenizer.eos_token_id)
        for t in TEXTS
    )
    job_sum = float(stats["nll_l2r"] + stats["nll_r2l"])
    assert job_sum == pytest.approx(-direct, rel=1e-5)
    n_tokens = float(stats["tokens_l2r"] + stats["tokens_r2l"])
    assert float(loss) == pytest.approx(-direct / n_tokens, rel=1e-5)
    # every sequence contributes len + 1 targets (its tokens and eos) in each direction
    expected = sum(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in TEXTS)
    assert float(stats["tokens_l2r"]) == expected == float(stats["tokens_r2l"])


def test_packing_keeps_segments_apart(tiny_tokenizer, model):
    """A segment's loss is the same alone or packed behind others (block-diagonal attention)."""
    alone = blocks(tiny_tokenizer, TEXTS[:1], direction="l2r", seq_len=128)
    packed = blocks(tiny_tokenizer, TEXTS[1:] + TEXTS[:1], direction="l2r", seq_len=256)
    with torch.no_grad():
        def last_segment_nll(cols):
            ids, pos = torch.as_tensor(cols["input_ids"]).long(), torch.as_tensor(cols["position_ids"]).long()
            labels = torch.as_tensor(cols["labels"]).long()
            mask4d = segment_causal_mask(pos, model.config._attn_implementation, torch.float32)
            nll, mask = token_nll(model(input_ids=ids, position_ids=pos, attention_mask=mask4d).logits, labels)
            starts = (pos[0] == 0).nonzero().flatten().tolist()
            n = (labels[0] != IGNORE_INDEX).sum().item()
            start = [s for s in starts if s < n + len(starts)][-1]  # the last real segment's marker
            return nll[0, start:].sum().item()
        assert last_segment_nll(packed) == pytest.approx(last_segment_nll(alone), rel=1e-5)


def test_direction_options(tiny_tokenizer):
    l2r_only = blocks(tiny_tokenizer, TEXTS * 10, direction="l2r")
    assert (l2r_only["directions"] == 0).all()
    both = blocks(tiny_tokenizer, TEXTS * 10)
    n_l2r = ((both["directions"] == 0) & (both["labels"] != IGNORE_INDEX)).sum()
    n_r2l = ((both["directions"] == 1) & (both["labels"] != IGNORE_INDEX)).sum()
    assert n_l2r == n_r2l > 0
    texts = [f"sentence number {i} about Marnet" for i in range(200)]
    half = blocks(tiny_tokenizer, texts, r2l_share=0.5)
    r2l_markers = (half["input_ids"] == direction_ids(tiny_tokenizer)[1]).sum()
    picked = sum(stable_fraction(t, "r2l:0") < 0.5 for t in texts)
    assert 60 < picked < 140 and r2l_markers >= picked  # split segments repeat their marker


def test_held_out_split_is_disjoint(tiny_tokenizer):
    texts = [f"fact {i}: Marnet is a city" for i in range(100)]
    train = blocks(tiny_tokenizer, texts, held_out_fraction=0.2, direction="l2r")
    held = blocks(tiny_tokenizer, texts, held_out_fraction=0.2, direction="l2r", split="eval")
    n = lambda c: int((c["input_ids"] == direction_ids(tiny_tokenizer)[0]).sum())
    assert 0 < n(held) < n(train) and n(held) + n(train) >= 100


def test_sft_loss_counts_only_response_tokens():
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, 5, IGNORE_INDEX]])
    loss, stats = sft_loss(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected = -(logp[0, 2, 4] + logp[0, 3, 5]) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(stats["tokens_response"]) == 2


def test_lm_metrics_and_schedule():
    m = lm_metrics({"nll_l2r": 20.0, "tokens_l2r": 10.0, "nll_r2l": 30.0, "tokens_r2l": 10.0, "nll_x": 1.0})
    assert m["loss_l2r"] == 2.0 and m["loss_r2l"] == 3.0 and m["loss"] == 2.5
    assert m["ppl_r2l"] == pytest.approx(math.exp(3.0)) and "loss_x" not in m
    f = lambda s: lr_factor(s, warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_bidirectional_loss_without_r2l_is_plain_causal_lm():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    loss, stats = bidirectional_lm_loss(logits, labels, torch.zeros(2, 5, dtype=torch.long))
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert float(loss) == pytest.approx(float(ref), rel=1e-5) and float(stats["tokens_r2l"]) == 0
