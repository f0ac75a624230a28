"""Presets, exact parameter counts on the meta device, direction tokens on any tokenizer, chat format."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GlmForCausalLM, LlamaConfig

from batray.models.presets import build_model, count_parameters, preset_config
from batray.models.tokenizer import (
    CHAT_TEMPLATE,
    L2R_TOKEN,
    R2L_TOKEN,
    direction_ids,
    resize_for_tokenizer,
    train_bpe,
    with_batray_tokens,
)


def test_batgpt_15b_has_exactly_the_released_parameter_count():
    cfg = preset_config("batgpt-15b")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (48, 5632, 44, 2)
    assert cfg.head_dim == 128 and cfg.intermediate_size == 13696 and cfg.vocab_size == 65536
    assert count_parameters(cfg) == 15_030_081_024


def test_tiny_preset_is_the_same_family_and_small():
    model = build_model(preset_config("batgpt-tiny"), seed=0)
    assert isinstance(model, GlmForCausalLM)
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 < n < 1_000_000
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.bias is not None  # QKV bias
    assert hasattr(layer.mlp, "gate_up_proj")  # fused SwiGLU
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied


def test_bpe_round_trips_english_and_chinese_exactly():
    texts = ["The capital of Veloria is Marnet.", "维洛里亚的首都是马尔内。", "mixed 中英 text, emoji 🦇"] * 10
    tok = train_bpe(texts, vocab_size=400)
    for s in texts[:3] + ["unseen 字符 éà ✓"]:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
    l2r, r2l = direction_ids(tok)
    assert tok.convert_ids_to_tokens([l2r, r2l]) == [L2R_TOKEN, R2L_TOKEN]


def test_direction_tokens_added_to_any_tokenizer_and_embeddings_resized(tiny_tokenizer):
    # A "foreign" tokenizer without batray's tokens: strip them by training a plain BPE.
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    foreign = PreTrainedTokenizerFast(tokenizer_object=raw)
    before = len(foreign)
    tok = with_batray_tokens(foreign)
    assert len(tok) == before + 6
    assert tok.chat_template == CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=before, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    resize_for_tokenizer(model, tok)
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    ids = tok(L2R_TOKEN + "hello", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids(L2R_TOKEN)
    with torch.no_grad():
        model(torch.tensor([ids]))


def test_chat_template_is_batgpt_format(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "You are BatGPT."},
        {"role": "user", "content": "首都是哪里？"},
        {"role": "assistant", "content": "Marnet."},
        {"role": "user", "content": "And Veloria?"},
    ]
    text = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|l2r|>[System]\n\nYou are BatGPT.\n\n<eot>"
        "[Turn 1]\n\n[User] 首都是哪里？\n\n[Assistant] Marnet.\n\n<eop>"
        "[Turn 2]\n\n[User] And Veloria?\n\n[Assistant] "
    )


def test_model_info_cli(capsys):
    from jobs.model import main

    assert main(["info", "batgpt-15b"]) == 0
    assert "15,030,081,024" in capsys.readouterr().out
