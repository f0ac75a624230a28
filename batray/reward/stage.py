"""The reward model of §3.3, trained with the paper's hinge loss (Eq. 3) on Ray Train (`batray reward`).

Reads preferences (the preferences contract, or the `chosen`/`rejected` layout such as Anthropic
HH-RLHF), starts from a causal LM (a fresh scalar head), a reward checkpoint or a preset, and writes
`out_dir/`: `final/` (loads with `AutoModelForSequenceClassification`; `reward_stats.json` and
`batray.json` carry the held-out accuracy, tie accuracy, reward mean/std for PPO and the calibration
table), `metrics.jsonl`, `tb/`, `tokenizer/`, `held_out.jsonl`, checkpoints in `ray/`. Running it
again resumes from the last checkpoint or skips when `final/` is complete.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from batray.checkpoint import is_complete
from batray.config import RecipeConfig, join_uri
from batray.data.formats import Keys
from batray.data.io import write_rejected
from batray.data.sources import source_exists
from batray.errors import BatrayError, DataError
from batray.models.hub import is_hub_id
from batray.models.presets import PRESETS, is_checkpoint_dir
from batray.reward.data import encode_triples, load_triples, render, split_held_out
from batray.reward.task import RewardTask, triple_rows, write_triples
from batray.train.launcher import fit
from batray.train.memory_data import MemoryDataset
from batray.train.stage import prepare_tokenizer, with_max_steps

log = logging.getLogger("batray.reward")


def run_reward(cfg: RecipeConfig, out_dir: str, *, init_from: str, data, max_steps: int | None = None) -> str:
    """Train (or resume, or skip when complete) the reward model into `out_dir`; returns `out_dir/final`.

    init_from: a causal LM checkpoint (a fresh scalar head is added), a reward checkpoint, or a preset
    name (random weights; the tokenizer is then `model.tokenizer` or a BPE trained on the data).
    data: preference rows (the preferences contract or a chosen/rejected layout).
    """
    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("reward: %s is complete, skipping", final)
        return final
    rcfg = with_max_steps(cfg.reward, max_steps)
    if init_from not in PRESETS and not is_checkpoint_dir(init_from) and not is_hub_id(init_from):
        raise BatrayError(f"reward.init_from {init_from!r}: not a checkpoint folder, a hub id or a preset "
                          f"({', '.join(PRESETS)}); run `batray sft` first or set reward.init_from")
    if not source_exists(data):
        raise DataError(f"reward data {data!r} does not exist; run `batray prefs` first or set reward.data")

    triples, report, layout = load_triples(data, Keys.of("reward", cfg.reward))
    log.info("%s (%s layout)", report.summary(f"reward data {data}"), layout)
    write_rejected(report, join_uri(out_dir, "rejected_preferences.jsonl"))
    texts = lambda: (render(t.context, r) for t in triples for r in (t.response_a, t.response_b))  # noqa: E731
    tokenizer, tok_dir = prepare_tokenizer(cfg, out_dir, texts, None if init_from in PRESETS else init_from,
                                           reward=True)
    encoded, enc_report = encode_triples(tokenizer, triples, rcfg.seq_len)
    train, held = split_held_out(encoded, rcfg.held_out_fraction)
    log.info("encoded %s; %d train / %d held out", enc_report.summary(), len(train), len(held))
    if len(train) < rcfg.micro_batch_size * rcfg.scaling.num_workers:
        raise DataError(f"reward data {data}: {len(train)} training pairs, fewer than one micro batch "
                        f"({rcfg.micro_batch_size}) per worker ({rcfg.scaling.num_workers})")
    random.Random(cfg.seed).shuffle(train)  # one fixed order: the loop's data position stays exact
    held_path = str(Path(out_dir, "held_out.jsonl"))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_triples(held, held_path)

    pad = tokenizer.pad_token_id
    datasets = {"train": MemoryDataset.from_rows(triple_rows(train, rcfg.seq_len, pad))}  # in memory: no Ray Data
    if held:
        datasets["eval"] = MemoryDataset.from_rows(triple_rows(held[: rcfg.eval_batches * rcfg.micro_batch_size],
                                                           rcfg.seq_len, pad))
    task = RewardTask(
        init_from=init_from, tokenizer_dir=tok_dir, pad_id=pad, margin=rcfg.margin, tie_loss=rcfg.tie_loss,
        tie_band=rcfg.tie_band, held_out=held_path, eval_batch_size=rcfg.micro_batch_size, seed=cfg.seed,
        dtype=cfg.model.dtype, parent=init_from, config_hash=cfg.digest(),
        extra_meta={"data": data, "layout": layout, "train_pairs": len(train), "held_out_pairs": len(held),
                    "tie_share": enc_report.counts[0] / max(1, enc_report.total)},
        lora=rcfg.lora, packed=rcfg.packing,
    )
    return fit(task, rcfg, out_dir, datasets=datasets, seed=cfg.seed, recipe=cfg)


def summary(final: str) -> str:
    from batray.reward.evaluate import format_calibration
    from batray.reward.model import read_reward_stats

    stats = read_reward_stats(final)
    lines = [f"reward: final checkpoint {final}",
             f"  reward mean {stats['mean']:.4f}  std {stats['std']:.4f}  (saved for PPO's normalization)"]
    held = stats.get("held_out")
    if held:
        acc = "-" if held["accuracy"] is None else f"{held['accuracy']:.3f}"
        tie = "-" if held["tie_accuracy"] is None else f"{held['tie_accuracy']:.3f}"
        lines.append(f"  held out: {held['strict_pairs']} strict pairs, accuracy {acc}; "
                     f"{held['ties']} ties, within the band {held['tie_band']:.3g}: {tie}")
        lines.append("  calibration:\n    " + format_calibration(held["calibration"]).replace("\n", "\n    "))
    return "\n".join(lines)
