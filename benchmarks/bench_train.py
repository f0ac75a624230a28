"""Training throughput: the Ray Train pretraining job vs a bare single-process torch loop.

Same model, same packed Eq. 1 batches (micro batch x seq_len), same optimizer, schedule and clipping,
one thread each (a Ray Train worker with 1 CPU gets OMP_NUM_THREADS=1). The job's tokens/s comes from
its own metrics (steady-state logging windows, startup excluded); the bare loop is timed the same way.
Prints both and the ratio (job / bare). Run: `python benchmarks/bench_train.py [--steps N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, head_dim=32)


def make_corpus(path: Path, n: int = 4000) -> str:
    import random

    rng = random.Random(0)
    words = "capital city river mountain language author born works lives north south old new great small".split()
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + f" {i}."}) + "\n")
    return str(path)


def bare_loop(cfg, tokenizer, corpus: str, steps: int, log_every: int) -> float:
    """Single process, plain torch: the same model/batches/optimizer as the job, no Ray, no DeepSpeed."""
    import numpy as np
    import torch

    from batray.data.io import read_rows
    from batray.models.presets import build_model, preset_config
    from batray.train.engine import WarmupCosine
    from batray.train.lm_data import corpus_blocks
    from batray.train.task import CausalLMTask, ModelSource

    torch.set_num_threads(1)
    pc = cfg.pretrain
    texts = np.asarray([r["text"] for r in read_rows(corpus, "corpus")[0]], dtype=object)
    cols = corpus_blocks({"text": texts}, tokenizer=tokenizer, seq_len=pc.seq_len, direction="both", r2l_share=1.0,
                         held_out_fraction=0.0, split="train", seed=0)
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tokenizer), **MODEL), seed=0)
    task = CausalLMTask(model_source=ModelSource(), tokenizer_dir="")
    opt = torch.optim.AdamW(model.parameters(), lr=pc.optim.lr, betas=pc.optim.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(pc.optim.warmup_steps, steps, "cosine", 0.1))
    mbs, rates = pc.micro_batch_size, []
    t0, tokens = time.perf_counter(), 0
    for step in range(steps):
        i = (step * mbs) % (len(cols["input_ids"]) - mbs)
        batch = task.to_device({k: v[i:i + mbs] for k, v in cols.items()}, torch.device("cpu"))
        loss, _ = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), pc.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
        if (step + 1) % log_every == 0:
            rates.append(tokens / (time.perf_counter() - t0))
            t0, tokens = time.perf_counter(), 0
    return statistics.median(rates[1:] or rates)


def ray_job(cfg, corpus: str, out: str, steps: int) -> float:
    from batray.metrics import read_metrics
    from batray.train.pretrain import run_pretrain

    run_pretrain(cfg, out, corpus=corpus, model_overrides=MODEL, max_steps=steps)
    rates = [r["tokens_per_s"] for r in read_metrics(out) if "tokens_per_s" in r]
    return statistics.median(rates[1:] or rates)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray

    from batray.config import load_config
    from batray.models.tokenizer import load_tokenizer

    log_every = max(1, args.steps // 6)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp, "corpus.jsonl"))
        cfg = load_config(None, [
            f"run_dir={tmp}", "data.held_out_fraction=0", "model.vocab_size=1024",
            f"pretrain.seq_len={args.seq_len}", f"pretrain.micro_batch_size={args.micro_batch}",
            f"pretrain.log_every={log_every}", "pretrain.ckpt_every=100000", "pretrain.optim.warmup_steps=5",
        ])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
        job = ray_job(cfg, corpus, str(Path(tmp, "pretrain")), args.steps)
        tokenizer = load_tokenizer(str(Path(tmp, "pretrain", "tokenizer")))
        bare = bare_loop(cfg, tokenizer, corpus, args.steps, log_every)
        ray.shutdown()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg "
          f"{os.getloadavg()[0]:.1f}; model {MODEL}, micro batch {args.micro_batch} x {args.seq_len} tokens, "
          f"{args.steps} steps, 1 thread each")
    print(f"bare torch loop : {bare:10.0f} tokens/s")
    print(f"Ray Train job   : {job:10.0f} tokens/s  (1 worker, DeepSpeed ZeRO-0, Ray Data input)")
    print(f"ratio job/bare  : {job / bare:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
