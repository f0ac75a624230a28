"""Loading any Hugging Face model with its tokenizer: one function, embeddings resized for added tokens.

Every stage, actor and tool that needs a model and its tokenizer calls `load_model_and_tokenizer`
(a local checkpoint folder or a hub id): the tokenizer is prepared for the stage
(`batray.models.tokenizer.configure_tokenizer`: chat template, direction tokens when the stage
trains Eq. 1, a pad token), and when that added tokens the model's embeddings (and its head, tied or
not) grow to match, which is logged. A model transformers cannot load as asked fails with one line
that names its model type and what is missing.

What a stock model gets:
- fine-tuned only (SFT, reward, PPO without Eq. 1): its tokenizer unchanged, except BatGPT's
  `<eot>`/`<eop>` when it has no chat template of its own (BatGPT's format is then used) and its EOS
  as the pad token when it has none;
- trained with Eq. 1 (pretraining, PPO's bidirectional ptx term): `<|l2r|>`/`<|r2l|>` as well, with
  `<|l2r|>` as its BOS, from that stage on (the checkpoint it writes carries them).
"""

from __future__ import annotations

import logging

import torch

from batray.errors import BatrayError

log = logging.getLogger(__name__)

CAUSAL_NEED = "batray's policies are causal LMs (AutoModelForCausalLM)"
REWARD_NEED = "a reward model or critic is a sequence classifier (AutoModelForSequenceClassification) on a causal LM"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_config(path: str):
    """The checkpoint's `PretrainedConfig` (no weights), with a one-line error."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BatrayError(f"cannot load a model from {path!r}: {_first_line(e)}") from None


def check_architecture(path: str, auto_class, config=None, need: str = "") -> None:
    """Refuse, in one line, a model whose type has no class under `auto_class` (e.g. a seq2seq model
    given as a causal LM, or a type without a sequence-classification head)."""
    import transformers

    config = config if config is not None else read_config(path)
    if type(config) not in auto_class._model_mapping:
        raise BatrayError(f"{path!r}: model type {config.model_type!r} ({type(config).__name__}) has no "
                          f"{auto_class.__name__} class in transformers {transformers.__version__}"
                          f"{'; ' + need if need else ''}")


def from_pretrained(auto_class, path: str, *, dtype: torch.dtype = torch.float32, need: str = "", **kwargs):
    """`auto_class.from_pretrained(path)` with the architecture checked first and one-line errors."""
    check_architecture(path, auto_class, need=need)
    try:
        return auto_class.from_pretrained(path, dtype=dtype, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise BatrayError(f"cannot load {path!r} as {auto_class.__name__}: {_first_line(e)}") from None


def resize_embeddings(model, num_tokens: int, *, name: str = "model") -> bool:
    """Grow the input embeddings (and the output head, tied or untied) to `num_tokens` rows; logged.

    New rows start at the mean of the old ones (transformers' mean resizing), drawn from torch's RNG:
    seed it first so every worker of a stage builds the same rows.
    """
    emb = model.get_input_embeddings()
    rows = emb.num_embeddings
    if rows >= num_tokens:
        return False
    model.resize_token_embeddings(num_tokens)
    head = model.get_output_embeddings()
    kind = "no head" if head is None else ("tied head" if head.weight is model.get_input_embeddings().weight
                                           else "untied head resized too")
    log.info("%s: embeddings resized %d -> %d rows for the tokens batray added (%s)", name, rows, num_tokens, kind)
    return True


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
                   vocab_size: int | None = None, seed: int | None = None):
    """A causal LM checkpoint (local folder or hub id), embeddings grown to `vocab_size` when given."""
    from transformers import AutoModelForCausalLM

    model = from_pretrained(AutoModelForCausalLM, path, dtype=dtype,
                            need=CAUSAL_NEED)
    if vocab_size and model.get_input_embeddings().num_embeddings < vocab_size:
        with torch.random.fork_rng(devices=[]):  # the new rows come from `seed`; the caller's RNG is untouched
            if seed is not None:
                torch.manual_seed(seed)
            resize_embeddings(model, vocab_size, name=str(path))
    return model.to(device)


def load_model_and_tokenizer(path: str, *, tokenizer=None, chat_template: str | None = None, directions: bool = False,
                             dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                             seed: int | None = 0):
    """(causal LM, tokenizer) of a checkpoint folder or hub id, ready to use together.

    tokenizer: an already prepared tokenizer (e.g. a stage's saved copy); default: the checkpoint's,
    prepared with `chat_template` (None: the model's own, BatGPT's when it has none) and `directions`
    (True when this stage trains Eq. 1). Tokens added to it grow the model's embeddings (seeded).
    Generation settings follow the tokenizer: pad id, BOS and the chat format's stop tokens.
    """
    from transformers import AutoModelForCausalLM

    from batray.models.chat import stop_token_ids
    from batray.models.tokenizer import load_tokenizer, pad_id

    check_architecture(path, AutoModelForCausalLM, need=CAUSAL_NEED)  # before the tokenizer: the model decides
    if tokenizer is None:
        tokenizer = load_tokenizer(path, chat_template=chat_template, directions=directions)
    model = load_causal_lm(path, dtype=dtype, vocab_size=len(tokenizer), seed=seed)
    configure_generation(model, tokenizer)
    model.config.pad_token_id = pad_id(tokenizer)
    log.debug("%s: stops at %s", path, tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)))
    return model.to(device), tokenizer


def configure_generation(model, tokenizer) -> None:
    """Point the model's generation config at the tokenizer's chat format: EOS = its stop tokens
    (end of turn first), pad and BOS ids. What `generation_config.json` of a saved checkpoint says,
    so plain `model.generate` stops where batray does."""
    from batray.models.chat import stop_token_ids
    from batray.models.tokenizer import pad_id

    gc = getattr(model, "generation_config", None)
    if gc is None or not getattr(model, "can_generate", lambda: False)():
        return
    stops = stop_token_ids(tokenizer, gc)
    gc.eos_token_id = stops if len(stops) > 1 else stops[0]
    gc.pad_token_id = pad_id(tokenizer)
    if tokenizer.bos_token_id is not None:
        gc.bos_token_id = tokenizer.bos_token_id


def prepare_checkpoint(src: str, dst: str, *, chat_template: str | None = None, directions: bool = False,
                       seed: int = 0) -> str:
    """`src` as this stage needs it, saved once at `dst` when anything changes (tokens added, template
    replaced), so every actor of a multi-actor stage (PPO's policy, reference, rollout engines) loads the
    same resized weights. Returns the folder to load from: `src` itself when nothing changes."""
    from pathlib import Path

    from batray.checkpoint import is_complete, save_hf_checkpoint
    from batray.models.tokenizer import load_tokenizer, read_tokenizer

    if is_complete(dst):
        return str(dst)
    original = read_tokenizer(src)
    tokenizer = load_tokenizer(src, chat_template=chat_template, directions=directions)
    unchanged = (len(tokenizer) == len(original) and tokenizer.chat_template == original.chat_template
                 and tokenizer.bos_token == original.bos_token and tokenizer.pad_token == original.pad_token)
    if unchanged:
        return str(src)
    model, tokenizer = load_model_and_tokenizer(src, tokenizer=tokenizer, seed=seed)
    log.info("prepared %s for this stage (tokenizer: %d tokens, chat template %s) into %s", src, len(tokenizer),
             "kept" if tokenizer.chat_template == original.chat_template else "set", dst)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    save_hf_checkpoint(model, tokenizer, dst, stage="prepare", parent=str(src),
                       extra={"directions": directions, "chat_template": chat_template})
    return str(dst)
