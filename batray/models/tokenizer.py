"""Tokenizers: the direction tokens, BatGPT's chat template, and a byte-level BPE trained offline.

Direction (docs/DESIGN.md §4): `<|l2r|>` starts every left-to-right sequence (generation included);
`<|r2l|>` starts a right-to-left sample, whose tokens are the left-to-right tokens reversed (Eq. 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from batray.errors import BatrayError

L2R_TOKEN = "<|l2r|>"
R2L_TOKEN = "<|r2l|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
EOT_TOKEN = "<eot>"  # ends the system block of BatGPT's chat format
EOP_TOKEN = "<eop>"  # ends an assistant turn
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, L2R_TOKEN, R2L_TOKEN, EOT_TOKEN, EOP_TOKEN]

# BatGPT's chat format as a Jinja template (docs/DESIGN.md §4):
#   [System]\n\n{system}\n\n<eot>  then per turn i:  [Turn i]\n\n[User] {q}\n\n[Assistant] {a}\n\n<eop>
# Every rendering starts with <|l2r|>: chat is always generated left to right.
CHAT_TEMPLATE = (
    "{{ '<|l2r|>' }}"
    "{% set turn = namespace(i=0) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{{ '[System]\n\n' + m['content'] + '\n\n<eot>' }}"
    "{% elif m['role'] == 'user' %}"
    "{% set turn.i = turn.i + 1 %}"
    "{{ '[Turn ' + turn.i|string + ']\n\n[User] ' + m['content'] + '\n\n[Assistant] ' }}"
    "{% elif m['role'] == 'assistant' %}"
    "{{ m['content'] + '\n\n<eop>' }}"
    "{% endif %}"
    "{% endfor %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (offline) and wrap it with batray's special tokens.

    Byte-level means every string, Chinese included, round-trips exactly through encode/decode.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_nonempty(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    return with_batray_tokens(fast)


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t


def with_batray_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the direction and chat tokens and the chat template to any tokenizer (idempotent)."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS_TOKEN
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # generation-friendly; training code builds its own tensors
    return tokenizer


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise BatrayError(f"cannot load a tokenizer from {path!r}: {str(e).splitlines()[0]}") from None
    return with_batray_tokens(tok)


def resize_for_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Grow the embeddings (and untied head) when the tokenizer gained tokens."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def direction_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(id of <|l2r|>, id of <|r2l|>)."""
    return tokenizer.convert_tokens_to_ids(L2R_TOKEN), tokenizer.convert_tokens_to_ids(R2L_TOKEN)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that end generation: end of an assistant turn, end of text."""
    return [tokenizer.convert_tokens_to_ids(EOP_TOKEN), tokenizer.convert_tokens_to_ids(EOS_TOKEN)]


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))
