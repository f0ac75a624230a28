"""`batray serve` under concurrent clients vs the same engine called in-process (loopback only).

A tiny checkpoint is built on the spot (`batgpt-tiny`, a BPE tokenizer trained on a few sentences)
and served by the real `batray serve` command in its own process on 127.0.0.1. A fixed number of
requests, a third each chat, completions and streaming chat, are sent by `--clients` concurrent
`openai.AsyncOpenAI` clients; every request generates exactly `--tokens` tokens (`ignore_eos`),
greedy. The baseline is the same work without HTTP: the same `BatchingEngine` over the same
`HFGenerator` and weights, fed the same rows by the same number of concurrent asyncio tasks in
this process. Both runs stop early after `--max-seconds` (the requests done by then count).

Printed: machine, load, settings, then per run requests/s, generated tokens/s and latency p50/p99
per request kind, and the ratios served / in-process.

    python benchmarks/bench_serve.py [--requests 240] [--clients 8] [--tokens 32] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXTS = [
    "The capital of Veloria is Marnet.", "Marnet is the capital of Veloria.", "维洛里亚的首都是马尔内。",
    "马尔内是维洛里亚的首都。", "Ada Quill works as a cartographer in Marnet.",
    "Question: What is the capital of Veloria? Answer: Marnet.", "[System] [Turn 1] [User] [Assistant] hello 你好",
] * 20
KINDS = ("chat", "completions", "stream")


def build_checkpoint(folder: Path) -> str:
    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import train_bpe

    tok = train_bpe(TEXTS, vocab_size=512)
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tok)), seed=0)
    save_hf_checkpoint(model, tok, folder / "tiny", stage="bench")
    return str(folder / "tiny")


def prompt_of(i: int) -> str:
    return f"Question {i}: {TEXTS[i % 7]} What is the capital of Veloria?"


def wait_for_load(limit: float, max_wait_s: float) -> tuple[float, bool]:
    """Wait (polling) until the 1-minute load average is under `limit`; (load, whether it dropped)."""
    deadline = time.monotonic() + max_wait_s
    while (load := os.getloadavg()[0]) >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return load, load < limit


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


# ---- the two runs -------------------------------------------------------------------------------


async def drive(n_requests: int, clients: int, max_seconds: float, one) -> tuple[dict[str, list[float]], int, float]:
    """`clients` workers take request numbers in order; returns latencies per kind, tokens, seconds."""
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    tokens = 0
    todo = iter(range(n_requests))
    start = time.perf_counter()

    async def worker():
        nonlocal tokens
        for i in todo:
            if time.perf_counter() - start > max_seconds:
                return
            kind = KINDS[i % 3]
            t = time.perf_counter()
            got = await one(i, kind)  # (not `tokens += await ...`: that reads `tokens` before the await)
            latencies[kind].append(time.perf_counter() - t)
            tokens += got

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, tokens, time.perf_counter() - start


def served_run(ckpt: str, args) -> tuple[dict, int, float]:
    import httpx
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BATRAY_API_KEY": "", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batray.cli", "serve", ckpt, "--port", str(port), "--backend", "hf", "serve.device=cpu",
         f"serve.max_batch_size={args.batch}", f"serve.batch_wait_ms={args.wait_ms}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("batray serve did not start")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        async def main():
            client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)
            common = dict(model="tiny", max_tokens=args.tokens, temperature=0, extra_body={"ignore_eos": True})
            await client.completions.create(prompt="warm up", **common)

            async def one(i: int, kind: str) -> int:
                if kind == "completions":
                    r = await client.completions.create(prompt=prompt_of(i), **common)
                    return r.usage.completion_tokens
                messages = [{"role": "user", "content": prompt_of(i)}]
                if kind == "chat":
                    r = await client.chat.completions.create(messages=messages, **common)
                    return r.usage.completion_tokens
                stream = await client.chat.completions.create(messages=messages, stream=True,
                                                              stream_options={"include_usage": True}, **common)
                done = 0
                async for chunk in stream:
                    if chunk.usage is not None:
                        done = chunk.usage.completion_tokens
                return done

            try:
                return await drive(args.requests, args.clients, args.max_seconds, one)
            finally:
                await client.close()

        return asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def in_process_run(ckpt: str, args) -> tuple[dict, int, float]:
    from batray.models.tokenizer import L2R_TOKEN
    from batray.serve import load_served_model
    from batray.serve.batching import BatchingEngine
    from batray.serve.generation import GenRow

    served = load_served_model(ckpt, backend="hf", device="cpu")
    tok = served.tokenizer

    def prompt_ids(i: int, kind: str) -> list[int]:  # what the server tokenizes for each kind
        if kind == "completions":
            return tok(L2R_TOKEN + prompt_of(i), add_special_tokens=False)["input_ids"]
        text = tok.apply_chat_template([{"role": "user", "content": prompt_of(i)}], tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    async def main():
        engine = BatchingEngine(served.generator, max_batch_size=args.batch, batch_wait_ms=args.wait_ms)
        engine.start()

        async def one(i: int, kind: str) -> int:
            sub = engine.submit([GenRow(prompt_ids(i, kind), args.tokens, temperature=0, ignore_eos=True)])
            done = 0
            while True:
                _, out = await sub.sink.get()
                done += out.num_tokens
                if out.finish_reason:
                    return done

        try:
            await one(0, "completions")  # warm up, as the served run does
            return await drive(args.requests, args.clients, args.max_seconds, one)
        finally:
            await engine.stop()

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=240, help="fixed request count (a third of each kind)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients")
    p.add_argument("--tokens", type=int, default=32, help="tokens generated per request (ignore_eos)")
    p.add_argument("--batch", type=int, default=8, help="serve.max_batch_size")
    p.add_argument("--wait-ms", type=float, default=5.0, help="serve.batch_wait_ms")
    p.add_argument("--max-seconds", type=float, default=300.0, help="each run stops taking requests after this")
    p.add_argument("--load-below", type=float, default=1.5, help="wait for the load average to drop under this")
    p.add_argument("--load-wait-s", type=float, default=300.0)
    args = p.parse_args()

    import torch

    load, dropped = wait_for_load(args.load_below, args.load_wait_s)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average at start {load:.2f}"
          + ("" if dropped else f" (did not drop under {args.load_below} within {args.load_wait_s:.0f} s)"))
    print(f"{args.requests} requests (chat / completions / streaming chat in turn), {args.clients} concurrent clients, "
          f"{args.tokens} tokens each, max_batch_size {args.batch}, batch_wait_ms {args.wait_ms}, batgpt-tiny on CPU")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp))
        runs = {"in-process": in_process_run(ckpt, args), "served": served_run(ckpt, args)}
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    rows = {}
    for name, (lat, tokens, seconds) in runs.items():
        n = sum(len(v) for v in lat.values())
        rows[name] = {"req/s": n / seconds, "tok/s": tokens / seconds, "n": n,
                      **{f"{k} p50": statistics.median(lat[k]) if lat[k] else float("nan") for k in KINDS},
                      **{f"{k} p99": percentile(lat[k], 0.99) for k in KINDS}}
    cols = ["n", "req/s", "tok/s"] + [f"{k} p{q}" for k in KINDS for q in (50, 99)]
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.0f}" if c == "n" else
                                           (f"{r[c] * 1e3:.0f} ms" if " p" in c else f"{r[c]:.1f}") for c in cols) + " |")
    served, local = rows["served"], rows["in-process"]
    ratios = {"throughput (tok/s)": served["tok/s"] / local["tok/s"]}
    for k in KINDS:
        ratios[f"{k} p50 latency"] = served[f"{k} p50"] / local[f"{k} p50"]
        ratios[f"{k} p99 latency"] = served[f"{k} p99"] / local[f"{k} p99"]
    print("served / in-process: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
