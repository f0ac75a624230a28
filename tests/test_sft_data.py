"""Eq. 2 samples: the loss mask covers exactly the response tokens, checked token by token."""

from __future__ import annotations

import pytest

from batray.data.direction import IGNORE_INDEX
from batray.data.sft import SampleError, build_sft_sample, normalize_messages
from batray.train.lm_data import pad_sft_sample

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
