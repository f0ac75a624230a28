"""Instruction tuning (§3.2, Eq. 2) as a Ray Train job (`batray sft`), from a pretrained checkpoint.

Rows are `prompt`/`response` pairs or multi-turn `messages`, rendered with the model's chat template;
the loss is on the last assistant turn (`sft.loss_on: all` for every assistant turn); long
conversations lose their oldest turns first, never the response. One sample per row, right-padded, or
with `sft.packing` several whole samples per row (`pack_sft_samples`), each attending only to itself. Writes `out_dir/` as pretraining does.
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
from batray.train.launcher import fit
from batray.train.lm_data import is_held_out, pack_sft_samples, pad_sft_sample
from batray.train.memory_data import MemoryDataset
from batray.train.stage import prepare_tokenizer, with_max_steps
from batray.train.task import CausalLMTask, ModelSource, Objective

log = logging.getLogger("batray.sft")


def run_sft(cfg: RecipeConfig, out_dir: str, *, init_from: str, data, max_steps: int | None = None) -> str:
    """Train (or resume, or skip when complete) Eq. 2 into `out_dir` from `init_from`; returns `out_dir/final`.

    data: a data source (`batray.config.sources.DataSpec`) of SFT rows in any layout batray reads.
    """
    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("sft: %s is complete, skipping", final)
        return final
    scfg = with_max_steps(cfg.sft, max_steps)
    conversations, report = load_sft(data, Keys.of("sft", cfg.sft))
    tokenizer, tok_dir = prepare_tokenizer(cfg, out_dir, None, init_from)
    train_samples, eval_rows, truncated = [], [], 0
    for messages in conversations:
        try:
            sample = build_sft_sample(tokenizer, messages, scfg.seq_len, scfg.loss_on)
        except SampleError as e:
            report.rejected.append({"reason": str(e), "row": messages})
            continue
        truncated += sample.dropped_turns > 0
        key = json.dumps(messages, ensure_ascii=False, sort_keys=True)
        if is_held_out(key, cfg.data.held_out_fraction, cfg.seed):
            eval_rows.append(pad_sft_sample(sample.input_ids, sample.labels, scfg.seq_len, tokenizer.pad_token_id))
        else:
            train_samples.append((sample.input_ids, sample.labels))
    if scfg.packing:
        train_rows = pack_sft_samples(train_samples, scfg.seq_len, tokenizer.pad_token_id)
    else:
        train_rows = [pad_sft_sample(ids, labels, scfg.seq_len, tokenizer.pad_token_id) for ids, labels in train_samples]
    log.info("%s; %d truncated from the oldest turns; %d train / %d held out%s", report.summary(f"sft data {data}"),
             truncated, len(train_samples), len(eval_rows),
             f"; packed into {len(train_rows)} rows of {scfg.seq_len}" if scfg.packing else "")
    write_rejected(report, join_uri(out_dir, "rejected_sft.jsonl"))
    if not train_rows:
        raise DataError(f"sft data {data}: no usable samples ({report.summary('sft')})")

    datasets = {"train": MemoryDataset.from_rows(train_rows, dtype=np.int32)}  # in memory already: no Ray Data
    if eval_rows:
        datasets["eval"] = MemoryDataset.from_rows(eval_rows[: scfg.eval_batches * scfg.micro_batch_size],
                                                   dtype=np.int32)
    source = ModelSource(path=init_from, seed=cfg.seed, dtype=cfg.model.dtype, vocab_size=len(tokenizer))
    task = CausalLMTask(model_source=source, tokenizer_dir=tok_dir, stage="sft", objective=Objective.INSTRUCTION,
                        parent=init_from, config_hash=cfg.digest(), extra_meta={"loss_on": scfg.loss_on, "data": data},
                        lora=scfg.lora, packed=scfg.packing)
    return fit(task, scfg, out_dir, datasets=datasets, seed=cfg.seed, recipe=cfg)
