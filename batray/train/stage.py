"""Driver-side helpers shared by the training stages: data locations, tokenizer, step overrides."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from batray.config import RecipeConfig, TrainConfig, join_uri
from batray.config.recipe import format_validation_error
from batray.data.io import exists
from batray.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def demo_data_file(cfg: RecipeConfig, name: str) -> str:
    """`<run_dir>/data/<name>`, generating the demo world there first when it is missing."""
    data_dir = join_uri(cfg.run_dir, "data")
    path = join_uri(data_dir, name)
    if not exists(path):
        try:
            from batray.data.demo import generate_demo
        except ImportError:  # pragma: no cover - the demo module ships with batray
            raise DataError(f"{path} does not exist and the demo generator is unavailable; set data paths") from None
        log.info("no data configured: generating the demo world into %s", data_dir)
        generate_demo(data_dir, cfg.data.demo)
    if not exists(path):
        raise DataError(f"{path} does not exist (the demo world has no {name!r}); set the data path in the config")
    return path


def with_max_steps(section: TrainConfig, max_steps: int | None) -> TrainConfig:
    """A copy of a stage's TrainConfig with `max_steps` replaced (validated: warmup must still fit)."""
    if max_steps is None:
        return section
    data = section.model_dump()
    data["max_steps"] = max_steps
    try:
        return type(section).model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"max_steps={max_steps}")) from None


def prepare_tokenizer(cfg: RecipeConfig, out_dir: str, texts, init_from: str | None, *, directions: bool = False,
                      reward: bool = False):
    """The stage's tokenizer, saved to `<out_dir>/tokenizer` (a resumed run reuses that copy).

    Order: the saved copy; the checkpoint's tokenizer when continuing from one; `model.tokenizer`;
    `model.path`'s; else a byte-level BPE of `model.vocab_size` trained on `texts` (a callable returning
    an iterable). Prepared with `model.chat_template`; `directions`: the stage trains Eq. 1 (the
    direction tokens are added, `<|l2r|>` as BOS); `reward`: a pad token distinct from the stop tokens.
    The model is resized to the tokenizer on the workers (`ModelSource.vocab_size`).
    """
    from batray.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe

    tok_dir = Path(out_dir, "tokenizer")
    if (tok_dir / "tokenizer_config.json").exists():
        return load_tokenizer(str(tok_dir)), str(tok_dir)
    options = dict(chat_template=cfg.model.chat_template, directions=directions)
    if init_from is not None:
        tokenizer = load_tokenizer(init_from, **options)
    elif cfg.model.tokenizer is not None:
        tokenizer = load_tokenizer(cfg.model.tokenizer, **options)
    elif cfg.model.path is not None:
        tokenizer = load_tokenizer(cfg.model.path, **options)
    else:
        log.info("training a byte-level BPE tokenizer (vocab %d) on the corpus", cfg.model.vocab_size)
        tokenizer = train_bpe(texts(), vocab_size=cfg.model.vocab_size)
        if cfg.model.chat_template not in (None, "batgpt"):
            from batray.models.chat import apply_chat_template_choice

            apply_chat_template_choice(tokenizer, cfg.model.chat_template)
    if reward:
        from batray.reward.model import prepare_reward_tokenizer

        prepare_reward_tokenizer(tokenizer)
    tok_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, tok_dir)
    return load_tokenizer(str(tok_dir)), str(tok_dir)
