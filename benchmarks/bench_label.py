"""Labeling throughput against an endpoint with a fixed latency, as a fraction of what it can serve.

An OpenAI-compatible judge answers every request after exactly `latency` seconds (asyncio sleep, in
its own process), so at `concurrency` requests in flight it can serve at most concurrency / latency
requests per second. Side by side in one run, for each concurrency:

- ideal:    concurrency / latency (the endpoint's ceiling);
- raw:      a bare AsyncOpenAI loop with a semaphore, same requests (the client's own ceiling);
- label:    `batray.feedback.labeling.label_pairs` (4 judge questions per pair, parsing, combining);
- actors:   with --ray, `batray.feedback.ai_labels.run_label` through labeler actors (2 labelers sharing the limit).

Printed as requests/s and as fractions label/ideal and label/raw.

    python benchmarks/bench_label.py [--pairs 150] [--latency 0.05] [--concurrency 4 16 32] [--ray]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import platform
import tempfile
import time

ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "judge", "choices": [{
    "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "1"},
    "logprobs": {"content": [{"token": "1", "logprob": math.log(0.8), "bytes": None, "top_logprobs": [
        {"token": "1", "logprob": math.log(0.8), "bytes": None}, {"token": "2", "logprob": math.log(0.2), "bytes": None}]}]}}]}


def _serve(sock, latency: float) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        await asyncio.sleep(latency)
        return ANSWER

    uvicorn.Server(uvicorn.Config(app, log_level="error", backlog=2048)).run(sockets=[sock])


def start_endpoint(latency: float) -> tuple[str, mp.Process]:
    from batray.serve.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    proc = mp.get_context("fork").Process(target=_serve, args=(sock, latency), daemon=True)
    proc.start()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1", proc


def pairs(n: int) -> list[dict]:
    return [{"pair_id": f"p{i}", "prompt": f"question {i}", "response_a": "answer one", "response_b": "answer two",
             "model_a": "m", "model_b": "m"} for i in range(n)]


async def raw_client(url: str, n_requests: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i):
        async with sem:
            await client.chat.completions.create(model="judge", messages=[{"role": "user", "content": f"q{i}"}],
                                                 max_tokens=8, logprobs=True, top_logprobs=20)

    await one(-1)  # connection warm-up
    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n_requests)))
    dt = time.perf_counter() - t
    await client.close()
    return n_requests / dt


async def labeled(url: str, rows: list[dict], concurrency: int) -> float:
    from batray.feedback.client import EndpointSettings, Secret
    from batray.feedback.labeling import label_pairs
    from batray.feedback.templates import load_templates

    settings = EndpointSettings(url=url, model="judge", concurrency=concurrency, timeout_s=30)
    await label_pairs(rows[:2], settings, Secret(None), load_templates(None))  # warm-up
    t = time.perf_counter()
    res = await label_pairs(rows, settings, Secret(None), load_templates(None))
    dt = time.perf_counter() - t
    assert len(res.rows) == len(rows), res.failures[:2]
    return res.stats["requests"] / dt


def with_actors(url: str, rows: list[dict], concurrency: int) -> float:
    from batray.config import EndpointConfig, load_config
    from batray.data.io import write_jsonl
    from actors.labeler import LabelerActor
    from batray.feedback.ai_labels import judge_from_config, run_label

    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(rows, f"{tmp}/pairs.jsonl")
        cfg = load_config(None, [f"run_dir={tmp}/run", "label.num_labelers=2", "ray.num_cpus=2"])
        ep = EndpointConfig(url=url, model="judge", api_key_env=None, concurrency=concurrency)
        t = time.perf_counter()
        run_label(cfg, f"{tmp}/label", pairs=f"{tmp}/pairs.jsonl", judges=[judge_from_config(ep, cfg.label.num_labelers)],
                  labeler_cls=LabelerActor)
        dt = time.perf_counter() - t  # includes starting the actors
    return 4 * len(rows) / dt


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=150)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--concurrency", type=int, nargs="+", default=[4, 16, 32])
    p.add_argument("--ray", action="store_true", help="also through labeler actors (starts a local Ray)")
    args = p.parse_args()
    url, proc = start_endpoint(args.latency)
    rows = pairs(args.pairs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"endpoint latency {args.latency * 1000:.0f} ms, {args.pairs} pairs x 4 questions")
    print(f"{'conc':>5} {'ideal r/s':>10} {'raw r/s':>9} {'label r/s':>10} {'label/ideal':>12} {'label/raw':>10}"
          + (f" {'actors r/s':>11} {'actors/ideal':>13}" if args.ray else ""))
    try:
        for c in args.concurrency:
            ideal = c / args.latency
            raw = asyncio.run(raw_client(url, 4 * args.pairs, c))
            lab = asyncio.run(labeled(url, rows, c))
            line = f"{c:>5} {ideal:>10.0f} {raw:>9.0f} {lab:>10.0f} {lab / ideal:>12.2f} {lab / raw:>10.2f}"
            if args.ray:
                act = with_actors(url, rows, c)
                line += f" {act:>11.0f} {act / ideal:>13.2f}"
            print(line, flush=True)
    finally:
        proc.terminate()
        proc.join()


if __name__ == "__main__":
    main()
