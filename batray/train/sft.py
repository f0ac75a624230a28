"""Instruction tuning (§3.2, Eq. 2) as a Ray Train job (`batray sft`), from a pretrained checkpoint.

Rows are `prompt`/`response` pairs or multi-turn `messages`, rendered with the model's chat template;
the loss is on the last assistant turn (`sft.loss_on: all` for every assistant turn); long
conversations lose their oldest turns first, never the response. Writes `out_dir/` as pretraining does.
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
from batray.errors import DataError
from batray.ray_session import init_ray
from batray.train.launcher import fit
from batray.train.lm_data import is_held_out, pad_sft_sample
from batray.train.stage import prepare_tokenizer, with_max_steps
from batray.train.task import CausalLMTask, ModelSource, Objective

log = logging.getLogger("batray.sft")


def run_sft(cfg: RecipeConfig, out_dir: str, *, init_from: str, data, max_steps: int | None = None) -> str:
    """Train (or resume, or skip when complete) Eq. 2 into `out_dir` from `init_from`; returns `out_dir/final`.

    data: a data source (`batray.config.sources.DataSpec`) of SFT rows in any layout batray reads.
    """
    import ray.data

    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("sft: %s is complete, skipping", final)
        return final
    scfg = with_max_steps(cfg.sft, max_steps)
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
    task = CausalLMTask(model_source=source, tokenizer_dir=tok_dir, stage="sft", objective=Objective.INSTRUCTION,
                        parent=init_from, config_hash=cfg.digest(), extra_meta={"loss_on": scfg.loss_on, "data": data},
                        lora=scfg.lora)
    return fit(task, scfg, out_dir, datasets=datasets, seed=cfg.seed, recipe=cfg)
