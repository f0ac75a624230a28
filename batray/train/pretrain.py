"""Bidirectional autoregressive pretraining (§3.1, Eq. 1) as a Ray Train job (`batray pretrain`).

Writes `out_dir/`: `final/` (HF folder + tokenizer + batray.json), `metrics.jsonl`, `tb/`,
`tokenizer/`, checkpoints in `ray/` (`checkpoints/` with `pretrain.scaling.launch: in_process`, which makes
the corpus's blocks in this process instead of a Ray Data stream). Running it again resumes or skips.
"""

from __future__ import annotations

import logging

from batray.checkpoint import is_complete
from batray.config import RecipeConfig, join_uri
from batray.data.io import ray_dataset, read_rows, write_rejected
from batray.errors import DataError
from batray.ray_session import init_ray
from batray.train.launcher import fit
from batray.train.lm_data import corpus_blocks
from batray.train.memory_data import MemoryDataset
from batray.train.stage import prepare_tokenizer, with_max_steps
from batray.train.task import CausalLMTask, ModelSource, Objective

log = logging.getLogger("batray.pretrain")

CORPUS_BATCH = 256  # texts per `corpus_blocks` call (a block never spans two calls)


def run_pretrain(cfg: RecipeConfig, out_dir: str, *, corpus: str, init_from: str | None = None,
                 model_overrides: dict | None = None, max_steps: int | None = None) -> str:
    """Train (or resume, or skip when complete) Eq. 1 pretraining into `out_dir`; returns `out_dir/final`.

    corpus: `text` rows; init_from: a checkpoint to continue from (None: `cfg.model.preset` from scratch);
    model_overrides: GlmConfig fields for the preset when training from scratch (e.g. num_hidden_layers);
    max_steps: replaces `cfg.pretrain.max_steps`.
    """
    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("pretrain: %s is complete, skipping", final)
        return final
    pcfg = with_max_steps(cfg.pretrain, max_steps)

    rows, report = read_rows(corpus, "corpus")  # validation pass: every rejected row is counted
    log.info(report.summary(f"corpus {corpus}"))
    write_rejected(report, join_uri(out_dir, "rejected_corpus.jsonl"))
    if not rows:
        raise DataError(f"corpus {corpus}: no usable rows ({report.summary('corpus')})")
    tokenizer, tok_dir = prepare_tokenizer(cfg, out_dir, lambda: (r["text"] for r in rows), init_from,
                                           directions=True)  # Eq. 1: the direction tokens, <|l2r|> as BOS

    if pcfg.scaling.launch == "in_process":
        # the rows are here already (the validation pass): their blocks too, and no cluster for a Ray Data stream
        datasets = {"train": memory_blocks(rows, tokenizer, cfg, pcfg)}
    else:
        init_ray(cfg)
        datasets = corpus_datasets(corpus, tokenizer, cfg, pcfg)
    eval_cols = held_out_columns([r["text"] for r in rows], tokenizer, cfg, pcfg)
    if eval_cols is not None:  # small, and every worker reads all of it: rows in memory either way
        datasets["eval"] = MemoryDataset.from_columns(eval_cols)
    del rows
    overrides = {} if init_from else {"vocab_size": len(tokenizer), **(model_overrides or {})}
    source = ModelSource(path=init_from, preset=None if init_from else cfg.model.preset, overrides=overrides,
                         seed=cfg.seed, dtype=cfg.model.dtype, vocab_size=len(tokenizer))
    task = CausalLMTask(stage="pretrain", model_source=source, tokenizer_dir=tok_dir,
                        objective=Objective.BIDIRECTIONAL_LM, parent=init_from, config_hash=cfg.digest(),
                        extra_meta={"direction": pcfg.direction, "r2l_share": pcfg.r2l_share, "corpus": corpus})
    return fit(task, pcfg, out_dir, datasets=datasets, seed=cfg.seed, recipe=cfg)


def block_kwargs(tokenizer, cfg: RecipeConfig, pcfg) -> dict:
    share = pcfg.r2l_share if pcfg.direction == "both" else 0.0
    return dict(tokenizer=tokenizer, seq_len=pcfg.seq_len, direction=pcfg.direction, r2l_share=share,
                held_out_fraction=cfg.data.held_out_fraction, seed=cfg.seed)


def corpus_datasets(corpus: str, tokenizer, cfg: RecipeConfig, pcfg) -> dict:
    """The training stream: corpus -> Eq. 1 blocks (Ray Data, streamed), held-out texts left out."""
    texts = ray_dataset(corpus).select_columns(["text"])
    train = texts.map_batches(corpus_blocks, fn_kwargs={**block_kwargs(tokenizer, cfg, pcfg), "split": "train"},
                              batch_size=CORPUS_BATCH, batch_format="numpy")
    return {"train": train}


def memory_blocks(rows: list[dict], tokenizer, cfg: RecipeConfig, pcfg) -> MemoryDataset:
    """The training blocks of an in-process launch, made here in the stream's order: `corpus_blocks` over
    the same 256-row batches `corpus_datasets` maps (the corpus is tokenized before the first step)."""
    import numpy as np

    parts = [corpus_blocks({"text": np.asarray([r["text"] for r in rows[i:i + CORPUS_BATCH]], dtype=object)},
                           **block_kwargs(tokenizer, cfg, pcfg), split="train")
             for i in range(0, len(rows), CORPUS_BATCH)]
    columns = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    if not len(columns["input_ids"]):
        raise DataError(f"pretrain: the corpus makes no training block of {pcfg.seq_len} tokens")
    return MemoryDataset.from_columns(columns)


def held_out_columns(texts: list[str], tokenizer, cfg: RecipeConfig, pcfg) -> dict | None:
    """The held-out split's blocks (texts picked by a stable hash), only the `eval_batches` worth used.

    Built here from the validation pass's rows: it is small, and every worker reads all of it.
    """
    import numpy as np

    if cfg.data.held_out_fraction <= 0:
        return None
    cols = corpus_blocks({"text": np.asarray(texts, dtype=object)}, **block_kwargs(tokenizer, cfg, pcfg), split="eval")
    n = min(len(cols["input_ids"]), pcfg.eval_batches * pcfg.micro_batch_size)
    if n == 0:
        log.warning("pretrain: the held-out split is empty; no eval metrics")
        return None
    return {c: v[:n] for c, v in cols.items()}
