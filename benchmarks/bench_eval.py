"""Items per second in `da` mode: one forward pass per item vs scoring each option separately.

The baseline is what some harnesses do for multiple choice: four sequences per item (`prompt + L`
for L in A/B/C/D), each scored for log p(L | prompt). batray reads the four letter logits from ONE
forward pass over the prompt. Both run side by side, interleaved, on the same prompts, model,
batch size and process; the predictions must agree. Prompts are CMMLU 5-shot prompts from
`../shared/datasets/cmmlu` when present (else the demo benchmark), with shots dropped to fit.

    python benchmarks/bench_eval.py [--items 96] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prompts_and_tokenizer(n_items: int, shots: int):
    from batray.eval.tasks import PromptFitter, build_requests, load_benchmark
    from batray.models.tokenizer import train_bpe

    shared = ROOT.parent / "shared" / "datasets" / "cmmlu"
    if shared.is_dir():
        data, source = str(shared), "shared CMMLU test"
    else:
        from batray.data.demo import generate_demo

        data = generate_demo(tempfile.mkdtemp(prefix="bench-eval-"))["benchmarks"]
        source = "demo benchmark"
    bench = load_benchmark("cmmlu", data)
    # Spread the items over subjects (round robin), like a full run's mix of prompt lengths.
    per_subject = max(1, n_items // len(bench.items) + 1)
    bench.items = {s: v[:per_subject] for s, v in bench.items.items()}
    texts = [i.question + "".join(i.options) for v in list(bench.items.values()) + list(bench.dev.values()) for i in v]
    tokenizer = train_bpe(texts, vocab_size=2000)
    fitter = PromptFitter(tokenizer=tokenizer, context=1024, prefix_tokens=1)
    requests = build_requests(bench, shots, "da", fitter)[:n_items]
    # Longest first, as `jobs/eval.py` feeds its actors: batches of similar lengths pad little.
    prompts = sorted((r.prompt for r in requests), key=lambda p: -len(tokenizer.encode(p, add_special_tokens=False)))
    return prompts, tokenizer, source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=96)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: what a 1-CPU scorer actor gets)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from batray.eval.scoring import LocalBackend
    from batray.models.presets import build_model, preset_config

    prompts, tokenizer, source = prompts_and_tokenizer(args.items, args.shots)
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tokenizer)), seed=0)
    backend = LocalBackend("bench", model=model, tokenizer=tokenizer, batch_size=args.batch_size)
    lengths = [len(backend.encode(x)) for x in prompts]
    backend.letter_scores(prompts[: args.batch_size])  # warm up both paths
    backend.letter_scores_separately(prompts[: args.batch_size])

    one, four = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        t = time.perf_counter()
        a = backend.letter_scores(prompts)
        one.append(len(prompts) / (time.perf_counter() - t))
        t = time.perf_counter()
        b = backend.letter_scores_separately(prompts)
        four.append(len(prompts) / (time.perf_counter() - t))
    agree = sum(int(torch.tensor(x).argmax() == torch.tensor(y).argmax()) for x, y in zip(a, b)) / len(prompts)
    r1, r4 = statistics.median(one), statistics.median(four)
    print(f"data: {source}, {len(prompts)} items, {args.shots}-shot, prompt tokens mean "
          f"{statistics.fmean(lengths):.0f} (max {max(lengths)}), batgpt-tiny, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"da, one forward pass per item:       {r1:8.1f} items/s  (runs: {', '.join(f'{x:.1f}' for x in one)})")
    print(f"each option separately (4 per item): {r4:8.1f} items/s  (runs: {', '.join(f'{x:.1f}' for x in four)})")
    print(f"speedup: {r1 / r4:.2f}x; predictions agree on {100 * agree:.1f}% of items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
