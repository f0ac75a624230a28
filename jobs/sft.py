"""`batray sft`: instruction tuning (§3.2, Eq. 2) as a Ray Train job, from a pretraining checkpoint.

    batray sft --config FILE [--run-dir DIR] [sft.init_from=PATH] [sft.loss_on=all ...]

Rows are `prompt`/`response` pairs or multi-turn `messages` (DESIGN.md §3), rendered in BatGPT's chat
format; the loss is on the last assistant turn (`sft.loss_on: all` for every assistant turn); long
conversations lose their oldest turns first, never the response. Writes `<run_dir>/sft/`.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from batray.checkpoint import is_complete
from batray.config import RecipeConfig, join_uri
from batray.data.formats import Keys
from batray.data.io import write_rejected
from batray.data.load import load_sft
from batray.data.sft import SampleError, build_sft_sample
from batray.errors import BatrayError, DataError
from batray.train import CausalLMTask, ModelSource, fit, pad_sft_sample
from batray.train.lm_data import is_held_out
from batray.train.stage import demo_data_file, prepare_tokenizer, with_max_steps
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.sft")

# Where a recipe's SFT starts when `sft.init_from` is null: the latest model stage that finished.
UPSTREAM_STAGES = ("expand", "grow", "pretrain")


def run_sft(cfg: RecipeConfig, out_dir: str, *, init_from: str, data: str | None = None,
            max_steps: int | None = None, _fail_at_step: int | None = None) -> str:
    """Train (or resume, or skip when complete) Eq. 2 into `out_dir` from `init_from`; returns `out_dir/final`.

    data: SFT rows in any layout batray reads (default `cfg.sft.data`, `cfg.data.sft`, else the demo
    `<run_dir>/data/sft.jsonl`).
    """
    import ray.data

    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("sft: %s is complete, skipping", final)
        return final
    scfg = with_max_steps(cfg.sft, max_steps)
    data = data or cfg.sft.data or cfg.data.sft or demo_data_file(cfg, "sft.jsonl")
    conversations, report = load_sft(data, Keys.of("sft", cfg.sft))
    tokenizer, tok_dir = prepare_tokenizer(cfg, out_dir, None, init_from)
    train_rows, eval_rows, truncated = [], [], 0
    for messages in conversations:
        try:
            sample = build_sft_sample(tokenizer, messages, scfg.seq_len, scfg.loss_on)
        except SampleError as e:
            report.rejected.append({"reason": str(e), "row": messages})
            continue
        truncated += sample.dropped_turns > 0
        padded = {k: np.asarray(v, dtype=np.int32)  # fixed-shape tensor columns in Ray Data
                  for k, v in pad_sft_sample(sample.input_ids, sample.labels, scfg.seq_len, tokenizer.pad_token_id).items()}
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        (eval_rows if is_held_out(key, cfg.data.held_out_fraction, cfg.seed) else train_rows).append(padded)
    log.info("%s; %d truncated from the oldest turns; %d train / %d held out", report.summary(f"sft data {data}"),
             truncated, len(train_rows), len(eval_rows))
    write_rejected(report, join_uri(out_dir, "rejected_sft.jsonl"))
    if not train_rows:
        raise DataError(f"sft data {data}: no usable samples ({report.summary('sft')})")

    init_ray(cfg)
    datasets = {"train": ray.data.from_items(train_rows)}
    if eval_rows:
        datasets["eval"] = ray.data.from_items(eval_rows[: scfg.eval_batches * scfg.micro_batch_size])
    source = ModelSource(path=init_from, seed=cfg.seed, dtype=cfg.model.dtype, vocab_size=len(tokenizer))
    task = CausalLMTask(model_source=source, tokenizer_dir=tok_dir, stage="sft", objective="eq2", parent=init_from,
                        config_hash=cfg.digest(), extra_meta={"loss_on": scfg.loss_on, "data": data})
    return fit(task, scfg, out_dir, datasets=datasets, seed=cfg.seed, fail_at_step=_fail_at_step)


def default_init_from(cfg: RecipeConfig) -> str:
    """`sft.init_from`, else the run's expand/grow/pretrain output (the first that is complete)."""
    if cfg.sft.init_from:
        return cfg.sft.init_from
    for stage in UPSTREAM_STAGES:
        candidate = join_uri(cfg.stage_dir(stage), "final")
        if is_complete(candidate):
            return candidate
    raise BatrayError(
        f"sft needs a starting checkpoint: set sft.init_from=PATH or run `batray pretrain` first "
        f"(looked for {', '.join(s + '/final' for s in UPSTREAM_STAGES)} under {cfg.run_dir})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("sft", "instruction tuning on prompt/response and dialogues (§3.2, Eq. 2)")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = resolve(args)
    final = run_sft(cfg, cfg.stage_dir("sft"), init_from=default_init_from(cfg))
    print(f"sft: final checkpoint {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
