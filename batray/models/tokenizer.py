"""Tokenizers: the direction tokens, BatGPT's chat template, and a byte-level BPE trained offline.

Direction (Eq. 1): `<|l2r|>` starts every left-to-right sequence (generation included); `<|r2l|>`
starts a right-to-left sample, whose tokens are the left-to-right tokens reversed. A tokenizer that
has the direction tokens carries its own reading: `<|l2r|>` is its BOS and its post-processor puts it
in front of every encoding (`tokenizer(text)`), so plain transformers, lm-evaluation-harness, vLLM
and TGI feed a batray checkpoint exactly what batray feeds it. batray code therefore encodes
left-to-right text with `tokenizer(text)` and never adds `<|l2r|>` by hand; only Eq. 1's sample
builders (`batray.data.direction`) place the markers themselves.

Which tokenizers get the direction tokens: batray's own (`train_bpe`), and a stock tokenizer whose
model a stage trains with Eq. 1 (pretraining, PPO's bidirectional ptx term), from that stage on. A
stock model that is only fine-tuned (SFT, reward, PPO without Eq. 1) keeps its tokenizer as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from batray.errors import BatrayError

log = logging.getLogger(__name__)

L2R_TOKEN = "<|l2r|>"
R2L_TOKEN = "<|r2l|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
EOT_TOKEN = "<eot>"  # ends the system block of BatGPT's chat format
EOP_TOKEN = "<eop>"  # ends an assistant turn
DIRECTION_TOKENS = [L2R_TOKEN, R2L_TOKEN]
BATGPT_CHAT_TOKENS = [EOT_TOKEN, EOP_TOKEN]
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, L2R_TOKEN, R2L_TOKEN, EOT_TOKEN, EOP_TOKEN]

# BatGPT's chat format as a Jinja template:
#   [System]\n\n{system}\n\n<eot>  then per turn i:  [Turn i]\n\n[User] {q}\n\n[Assistant] {a}\n\n<eop>
# It starts with the tokenizer's BOS: `<|l2r|>` for a tokenizer with the direction tokens (chat is
# generated left to right). The user turn ends with the assistant's header, so a rendering that ends
# with a user turn is already a generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
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
    """Make `tokenizer` a BatGPT tokenizer: all six special tokens, `<|l2r|>` as its BOS, BatGPT's chat
    template (idempotent). For batray's own tokenizers; stock ones go through `configure_tokenizer`."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    if tokenizer.eos_token is None:
        tokenizer.eos_token = EOS_TOKEN
    add_direction_tokens(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def has_direction_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    vocab = tokenizer.get_vocab()
    return all(t in vocab for t in DIRECTION_TOKENS)


def reads_with_l2r(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer(text)` puts `<|l2r|>` first by itself (the post-processor adds it as BOS)."""
    if not has_direction_tokens(tokenizer):
        return False
    return tokenizer("x")["input_ids"][:1] == [tokenizer.convert_tokens_to_ids(L2R_TOKEN)]


def add_direction_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Add `<|l2r|>`/`<|r2l|>` and make `<|l2r|>` the BOS its post-processor adds (idempotent).

    Returns the tokens added to the vocabulary (the caller resizes the model's embeddings). A
    template post-processor (e.g. Llama's `<|begin_of_text|> $A`) is replaced; any other one (GPT-2's
    byte-level offsets) is kept and the BOS template runs after it.
    """
    added = [t for t in DIRECTION_TOKENS if t not in tokenizer.get_vocab()]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    if reads_with_l2r(tokenizer) and tokenizer.bos_token == L2R_TOKEN:
        return added
    if not getattr(tokenizer, "is_fast", False):
        raise BatrayError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer; batray needs a fast tokenizer "
                          "(tokenizer.json) to make <|l2r|> its BOS")
    tokenizer.bos_token = L2R_TOKEN
    l2r_id = tokenizer.convert_tokens_to_ids(L2R_TOKEN)
    bos = processors.TemplateProcessing(single=f"{L2R_TOKEN} $A", pair=f"{L2R_TOKEN} $A {L2R_TOKEN} $B",
                                        special_tokens=[(L2R_TOKEN, l2r_id)])
    backend = tokenizer.backend_tokenizer
    current = backend.post_processor
    kind = json.loads(backend.to_str()).get("post_processor") or {}
    if current is None or kind.get("type") in ("TemplateProcessing", "BertProcessing", "RobertaProcessing"):
        backend.post_processor = bos
    else:
        backend.post_processor = processors.Sequence([current, bos])
    # Recorded for readers that look at the config (llama.cpp's converter); transformers reads tokenizer.json.
    object.__setattr__(tokenizer, "_add_bos_token", True)
    tokenizer.init_kwargs["add_bos_token"] = True
    return added


def direction_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(id of <|l2r|>, id of <|r2l|>); a clear error for a tokenizer without them."""
    if not has_direction_tokens(tokenizer):
        raise BatrayError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no direction tokens "
                          f"({L2R_TOKEN}, {R2L_TOKEN}): it was not trained with Eq. 1; load it with directions=True "
                          "to add them (the model's embeddings grow)")
    return tokenizer.convert_tokens_to_ids(L2R_TOKEN), tokenizer.convert_tokens_to_ids(R2L_TOKEN)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the pad token, else EOS (padding is masked out), else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, *, distinct_from: Iterable[int] = ()) -> list[str]:
    """Give a tokenizer without a pad token one: its EOS (no new token, as TRL does), or a new `<pad>` when
    there is no EOS or when the pad must differ from `distinct_from` (a reward model reads the last
    non-pad token, which must not be the end-of-turn token). Returns the tokens added."""
    avoid = set(distinct_from)
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in avoid:
        return []
    if tokenizer.pad_token is None and tokenizer.eos_token is not None and tokenizer.eos_token_id not in avoid:
        tokenizer.pad_token = tokenizer.eos_token
        return []
    added = [] if PAD_TOKEN in tokenizer.get_vocab() else [PAD_TOKEN]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    tokenizer.pad_token = PAD_TOKEN
    return added


def configure_tokenizer(tokenizer: PreTrainedTokenizerBase, *, chat_template: str | None = None,
                        directions: bool = False) -> list[str]:
    """Prepare a tokenizer for a stage (in place); returns the tokens added to its vocabulary.

    - chat template (`batray.models.chat.resolve_chat_template`): the model's own unless
      `chat_template` says otherwise; BatGPT's (adding `<eot>`/`<eop>`) for one without a template.
    - `directions`: the model is trained with Eq. 1 here, so add the direction tokens with `<|l2r|>` as
      BOS. A tokenizer that already has them always reads with `<|l2r|>` first.
    - a pad token: EOS when there is none (no new token).
    """
    from batray.models.chat import apply_chat_template_choice

    added = apply_chat_template_choice(tokenizer, chat_template)
    if directions or has_direction_tokens(tokenizer):
        added += add_direction_tokens(tokenizer)
    added += ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"  # generation-friendly; training code builds its own tensors
    return added


def load_tokenizer(path: str, *, chat_template: str | None = None, directions: bool = False) -> PreTrainedTokenizerBase:
    """A checkpoint's (or hub id's) tokenizer, prepared by `configure_tokenizer`.

    Tokens it adds need the model's embeddings resized: load model and tokenizer together with
    `batray.models.loading.load_model_and_tokenizer`, which does that.
    """
    tok = read_tokenizer(path)
    added = configure_tokenizer(tok, chat_template=chat_template, directions=directions)
    if added:
        log.info("tokenizer %s: added %s", path, ", ".join(added))
    return tok


def read_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained` with a one-line error."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise BatrayError(f"cannot load a tokenizer from {path!r}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def resize_for_tokenizer(model, tokenizer: PreTrainedTokenizerBase, *, name: str = "model") -> bool:
    """Grow the embeddings (and the head, tied or not) to the tokenizer's size; see
    `batray.models.loading.resize_embeddings`."""
    from batray.models.loading import resize_embeddings

    return resize_embeddings(model, len(tokenizer), name=name)


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))
