"""Eq. 2 samples: the loss mask covers exactly the response tokens, checked token by token."""

from __future__ import annotations

import itertools

import pytest

from batray.data.direction import IGNORE_INDEX
from batray.data.sft import SampleError, build_sft_sample, normalize_messages
from batray.train.lm_data import pack_sft_samples, pad_sft_sample

DIALOGUE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of Veloria?"},
    {"role": "assistant", "content": "Marnet."},
    {"role": "user", "content": "维洛里亚的首都是哪里？"},
    {"role": "assistant", "content": "马尔内。"},
]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_last_turn_mask_token_by_token(tiny_tokenizer):
    sample = build_sft_sample(tiny_tokenizer, DIALOGUE, max_len=512, loss_on="last")
    # the sample is the chat template's rendering, token for token
    assert tiny_tokenizer.decode(sample.input_ids) == tiny_tokenizer.apply_chat_template(DIALOGUE, tokenize=False)
    response = ids(tiny_tokenizer, "马尔内。\n\n<eop>")
    n = len(sample.input_ids)
    expected = [IGNORE_INDEX] * (n - len(response)) + response
    assert sample.labels == expected
    assert sample.input_ids[n - len(response):] == response


def test_all_turns_mask(tiny_tokenizer):
    sample = build_sft_sample(tiny_tokenizer, DIALOGUE, max_len=512, loss_on="all")
    first = ids(tiny_tokenizer, "Marnet.\n\n<eop>")
    last = ids(tiny_tokenizer, "马尔内。\n\n<eop>")
    labeled = [t for t in sample.labels if t != IGNORE_INDEX]
    assert labeled == first + last
    for tok_id, label in zip(sample.input_ids, sample.labels):
        assert label in (IGNORE_INDEX, tok_id)
    # the first response's labels sit exactly on its tokens
    start = next(i for i in range(len(sample.input_ids)) if sample.input_ids[i:i + len(first)] == first)
    assert sample.labels[start:start + len(first)] == first and sample.labels[start - 1] == IGNORE_INDEX


def test_truncation_drops_oldest_turns_keeps_system_and_response(tiny_tokenizer):
    full = build_sft_sample(tiny_tokenizer, DIALOGUE, max_len=512)
    short = build_sft_sample(tiny_tokenizer, DIALOGUE, max_len=len(full.input_ids) - 1)
    assert short.dropped_turns == 1
    text = tiny_tokenizer.decode(short.input_ids)
    assert "You are helpful." in text and "Veloria?" not in text and text.endswith("马尔内。\n\n<eop>")
    assert [t for t in short.labels if t != IGNORE_INDEX] == ids(tiny_tokenizer, "马尔内。\n\n<eop>")
    with pytest.raises(SampleError, match="last turn alone"):
        build_sft_sample(tiny_tokenizer, DIALOGUE, max_len=8)


def test_prompt_response_rows_and_padding(tiny_tokenizer):
    messages = normalize_messages({"prompt": "Hi", "response": "Hello!"})
    sample = build_sft_sample(tiny_tokenizer, messages, max_len=64)
    row = pad_sft_sample(sample.input_ids, sample.labels, 64, tiny_tokenizer.pad_token_id)
    assert all(len(v) == 64 for v in row.values())
    n = len(sample.input_ids)
    assert row["labels"][n:] == [IGNORE_INDEX] * (64 - n) and row["position_ids"][:n] == list(range(n))
    with pytest.raises(SampleError):
        normalize_messages({"messages": [{"role": "user", "content": "no answer"}]})


def test_packed_sft_loss_equals_each_sample_alone(tiny_tokenizer):
    """`sft.packing`: every sample lands whole in one row of at most seq_len tokens, and the packed rows'
    loss sums and token counts equal those of each sample run on its own (no attention across samples)."""
    import torch

    from batray.models.presets import build_model, preset_config
    from batray.train.task import CausalLMTask, ModelSource, Objective

    chats = [DIALOGUE, DIALOGUE[1:3], DIALOGUE[3:], [{"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello, Ada Quill."}]]
    samples = [build_sft_sample(tiny_tokenizer, c, max_len=128, loss_on="all") for c in chats]
    pairs = [(s.input_ids, s.labels) for s in samples]
    seq_len = max(len(s.input_ids) for s in samples) + 8
    rows = pack_sft_samples(pairs, seq_len, tiny_tokenizer.pad_token_id)
    assert len(rows) < len(samples)  # something shared a row
    assert all(len(v) == seq_len for r in rows for v in r.values())
    segments = sorted(r["input_ids"][i:i + n] for r in rows
                      for i, n in _segments(r["position_ids"], r["labels"], tiny_tokenizer.pad_token_id, r["input_ids"]))
    assert segments == sorted(ids for ids, _ in pairs)
    with pytest.raises(ValueError, match="does not fit"):
        pack_sft_samples(pairs, 8, tiny_tokenizer.pad_token_id)

    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=0).eval()
    src = ModelSource(preset="batgpt-tiny")
    packed = CausalLMTask(model_source=src, tokenizer_dir="", objective=Objective.INSTRUCTION, packed=True)
    plain = CausalLMTask(model_source=src, tokenizer_dir="", objective=Objective.INSTRUCTION)
    cpu = torch.device("cpu")
    with torch.no_grad():
        _, got = packed.loss(model, packed.to_device({k: [r[k] for r in rows] for k in rows[0]}, cpu))
        alone = [plain.loss(model, plain.to_device({k: [v] for k, v in pad_sft_sample(i, lb, seq_len, 0).items()},
                                                   cpu))[1] for i, lb in pairs]
    assert float(got["tokens_response"]) == sum(float(a["tokens_response"]) for a in alone)
    assert float(got["nll_response"]) == pytest.approx(sum(float(a["nll_response"]) for a in alone), rel=1e-5)


def _segments(pos, labels, pad_id, ids):
    """(start, length) of each packed sample in a row: runs of positions from 0, pads left out."""
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    out = []
    for a, b in itertools.pairwise(starts):
        if not (b - a == 1 and ids[a] == pad_id and labels[a] == IGNORE_INDEX):
            out.append((a, b - a))
    return out


def test_sft_batches_are_trimmed_to_their_last_label_with_the_same_loss_and_gradient(tiny_tokenizer):
    """The task cuts a right-padded batch after its last labelled column: same loss, same gradient."""
    import numpy as np
    import torch

    from batray.train.task import CausalLMTask, ModelSource, Objective

    task = CausalLMTask(model_source=ModelSource(preset="batgpt-tiny", overrides={"vocab_size": len(tiny_tokenizer)}),
                        tokenizer_dir="", stage="sft", objective=Objective.INSTRUCTION)
    rows = [pad_sft_sample(s.input_ids, s.labels, 96, tiny_tokenizer.pad_token_id) for s in (
        build_sft_sample(tiny_tokenizer, normalize_messages({"prompt": p, "response": r}), max_len=96)
        for p, r in (("Hi", "Hello there!"), ("What is the capital of Avalon?", "The capital of Avalon is Cam.")))]
    batch = {k: np.asarray([r[k] for r in rows], dtype=np.int32) for k in rows[0]}
    trimmed = task.to_device(batch, torch.device("cpu"))
    full = TrainTaskFull().to_device(batch, torch.device("cpu"))
    longest = max(int(np.nonzero(np.asarray(r["labels"]) != IGNORE_INDEX)[0].max()) for r in rows) + 1
    assert trimmed["input_ids"].shape == (2, longest) < full["input_ids"].shape
    model = task.build_model()
    grads = []
    for b in (trimmed, full):
        model.zero_grad()
        loss, stats = task.loss(model, b)
        loss.backward()
        grads.append((loss.detach(), stats["tokens_response"], [p.grad.clone() for p in model.parameters()]))
    (l1, n1, g1), (l2, n2, g2) = grads
    assert n1 == n2 and torch.allclose(l1, l2, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))


class TrainTaskFull:
    """The base class's conversion: the batch at its padded width."""

    def to_device(self, batch, device):
        from batray.train.task import TrainTask

        return TrainTask.to_device(self, batch, device)
