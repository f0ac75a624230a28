"""Rollout generation on CPU: batray's HF rollout engine vs `model.generate` called in-process.

Same checkpoint (`batgpt-tiny`, or wider with --hidden), same prompts (the demo world's prompts in the
chat template), same batch size, left padding and sampling (temperature, top_p, max new tokens, the
same seed per batch), one torch thread each. Three sides, interleaved `--repeats` times:

- `generate`: `model.generate(...)` in this process, the baseline;
- `engine`: `batray.rollout.engine.HFRolloutEngine.generate` in this process (adds the per-token
  log-probabilities PPO needs, the stop-token cut and the decode);
- `actor`: the same engine in its Ray actor (`actors.rollout.RolloutActor`, 1 CPU), as PPO and
  `batray pairs` call it, prompts and completions through the object store.

tokens/s counts the generated tokens each side returns (up to and including a stop token; the
samples are identical, checked). Prints the medians and the ratios to `generate`.

    python benchmarks/bench_rollout.py [--prompts 32] [--batch 16] [--new-tokens 32] [--repeats 3] [--no-actor]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(work: Path, args) -> tuple[str, list[list[int]]]:
    from batray.checkpoint import save_hf_checkpoint
    from batray.data.demo import generate_demo
    from batray.data.load import load_prompts
    from batray.data.sft import chat_pieces
    from batray.models.chat import chat_prompt_ids
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import load_tokenizer, train_bpe

    files = generate_demo(str(work / "demo"))
    prompts, _ = load_prompts(files["prompts"])
    convs = [[*p["messages"], {"role": "assistant", "content": "ok"}] for p in prompts]
    tok = train_bpe(("".join(t for t, _ in chat_pieces(c)) for c in convs), 1024)
    overrides = {"vocab_size": len(tok)}
    if args.hidden != 64:
        overrides.update(hidden_size=args.hidden, head_dim=args.hidden // 4, intermediate_size=args.hidden * 11 // 4)
    save_hf_checkpoint(build_model(preset_config("batgpt-tiny", **overrides), seed=0), tok, work / "model",
                       stage="bench")
    tok = load_tokenizer(str(work / "model"))
    ids = [chat_prompt_ids(tok, p["messages"]) for p in prompts[: args.prompts]]
    return str(work / "model"), ids


def bare_generate(model, tokenizer, engine, prompts, params) -> list[list[int]]:
    """What the engine does, minus the engine: batches of left-padded prompts into `model.generate`,
    the global RNG seeded the same way per batch; returns the new tokens up to the stop token."""
    import torch

    out = []
    gen = torch.Generator().manual_seed(params.seed)
    for start in range(0, len(prompts), engine.batch_size):
        batch = prompts[start:start + engine.batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), engine.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens, do_sample=True,
                              temperature=params.temperature, top_p=None, top_k=None, eos_token_id=engine.stop_ids,
                              pad_token_id=engine.pad_id)
        for row in seqs[:, width:].tolist():
            n = next((j + 1 for j, t in enumerate(row) if t in engine.stop_ids), len(row))
            out.append(row[:n])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-actor", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM

    from batray.models.tokenizer import load_tokenizer
    from batray.rollout.engine import HFRolloutEngine, SamplingParams

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path, prompts = setup(Path(tmp), args)
        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        engine = HFRolloutEngine(AutoModelForCausalLM.from_pretrained(path), tok, batch_size=args.batch)
        params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
        actor = None
        if not args.no_actor:
            import ray

            from actors.rollout import RolloutActor
            from batray.ray_session import start_ray

            start_ray(num_cpus=2, include_dashboard=False, log_to_driver=False,
                      runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
            actor = ray.remote(num_cpus=1)(RolloutActor).remote(path, backend="hf", device="cpu",
                                                                 batch_size=args.batch)
            ray.get(actor.ready.remote())
        times = {"generate": [], "engine": [], "actor": []}
        counts = {}
        with torch.no_grad():
            bare_generate(model, tok, engine, prompts, params)  # warm-up, both sides
            engine.generate(prompts, params)
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                bare = bare_generate(model, tok, engine, prompts, params)
                times["generate"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ours = engine.generate(prompts, params)
                times["engine"].append(time.perf_counter() - t0)
                if actor is not None:
                    t0 = time.perf_counter()
                    remote = ray.get(actor.generate.remote(prompts, params))
                    times["actor"].append(time.perf_counter() - t0)
                    counts["actor"] = sum(len(c.token_ids) for c in remote)
                counts["generate"] = sum(len(t) for t in bare)
                counts["engine"] = sum(len(c.token_ids) for c in ours)
        same = [c.token_ids for c in ours] == bare
        if actor is not None:
            ray.shutdown()
    load_after = os.getloadavg()[0]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, load average {load_before:.2f} before, "
          f"{load_after:.2f} after; torch {torch.__version__}; 1 thread per side")
    print(f"model batgpt-tiny hidden {args.hidden}; {len(prompts)} demo prompts (mean "
          f"{statistics.mean(map(len, prompts)):.0f} tokens), batch {args.batch}, temperature 1.0, "
          f"{args.new_tokens} new tokens max, {args.repeats} repeats; same samples as generate: {same}")
    base = counts["generate"] / statistics.median(times["generate"])
    print("| side | tokens/s (median) | runs s | ratio to generate |")
    print("|---|---:|---|---:|")
    for side, ts in times.items():
        if not ts:
            continue
        rate = counts[side] / statistics.median(ts)
        print(f"| {side} | {rate:.0f} | {', '.join(f'{t:.2f}' for t in ts)} | {rate / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
