"""`batray pretrain`: bidirectional autoregressive pretraining (§3.1, Eq. 1) as a Ray Train job.

    batray pretrain --config FILE [--run-dir DIR] [pretrain.max_steps=200 ...]

Writes `<run_dir>/pretrain/`: `final/` (HF folder + tokenizer + batray.json), `metrics.jsonl`,
`tb/`, `tokenizer/`, checkpoints in `ray/`. Rerunning the command resumes or skips.
"""

from __future__ import annotations

import logging

from batray.config import RecipeConfig
from batray.data.io import ray_dataset, read_rows, write_rejected
from batray.errors import DataError
from batray.train import CausalLMTask, ModelSource, corpus_blocks, fit
from batray.train.stage import demo_data_file, prepare_tokenizer, with_max_steps
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.pretrain")


def run_pretrain(cfg: RecipeConfig, out_dir: str, *, init_from: str | None = None, model_overrides: dict | None = None,
                 max_steps: int | None = None, corpus: str | None = None, _fail_at_step: int | None = None) -> str:
    """Train (or resume, or skip when complete) Eq. 1 pretraining into `out_dir`; returns `out_dir/final`.

    init_from: a checkpoint to continue from (default `cfg.pretrain.init_from`, then `cfg.model.path`);
    model_overrides: GlmConfig fields for the preset when training from scratch (e.g. num_hidden_layers);
    max_steps: replaces `cfg.pretrain.max_steps`; corpus: replaces `cfg.data.corpus` (default: the demo
    corpus under `<run_dir>/data/`). `_fail_at_step` is for tests: the first attempt crashes there.
    """
    from batray.checkpoint import is_complete
    from batray.config import join_uri

    final = join_uri(out_dir, "final")
    if is_complete(final):
        log.info("pretrain: %s is complete, skipping", final)
        return final
    pcfg = with_max_steps(cfg.pretrain, max_steps)
    init_from = init_from or pcfg.init_from or cfg.model.path
    corpus = corpus or cfg.data.corpus or demo_data_file(cfg, "corpus.jsonl")

    rows, report = read_rows(corpus, "corpus")  # validation pass: every rejected row is counted
    log.info(report.summary(f"corpus {corpus}"))
    write_rejected(report, join_uri(out_dir, "rejected_corpus.jsonl"))
    if not rows:
        raise DataError(f"corpus {corpus}: no usable rows ({report.summary('corpus')})")
    tokenizer, tok_dir = prepare_tokenizer(cfg, out_dir, lambda: (r["text"] for r in rows), init_from,
                                           directions=True)  # Eq. 1: the direction tokens, <|l2r|> as BOS

    init_ray(cfg)
    quiet_ray_data()
    datasets = corpus_datasets(corpus, tokenizer, cfg, pcfg)
    eval_ds = held_out_dataset([r["text"] for r in rows], tokenizer, cfg, pcfg)
    if eval_ds is not None:
        datasets["eval"] = eval_ds
    del rows
    overrides = {} if init_from else {"vocab_size": len(tokenizer), **(model_overrides or {})}
    source = ModelSource(path=init_from, preset=None if init_from else cfg.model.preset, overrides=overrides,
                         seed=cfg.seed, dtype=cfg.model.dtype, vocab_size=len(tokenizer))
    task = CausalLMTask(stage="pretrain", model_source=source, tokenizer_dir=tok_dir, objective="eq1",
                        parent=init_from, config_hash=cfg.digest(),
                        extra_meta={"direction": pcfg.direction, "r2l_share": pcfg.r2l_share, "corpus": corpus})
    return fit(task, pcfg, out_dir, datasets=datasets, seed=cfg.seed, fail_at_step=_fail_at_step)


def block_kwargs(tokenizer, cfg: RecipeConfig, pcfg) -> dict:
    share = pcfg.r2l_share if pcfg.direction == "both" else 0.0
    return dict(tokenizer=tokenizer, seq_len=pcfg.seq_len, direction=pcfg.direction, r2l_share=share,
                held_out_fraction=cfg.data.held_out_fraction, seed=cfg.seed)


def corpus_datasets(corpus: str, tokenizer, cfg: RecipeConfig, pcfg) -> dict:
    """The training stream: corpus -> Eq. 1 blocks (Ray Data, streamed), held-out texts left out."""
    texts = ray_dataset(corpus).select_columns(["text"])
    train = texts.map_batches(corpus_blocks, fn_kwargs={**block_kwargs(tokenizer, cfg, pcfg), "split": "train"},
                              batch_size=256, batch_format="numpy")
    return {"train": train}


def held_out_dataset(texts: list[str], tokenizer, cfg: RecipeConfig, pcfg):
    """The held-out split (texts picked by a stable hash), only the `eval_batches` worth of blocks used.

    Built here from the validation pass's rows: it is small, and every worker reads all of it.
    """
    import numpy as np
    import ray.data

    if cfg.data.held_out_fraction <= 0:
        return None
    cols = corpus_blocks({"text": np.asarray(texts, dtype=object)}, **block_kwargs(tokenizer, cfg, pcfg), split="eval")
    n = min(len(cols["input_ids"]), pcfg.eval_batches * pcfg.micro_batch_size)
    if n == 0:
        log.warning("pretrain: the held-out split is empty; no eval metrics")
        return None
    return ray.data.from_items([{c: v[i] for c, v in cols.items()} for i in range(n)])


def quiet_ray_data() -> None:
    """Our own progress lines replace Ray Data's bars, which would interleave with them."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("pretrain", "bidirectional autoregressive pretraining (§3.1, Eq. 1) on Ray Train")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = resolve(args)
    final = run_pretrain(cfg, cfg.stage_dir("pretrain"))
    print(f"pretrain: final checkpoint {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
