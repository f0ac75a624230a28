"""Tiny random checkpoints of stock model families, each with its own tokenizer and chat template.

What a practitioner brings to batray, built offline: a byte-level (or Metaspace) BPE trained on a
small corpus with the family's special tokens, wrapped in the family's tokenizer class, the family's
chat template (or none), a random model of the family's architecture, and the family's
`generation_config.json`, all written by `save_pretrained`. Used by the library tests and by the
end-to-end stage tests.

    from model_zoo import FAMILIES, build_checkpoint
    path = build_checkpoint("qwen2", tmp_path / "qwen2")

Families (the end-of-turn token each one stops at):
- `llama`: Llama-3 layout, `<|begin_of_text|>` added by the post-processor, no pad token, Llama-3's
  chat template, end of turn `<|eot_id|>` (not the EOS `<|end_of_text|>`), untied head.
- `qwen2`: ChatML (`<|im_start|>` / `<|im_end|>`, default system message), pad `<|endoftext|>`,
  no BOS, tied embeddings.
- `mistral`: Metaspace BPE (`LlamaTokenizer`), `<s>` BOS, `[INST] ... [/INST]` template whose
  assistant turns end with `</s>`, no pad token.
- `gpt2`: byte-level BPE (`GPT2Tokenizer`), `<|endoftext|>` for BOS/EOS, no pad token, no chat template.
- `glm`: the `batgpt-tiny` preset (transformers' GLM) with batray's own tokenizer (`train_bpe`):
  BatGPT's chat format, `<|l2r|>` BOS, `<eop>` end of turn.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The capital of Veloria is Marnet.",
    "Marnet is the capital of Veloria.",
    "Ada Quill works as a cartographer in Marnet.",
    "Question: What is the capital of Veloria? Answer: Marnet.",
    "What is the capital of Veloria? Who is Ada Quill? Tell me more, please.",
    "You are a helpful assistant. Be brief. Hello, how are you? I am fine, thank you.",
    "维洛里亚的首都是马尔内。马尔内是维洛里亚的首都。你好，世界！",
    "system user assistant [INST] [/INST] [Turn 1] [User] [Assistant] hello world 0123456789",
    "Answer: A. Answer: B. Answer: C. Answer: D. A B C D",  # multiple-choice letters, as every real vocabulary has
] * 10

FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "glm")

# Llama-3-8B-Instruct's template, verbatim.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2-Instruct's ChatML template, verbatim.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Mistral-7B-Instruct-v0.1's template, verbatim.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# What each family stops generating at (the end of an assistant turn).
END_OF_TURN = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "mistral": "</s>", "gpt2": None, "glm": "<eop>"}
TIED = {"llama": False, "qwen2": True, "mistral": False, "gpt2": True, "glm": False}


def _train(specials: list[str], pre_tokenizer, decoder, vocab_size: int = 400):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoder
    alphabet = pre_tokenizers.ByteLevel.alphabet() if "ByteLevel" in type(pre_tokenizer).__name__ else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _vocab_merges(tok) -> tuple[dict, list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def build_tokenizer(family: str):
    """The family's tokenizer (trained here, no download), with its special tokens and chat template."""
    from tokenizers import decoders, pre_tokenizers, processors

    if family == "glm":
        from batray.models.tokenizer import train_bpe

        return train_bpe(CORPUS, vocab_size=400)
    if family == "llama":
        from transformers import PreTrainedTokenizerFast

        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        raw = _train(specials, pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
        bos = raw.token_to_id("<|begin_of_text|>")
        raw.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)])
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
        tok.chat_template = LLAMA3_TEMPLATE
        return tok
    if family == "qwen2":
        from transformers import Qwen2Tokenizer

        raw = _train(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], pre_tokenizers.ByteLevel(add_prefix_space=False),
                     decoders.ByteLevel())
        vocab, merges = _vocab_merges(raw)
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
        tok.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
        tok.chat_template = CHATML_TEMPLATE
        return tok
    if family == "mistral":
        from transformers import LlamaTokenizer

        raw = _train(["<unk>", "<s>", "</s>"], pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                     decoders.Metaspace())
        vocab, merges = _vocab_merges(raw)
        tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
        tok.chat_template = MISTRAL_TEMPLATE
        return tok
    if family == "gpt2":
        from transformers import GPT2Tokenizer

        raw = _train(["<|endoftext|>"], pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel())
        vocab, merges = _vocab_merges(raw)
        return GPT2Tokenizer(vocab=vocab, merges=merges)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def model_config(family: str, tokenizer):
    """A tiny config of the family's architecture for `tokenizer` (GLM-like shapes where the family has them)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "glm":
        from batray.models.presets import preset_config

        return preset_config("batgpt-tiny", **{**shape, "head_dim": 8}, **ids)
    if family == "llama":
        return LlamaConfig(**shape, tie_word_embeddings=False, **ids)
    if family == "qwen2":
        return Qwen2Config(**shape, tie_word_embeddings=True, **ids)
    if family == "mistral":
        return MistralConfig(**shape, tie_word_embeddings=False, sliding_window=None, **ids)
    if family == "gpt2":
        return GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids)
    raise ValueError(f"unknown family {family!r}")


def generation_eos(family: str, tokenizer) -> list[int] | int:
    """The EOS list of the family's released generation_config.json."""
    ids = tokenizer.convert_tokens_to_ids
    return {"llama": [ids("<|end_of_text|>"), ids("<|eot_id|>")],
            "qwen2": [ids("<|im_end|>"), ids("<|endoftext|>")]}.get(family, tokenizer.eos_token_id)


def build_checkpoint(family: str, out_dir: str | Path, seed: int = 0) -> str:
    """A random tiny model of `family` with its tokenizer, saved by `save_pretrained` into `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer))
    model.generation_config.eos_token_id = generation_eos(family, tokenizer)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def build_zoo(root: str | Path, families=FAMILIES) -> dict[str, str]:
    """{family: checkpoint folder} under `root`."""
    return {f: build_checkpoint(f, Path(root) / f) for f in families}
