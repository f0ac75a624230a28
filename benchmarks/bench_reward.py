"""Reward model: `batray reward` (Eq. 3 hinge loss, Ray Train + DeepSpeed) vs TRL's `RewardTrainer`
(Bradley-Terry loss, HF Trainer), side by side in one run on Anthropic HH-RLHF (harmless) pairs.

Same starting model (a saved `batgpt-tiny` causal LM, the same seeded scalar head on both sides), same
tokenizer (a byte-level BPE trained on the data), the same tokenized train/held-out split (chat
format, truncated to `--seq-len` from the oldest turns), batch size, steps, AdamW settings, constant
LR and gradient clipping, one thread each (a 1-CPU Ray Train worker runs with OMP_NUM_THREADS=1).
Both final models are scored by the same code on the same held-out pairs (30% of the 2,312 pairs by
default, ~690), and the accuracies are compared pair by pair: each side's Wilson 95% interval, the paired
difference with its 95% interval (the pairs only one side ranks right decide it), and a paired bootstrap
interval of the ratio. Throughput is steady state: pairs/s and real (non-pad) tokens/s after the first
logging window, excluding evaluation.

Each side at its best documented setting: batray with `reward.packing=true` (a micro batch's 2B
sequences packed whole into fewer rows; `--no-packing` for padded rows), TRL's `RewardTrainer` with its
default collation (padded to the batch's longest; it has no padding-free option for reward models).

    python benchmarks/bench_reward.py [--steps 150] [--batch 16] [--seq-len 192] [--held-out 0.3] [--no-write]

Skips (exit 0) when the data file is absent. Appends its section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "datasets" / "hh-rlhf-harmless" / "test.jsonl.gz"
SECTION = "## Reward model: batray reward vs TRL RewardTrainer (bench_reward.py)"


def prepare(data: str, work: Path, seq_len: int, vocab: int, held_out: float, seed: int):
    """Tokenizer + initial causal LM checkpoint + the split both trainers use."""
    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import train_bpe
    from batray.reward.data import encode_triples, load_triples, render, split_held_out

    triples, report, layout = load_triples(data)
    print(f"data: {report.summary(data)} ({layout})")
    tokenizer = train_bpe((render(t.context, r) for t in triples for r in (t.response_a, t.response_b)), vocab)
    init = work / "init"
    save_hf_checkpoint(build_model(preset_config("batgpt-tiny", vocab_size=len(tokenizer)), seed=seed), tokenizer,
                       init, stage="bench")
    encoded, enc_report = encode_triples(tokenizer, triples, seq_len)
    train, held = split_held_out(encoded, held_out)
    print(f"encoded: {enc_report.summary()}; {len(train)} train / {len(held)} held out")
    return str(init), tokenizer, train, held


def run_batray(data: str, init: str, work: Path, args) -> dict:
    import ray

    from batray.config import load_config
    from batray.metrics import read_metrics
    from batray.reward.stage import run_reward

    cfg = load_config(None, [
        f"run_dir={work / 'batray'}", f"seed={args.seed}", "ray.num_cpus=2",
        f"reward.max_steps={args.steps}", f"reward.micro_batch_size={args.batch}", f"reward.seq_len={args.seq_len}",
        f"reward.optim.lr={args.lr}", "reward.optim.schedule=constant", "reward.optim.weight_decay=0",
        "reward.optim.grad_clip=1.0", f"reward.log_every={args.log_every}", f"reward.eval_every={args.steps}",
        f"reward.ckpt_every={args.steps}", f"reward.held_out_fraction={args.held_out}", "reward.eval_batches=1",
        f"reward.packing={str(args.packing).lower()}",
    ])
    out = work / "batray" / "reward"
    t0 = time.perf_counter()
    final = run_reward(cfg, str(out), init_from=init, data=data)
    wall = time.perf_counter() - t0
    ray.shutdown()
    rows = read_metrics(out)
    # steady windows: after the first, before the last (which also evaluates)
    steady = rows[1:-1]
    t_span = rows[-2]["time"] - rows[0]["time"]
    pairs = (rows[-2]["step"] - rows[0]["step"]) * args.batch
    return {"final": final, "wall_s": wall, "pairs_per_s": pairs / t_span,
            "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
            "train_accuracy": rows[-1]["accuracy"]}


def run_trl(init: str, tokenizer, train, work: Path, args) -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from batray.reward.model import build_reward_model

    torch.set_num_threads(1)
    model, _ = build_reward_model(init, tokenizer, seed=args.seed)  # the head batray's task builds, bit for bit
    pairs = [(t.ids_a, t.ids_b) if t.d < 0 else (t.ids_b, t.ids_a) for t in train if t.d != 0]
    rng = random.Random(args.seed)
    rng.shuffle(pairs)
    dataset = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    marks: list[tuple[float, int]] = []  # (time after the step, real tokens in it)

    class Timed(RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            tokens = int(inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            marks.append((time.perf_counter(), tokens))
            return loss

    targs = RewardConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.95, max_grad_norm=1.0, logging_steps=args.log_every, save_strategy="no", report_to=[],
        use_cpu=True, dataloader_num_workers=0, seed=args.seed, max_length=None, disable_dropout=True,
        center_rewards_coefficient=None, bf16=False, disable_tqdm=True,
        gradient_checkpointing=False,  # TRL defaults it on; batray does not recompute activations either
    )
    trainer = Timed(model=model, args=targs, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    skip = args.log_every  # the same warm-up the batray figure drops (its first logging window)
    span = marks[-1][0] - marks[skip - 1][0]
    return {"model": trainer.model, "wall_s": wall, "pairs_per_s": (len(marks) - skip) * args.batch / span,
            "tokens_per_s": sum(n for _, n in marks[skip:]) / span}


def held_out_metrics(model, held, pad_id: int, batch: int) -> dict:
    """Accuracy plus the per-pair correctness (strict pairs, in order) the paired comparison uses."""
    from batray.reward.evaluate import reward_metrics, score_triples

    r_a, r_b, d = score_triples(model, held, pad_id, batch)
    strict = d != 0
    right = ((d.float() * (r_b - r_a)) > 0)[strict].numpy()
    return {**reward_metrics(r_a, r_b, d, tie_band=0.25), "right": right}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k / n."""
    p, z2 = k / n, z * z
    mid, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * ((p * (1 - p) + z2 / (4 * n)) / n) ** 0.5 / (1 + z2 / n)
    return mid - half, mid + half


def paired_comparison(ours, theirs, *, resamples: int = 4000, seed: int = 0) -> dict:
    """Paired accuracy difference on the same pairs (Wald interval of the mean per-pair difference:
    only the pairs one side ranks right and the other wrong count) and a paired bootstrap interval of
    the accuracy ratio."""
    import numpy as np

    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    n, diff = len(a), a - b
    se = diff.std(ddof=1) / n ** 0.5
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    ratios = a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-12)
    return {"n": n, "only_ours": int((diff > 0).sum()), "only_theirs": int((diff < 0).sum()),
            "diff": diff.mean(), "diff_lo": diff.mean() - 1.96 * se, "diff_hi": diff.mean() + 1.96 * se,
            "ratio_lo": float(np.quantile(ratios, 0.025)), "ratio_hi": float(np.quantile(ratios, 0.975))}


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
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--held-out", type=float, default=0.3)
    p.add_argument("--no-packing", dest="packing", action="store_false", help="batray with padded rows")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = p.parse_args()
    if not Path(args.data).exists():
        print(f"skipped: {args.data} is absent")
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    import trl
    from transformers import AutoModelForSequenceClassification

    from batray.reward.model import build_reward_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init, tokenizer, train, held = prepare(args.data, work, args.seq_len, args.vocab, args.held_out, args.seed)
        load_before = os.getloadavg()[0]
        ours = run_batray(args.data, init, work, args)
        theirs = run_trl(init, tokenizer, train, work, args)
        load_after = os.getloadavg()[0]
        ours_eval = held_out_metrics(AutoModelForSequenceClassification.from_pretrained(ours["final"]), held,
                                     tokenizer.pad_token_id, args.batch)
        trl_eval = held_out_metrics(theirs["model"].cpu(), held, tokenizer.pad_token_id, args.batch)
        untrained, _ = build_reward_model(init, tokenizer, seed=args.seed)
        init_eval = held_out_metrics(untrained, held, tokenizer.pad_token_id, args.batch)

    cmp = paired_comparison(ours_eval["right"], trl_eval["right"], seed=args.seed)
    n = cmp["n"]
    ci = lambda right: "[{:.3f}, {:.3f}]".format(*wilson(int(right.sum()), n))
    rows = [("held-out accuracy", f"{ours_eval['accuracy']:.3f}", f"{trl_eval['accuracy']:.3f}",
             f"{ours_eval['accuracy'] / trl_eval['accuracy']:.2f}"),
            ("  right / held-out pairs, Wilson 95%", f"{int(ours_eval['right'].sum())}/{n} {ci(ours_eval['right'])}",
             f"{int(trl_eval['right'].sum())}/{n} {ci(trl_eval['right'])}",
             f"[{cmp['ratio_lo']:.2f}, {cmp['ratio_hi']:.2f}] (paired bootstrap)"),
            ("pairs/s (steady)", f"{ours['pairs_per_s']:.2f}", f"{theirs['pairs_per_s']:.2f}",
             f"{ours['pairs_per_s'] / theirs['pairs_per_s']:.2f}"),
            ("tokens/s (steady, non-pad)", f"{ours['tokens_per_s']:.0f}", f"{theirs['tokens_per_s']:.0f}",
             f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}"),
            ("wall time incl. startup (s)", f"{ours['wall_s']:.0f}", f"{theirs['wall_s']:.0f}",
             f"{ours['wall_s'] / theirs['wall_s']:.2f}")]
    table = ["| | batray reward (Eq. 3 hinge) | TRL RewardTrainer (BT) | batray / TRL |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    machine = (f"{platform.platform()}, {os.cpu_count()} CPU cores (shared; load average {load_before:.1f} before, "
               f"{load_after:.1f} after), torch {torch.__version__}, transformers {transformers.__version__}, "
               f"trl {trl.__version__}, one thread per trainer")
    text = "\n".join([
        SECTION, "",
        f"Data: {Path(args.data).parent.name}/{Path(args.data).name}, {len(train)} train / {len(held)} held-out pairs "
        f"(split by pair-id hash), chat format, seq_len {args.seq_len}. Model: batgpt-tiny "
        f"(GlmForSequenceClassification, BPE vocab {len(tokenizer)}), same initial weights and head on both sides. "
        f"{args.steps} steps x {args.batch} pairs, AdamW lr {args.lr} constant, betas (0.9, 0.95), clip 1.0. "
        f"batray: reward.packing={str(args.packing).lower()}; TRL: default collation (padded to the longest).",
        f"Held-out accuracy of the untrained model: {init_eval['accuracy']:.3f}.", "",
        *table, "",
        f"Machine: {machine}.", "",
        "The ratio column is batray over TRL (above 1: batray higher). The two losses differ on purpose: "
        "batray trains the paper's Eq. 3 hinge (margin 1), TRL its Bradley-Terry log-sigmoid.", "",
        f"Paired accuracy difference (batray - TRL) on the same {n} pairs: {cmp['diff']:+.3f}, 95% interval "
        f"[{cmp['diff_lo']:+.3f}, {cmp['diff_hi']:+.3f}]; {cmp['only_ours']} pairs only batray ranks right, "
        f"{cmp['only_theirs']} only TRL.",
    ])
    print("\n" + text)
    if not args.no_write:
        write_results(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
