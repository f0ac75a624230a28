"""The reward model R (§3.3): a causal LM backbone with a scalar head read at the last token.

R is transformers' `<Family>ForSequenceClassification` with `num_labels = 1` (for BatGPT's GLM family
`GlmForSequenceClassification`): the backbone of a causal LM checkpoint plus a linear `score` head,
read at each sequence's last non-pad token. Saved with `save_pretrained`, so
`AutoModelForSequenceClassification.from_pretrained(path)` loads it unchanged; the reward statistics
PPO normalizes with ride along in `batray.json` (`reward_stats`) and in `reward_stats.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from batray.checkpoint import read_marker, save_hf_checkpoint
from batray.errors import BatrayError
from batray.models.chat import stop_token_ids
from batray.models.loading import REWARD_NEED, check_architecture, from_pretrained, resize_embeddings
from batray.models.presets import PRESETS, preset_config
from batray.models.tokenizer import ensure_pad_token, load_tokenizer

STATS_FILE = "reward_stats.json"


def build_reward_model(init_from: str, tokenizer=None, *, seed: int | None = 0,
                       dtype: torch.dtype = torch.float32, chat_template: str | None = None
                       ) -> tuple[PreTrainedModel, object]:
    """(R, tokenizer) initialized from a causal LM checkpoint (its lm_head is dropped, a fresh score
    head is put on the backbone), from a reward checkpoint or any sequence classifier with one label
    (loaded as is), or from a preset with random weights (then `tokenizer` is required).

    The tokenizer (the checkpoint's, prepared like a causal LM's, when none is given) gets a pad token
    that is none of its stop tokens: the head reads each sequence's last non-pad token, which is the
    end-of-turn token. Tokens added grow the embeddings (seeded)."""
    if seed is not None:
        torch.manual_seed(seed)  # the new score head's (and any new embedding rows') initialization
    if init_from in PRESETS:
        if tokenizer is None:
            raise BatrayError(f"reward init_from preset {init_from!r} needs a tokenizer")
        prepare_reward_tokenizer(tokenizer)
        config = preset_config(init_from, vocab_size=len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id)
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    else:
        check_architecture(init_from, AutoModelForSequenceClassification, need=REWARD_NEED)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(init_from, chat_template=chat_template)
        prepare_reward_tokenizer(tokenizer)
        quiet = logging.getLogger("transformers.modeling_utils")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "score.weight newly initialized" is the point, not a warning
        try:
            model = from_pretrained(AutoModelForSequenceClassification, init_from, dtype=dtype, num_labels=1,
                                    need=REWARD_NEED)
        finally:
            quiet.setLevel(level)
        if model.config.num_labels != 1:
            raise BatrayError(f"{init_from!r} is a classifier with {model.config.num_labels} labels, not a reward model")
    model.config.pad_token_id = tokenizer.pad_token_id  # where the head reads: the last non-pad token
    resize_embeddings(model, len(tokenizer), name=f"reward model from {init_from}")
    return model, tokenizer


def prepare_reward_tokenizer(tokenizer) -> list[str]:
    """A pad token distinct from every stop token (a new `<pad>` if needed, e.g. Mistral pads with the
    `</s>` that ends its turns): R is read at the last non-pad token. Returns the tokens added."""
    return ensure_pad_token(tokenizer, distinct_from=stop_token_ids(tokenizer))


def pair_rewards(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(y), r(y')) of a batch from `collate_triples`: one forward over the 2B concatenated sequences."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    rewards = out.logits[:, 0].float()
    n = batch["d"].shape[0]
    return rewards[:n], rewards[n:]


def save_reward_model(model: PreTrainedModel, tokenizer, out_dir: str | Path, stats: dict, *, step: int = 0,
                      tokens_seen: int = 0, parent: str | None = None, config_hash: str | None = None,
                      extra: dict | None = None) -> Path:
    """Save R as an HF folder whose batray.json carries `reward_stats`, plus `reward_stats.json`."""
    out = save_hf_checkpoint(model, tokenizer, out_dir, stage="reward", step=step, tokens_seen=tokens_seen,
                             parent=parent, config_hash=config_hash, extra={"reward_stats": stats, **(extra or {})})
    Path(out, STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return out


def read_reward_stats(path: str | Path) -> dict:
    """The reward statistics of a reward checkpoint (mean, std, ... for PPO's normalization)."""
    meta = read_marker(path) or {}
    if "reward_stats" in meta:
        return meta["reward_stats"]
    p = Path(path, STATS_FILE)
    if p.is_file():
        return json.loads(p.read_text())
    raise BatrayError(f"{str(path)!r} has no reward statistics (not a batray reward checkpoint?)")
