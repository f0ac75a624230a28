"""SFT: `batray sft` (Eq. 2, Ray Train + DeepSpeed, `sft.packing`) vs TRL's `SFTTrainer` (packing, BFD,
padding-free), side by side in one run on the same tokens.

Data: the demo SFT set batray generates (`batray data demo`, the tiny recipe's world) plus the
Self-Instruct seed tasks from `../shared/datasets/alpaca-seed` when present, read with batray's loader
and rendered once with the model's chat template (`build_sft_sample`, loss on the last assistant turn):
both trainers get exactly these token ids and labels. Same starting model (a saved `batgpt-tiny`), batch
(micro batch rows of `--seq-len` tokens, each holding several whole samples), steps, AdamW settings,
constant LR, clipping, one thread each (a 1-CPU Ray Train worker runs with OMP_NUM_THREADS=1).

Throughput is steady state: real (non-pad) tokens/s after the first logging window. TRL also runs at
its default (no packing: padded batches of `--batch` samples), for reference. Loss check: the
per-token loss of one fixed batch (the first `--batch` x 2 samples) under the same initial weights,
computed by batray's task on its packed rows and by TRL's `compute_loss` on its padding-free collation,
must agree to 1e-4.

    python benchmarks/bench_sft.py [--steps 60] [--batch 8] [--seq-len 256] [--no-write]

Appends (replaces) its section in benchmarks/RESULTS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEED_TASKS = ROOT.parent / "shared" / "datasets" / "alpaca-seed" / "seed_tasks.jsonl"
SECTION = "## SFT: batray sft vs TRL SFTTrainer (bench_sft.py)"


def prepare(work: Path, args):
    """The conversations (demo + seed tasks), a BPE tokenizer trained on them, the initial checkpoint,
    and the samples (ids, labels) both trainers learn from."""
    from batray.checkpoint import save_hf_checkpoint
    from batray.config import load_config
    from batray.data.demo import generate_demo
    from batray.data.load import load_sft
    from batray.data.sft import SampleError, build_sft_sample, chat_pieces
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import load_tokenizer, train_bpe

    demo_cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), []).data.demo
    files = generate_demo(str(work / "demo"), demo_cfg)
    sources = [files["sft"]] + ([str(SEED_TASKS)] if SEED_TASKS.exists() and not args.demo_only else [])
    conversations, counts = [], []
    for src in sources:
        convs, _ = load_sft(src)
        conversations += convs
        counts.append(f"{Path(src).parent.name}/{Path(src).name}: {len(convs)}")
    tokenizer = train_bpe(("".join(t for t, _ in chat_pieces(c)) for c in conversations), args.vocab)
    init = work / "init"
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tokenizer)), seed=args.seed)
    save_hf_checkpoint(model, tokenizer, init, stage="bench")
    tokenizer = load_tokenizer(str(init))  # what `prepare_tokenizer` loads from init_from
    kept, samples = [], []
    for c in conversations:
        try:
            s = build_sft_sample(tokenizer, c, args.seq_len, "last")
        except SampleError:
            continue
        kept.append(c)
        samples.append((s.input_ids, s.labels))
    data = work / "sft.jsonl"
    with data.open("w") as f:
        for c in kept:
            f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")
    return str(init), str(data), tokenizer, samples, counts


def real_tokens(row, pad_id: int) -> int:
    """Tokens of a packed row that belong to a sample (the pad tail is one-token segments of pad)."""
    n = len(row["input_ids"])
    while n and row["position_ids"][n - 1] == 0 and row["input_ids"][n - 1] == pad_id:
        n -= 1
    return n


def run_batray(init: str, data: str, tokenizer, samples, work: Path, args) -> dict:
    import ray

    from batray.config import load_config
    from batray.metrics import read_metrics
    from batray.train.lm_data import pack_sft_samples
    from batray.train.sft import run_sft

    cfg = load_config(None, [
        f"run_dir={work / 'batray'}", f"seed={args.seed}", "ray.num_cpus=2", "data.held_out_fraction=0",
        f"sft.max_steps={args.steps}", f"sft.micro_batch_size={args.batch}", f"sft.seq_len={args.seq_len}",
        "sft.packing=true", f"sft.optim.lr={args.lr}", "sft.optim.schedule=constant", "sft.optim.warmup_steps=0",
        "sft.optim.weight_decay=0", "sft.optim.grad_clip=1.0", f"sft.log_every={args.log_every}",
        f"sft.ckpt_every={args.steps}", f"sft.eval_every={args.steps}",
    ])
    out = work / "batray" / "sft"
    t0 = time.perf_counter()
    run_sft(cfg, str(out), init_from=init, data=data)
    wall = time.perf_counter() - t0
    ray.shutdown()
    rows = read_metrics(out)
    # the same rows, in the same order, as the job's Ray Data stream (deterministic, no shuffle)
    packed = pack_sft_samples(samples, args.seq_len, tokenizer.pad_token_id)
    per_batch = [sum(real_tokens(r, tokenizer.pad_token_id) for r in packed[i:i + args.batch])
                 for i in range(0, len(packed) - args.batch + 1, args.batch)]
    first, last = rows[0], rows[-1]
    tokens = sum(per_batch[(s - 1) % len(per_batch)] for s in range(first["step"] + 1, last["step"] + 1))
    return {"wall_s": wall, "tokens_per_s": tokens / (last["time"] - first["time"]), "rows": len(packed),
            "fill": sum(real_tokens(r, tokenizer.pad_token_id) for r in packed) / (len(packed) * args.seq_len), "final_loss": last["loss"]}


def trl_config(work: Path, args, packing: bool = True):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.95, max_grad_norm=1.0, logging_steps=args.log_every, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, seed=args.seed, bf16=False, disable_tqdm=True,
        max_length=args.seq_len, packing=packing, packing_strategy="bfd",  # TRL's documented fast path (padding-free)
        gradient_checkpointing=False,  # batray does not recompute activations either
    )


def run_trl(init: str, tokenizer, samples, work: Path, args, packing: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(init)
    dataset = Dataset.from_dict({"input_ids": [i for i, _ in samples], "labels": [lb for _, lb in samples]})
    marks: list[tuple[float, int]] = []

    class Timed(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")  # padded batches have one; a padding-free row is all real tokens
            tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            loss = super().training_step(model, inputs, num_items_in_batch)
            marks.append((time.perf_counter(), tokens))
            return loss

    trainer = Timed(model=model, args=trl_config(work / f"trl{int(packing)}", args, packing), train_dataset=dataset,
                    processing_class=tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    skip = args.log_every
    span = marks[-1][0] - marks[skip - 1][0]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"wall_s": wall, "tokens_per_s": sum(n for _, n in marks[skip:]) / span, "final_loss": losses[-1]}


def loss_check(init: str, tokenizer, samples, work: Path, args) -> tuple[float, float]:
    """Per-token loss of the same samples under the same initial weights: batray's packed rows vs TRL's
    padding-free batch (its own collator and `compute_loss`)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from batray.train.lm_data import pack_sft_samples
    from batray.train.task import CausalLMTask, ModelSource, Objective

    fixed = samples[: 2 * args.batch]
    model = AutoModelForCausalLM.from_pretrained(init).eval()
    task = CausalLMTask(model_source=ModelSource(path=init), tokenizer_dir=init, objective=Objective.INSTRUCTION,
                        packed=True)
    rows = pack_sft_samples(fixed, args.seq_len, tokenizer.pad_token_id)
    with torch.no_grad():
        ours, _ = task.loss(model, task.to_device({k: [r[k] for r in rows] for k in rows[0]}, torch.device("cpu")))
    dataset = Dataset.from_dict({"input_ids": [i for i, _ in fixed], "labels": [lb for _, lb in fixed]})
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(init), args=trl_config(work / "check", args),
                         train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([{"input_ids": i, "labels": lb} for i, lb in fixed])
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
    return float(ours), float(theirs)


def write_results(text: str) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION in old:  # replace this benchmark's previous section, keep everyone else's
        head, _, rest = old.partition(SECTION)
        nxt = rest.find("\n## ")
        old = head.rstrip("\n") + "\n" + (rest[nxt:] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-only", action="store_true", help="leave out the Self-Instruct seed tasks")
    p.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    import trl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init, data, tokenizer, samples, counts = prepare(work, args)
        n_tokens = sum(len(i) for i, _ in samples)
        print(f"data: {', '.join(counts)}; {len(samples)} samples fit seq_len {args.seq_len}, {n_tokens} tokens")
        ours_loss, trl_loss = loss_check(init, tokenizer, samples, work, args)
        print(f"loss check: batray {ours_loss:.6f}  TRL {trl_loss:.6f}  |diff| {abs(ours_loss - trl_loss):.2e}")
        load_before = os.getloadavg()[0]
        ours = run_batray(init, data, tokenizer, samples, work, args)
        theirs = run_trl(init, tokenizer, samples, work, args)
        padded = run_trl(init, tokenizer, samples, work, args, packing=False)
        load_after = os.getloadavg()[0]

    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    table = [("| | batray sft (`sft.packing`) | TRL SFTTrainer (`packing=True`, BFD, padding-free) | batray / TRL "
              "| TRL default (no packing, padded batches of samples) | batray / TRL default |"),
             "|---|---|---|---|---|---|",
             (f"| tokens/s (steady, real tokens) | {ours['tokens_per_s']:.0f} | {theirs['tokens_per_s']:.0f} | "
              f"**{ratio:.2f}** | {padded['tokens_per_s']:.0f} | {ours['tokens_per_s'] / padded['tokens_per_s']:.2f} |"),
             (f"| wall time incl. startup (s) | {ours['wall_s']:.0f} | {theirs['wall_s']:.0f} | "
              f"{ours['wall_s'] / theirs['wall_s']:.2f} | {padded['wall_s']:.0f} | |"),
             (f"| training loss, last window | {ours['final_loss']:.4f} | {theirs['final_loss']:.4f} | | "
              f"{padded['final_loss']:.4f} | |"),
             (f"| per-token loss, fixed batch of {2 * args.batch} samples, initial weights | {ours_loss:.6f} | "
              f"{trl_loss:.6f} | diff {abs(ours_loss - trl_loss):.1e} | | |")]
    machine = (f"{platform.platform()}, {os.cpu_count()} CPU cores (load average {load_before:.2f} before, "
               f"{load_after:.2f} after), torch {torch.__version__}, transformers {transformers.__version__}, "
               f"trl {trl.__version__}, one thread per trainer")
    text = "\n".join([
        SECTION, "",
        (f"Data: {', '.join(counts)} conversations; {len(samples)} samples fit seq_len {args.seq_len} "
        f"({n_tokens} tokens; loss on the last assistant turn), packed into {ours['rows']} rows "
        f"({ours['fill']:.1%} full). Model: batgpt-tiny (BPE vocab {len(tokenizer)}), same initial weights. "
        f"{args.steps} steps x {args.batch} rows of {args.seq_len} tokens, AdamW lr {args.lr} constant, "
        "betas (0.9, 0.95), no weight decay, clip 1.0."), "",
        *table, "",
        f"Machine: {machine}.",
    ])
    print("\n" + text)
    if not args.no_write:
        write_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
