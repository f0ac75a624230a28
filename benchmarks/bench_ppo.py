"""Time per PPO step on CPU, split by phase, and the share of it that is orchestration.

Two runs of the same PPO steps side by side in one process tree, same model, data, seeds and config:

- baseline: every role's model in THIS process, the library functions called directly (no Ray,
  no actors, no object store, no weight sync through Ray: the engine's weights are copied in place);
- batray:   `batray.ppo.driver.run_ppo` on local Ray, every role an actor (colocated, fractional CPUs),
            but the rule reward, which batray scores in the driver as the baseline does in-process.

The orchestration share is measured inside the batray run (`ppo.profile_phases`): every role actor
counts the time spent in its own compute methods; per phase, compute is the slowest participating
actor's time (they run concurrently), plus the PPO math the driver does itself while no actor works
(collate and make_experience: GAE, whitening; `driver_experience`), and the rest of the phase's wall
time in the driver is orchestration (Ray calls, serialization, object-store transfers, waiting). The baseline column
shows the same work done serially in one process: batray runs the reference, critic and policy
forwards concurrently (and the policy and critic updates), so a phase can be faster than the
baseline on more than one core. The first `--warmup` steps are left out of both.

    python benchmarks/bench_ppo.py [--steps 8] [--warmup 2] [--hidden 64] [--cpus 2]
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

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PHASES = ("generate", "experience", "train", "sync")  # batray scores inside its experience phase


def setup(work: Path, hidden: int) -> tuple[str, str, str]:
    from conftest import SAMPLE_TEXTS

    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import train_bpe

    tok = train_bpe(SAMPLE_TEXTS, vocab_size=512)
    overrides = {"vocab_size": len(tok)}
    if hidden != 64:  # batgpt-tiny's family, wider: 4 heads of hidden/4, SwiGLU ~2.75x
        overrides.update(hidden_size=hidden, head_dim=hidden // 4, intermediate_size=hidden * 11 // 4)
    model = build_model(preset_config("batgpt-tiny", **overrides), seed=0)
    save_hf_checkpoint(model, tok, work / "policy", stage="bench")
    texts = sorted(set(SAMPLE_TEXTS))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(work / "policy"), str(work / "prompts.jsonl"), str(work / "corpus.jsonl")


def config(steps: int):
    from conftest import SAMPLE_TEXTS

    from batray.config import load_config

    target = " ".join(sorted(set(SAMPLE_TEXTS)))
    return load_config(None, [
        f"ppo.steps={steps}", "ppo.rollout_batch_size=16", "ppo.micro_batch_size=8", "ppo.num_minibatches=2",
        "ppo.ppo_epochs=2", "ppo.sampling.max_new_tokens=16", "ppo.reward.kind=rule",
        f"ppo.reward.target_text={json.dumps(target)}", "ppo.ptx_coef=0.1", "ppo.ptx_batch_size=2",
        "ppo.ptx_seq_len=32", f"ppo.ckpt_every={steps}", "ppo.profile_phases=true",
    ])


def baseline(cfg, policy_path: str, prompts: str, corpus: str, steps: int) -> list[dict[str, float]]:
    """The same steps with every model in this process: the compute a PPO step cannot avoid."""
    from batray.models.chat import stop_token_ids
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer
    from batray.objectives.ppo import make_kl_controller
    from batray.ppo import train
    from batray.ppo.batch import Sample, collate
    from batray.ppo.data import PromptStream, PtxStream
    from batray.ppo.experience import make_experience
    from batray.ppo.reward import target_token_ids, token_fraction_reward
    from batray.ppo.trainer import LocalTrainer
    from batray.reward.model import build_reward_model
    from batray.rollout.engine import HFRolloutEngine, SamplingParams
    from batray.ppo.driver import rollout_seed

    ppo = cfg.ppo
    tok = load_tokenizer(policy_path)
    torch.manual_seed(ppo.seed)
    policy, ref = load_causal_lm(policy_path), load_causal_lm(policy_path).eval().requires_grad_(False)
    critic, _ = build_reward_model(policy_path, tok, seed=ppo.seed)
    engine = HFRolloutEngine(load_causal_lm(policy_path), tok)
    policy_trainer = LocalTrainer(policy, lr=ppo.actor_lr, grad_clip=ppo.grad_clip)
    critic_trainer = LocalTrainer(critic, lr=ppo.critic_lr, grad_clip=ppo.grad_clip)
    targets, stops = target_token_ids(tok, ppo.reward.target_text), set(stop_token_ids(tok))
    stream = PromptStream.from_file(prompts, tok, seed=ppo.seed, max_prompt_tokens=ppo.max_prompt_tokens)
    ptx = PtxStream.from_file(corpus, tok, seed=ppo.seed, block_len=ppo.ptx_seq_len)
    kl = make_kl_controller("fixed", ppo.kl_coef)
    s = ppo.sampling
    rows = []
    for step in range(1, steps + 1):
        t, row = time.perf_counter(), {}
        batch_prompts = stream.next_batch(ppo.rollout_batch_size)
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                seed=rollout_seed(ppo.seed, step, 0))
        outs = engine.generate([p for _, p in batch_prompts], params)
        samples = [Sample(c.prompt_ids, c.token_ids, c.logprobs, c.finish_reason, i) for (i, _), c in zip(batch_prompts, outs)]
        row["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        scores = torch.tensor([token_fraction_reward(x.response_ids, targets, stops) for x in samples])
        batch = collate(samples, tok.pad_token_id)
        old = train.response_logprobs(policy.eval(), batch, ppo.micro_batch_size)
        ref_lp = train.response_logprobs(ref, batch, ppo.micro_batch_size)
        values = train.batch_values(critic.eval(), batch, ppo.micro_batch_size)
        exp, _ = make_experience(batch, old_logprobs=old, ref_logprobs=ref_lp, values=values, raw_scores=scores,
                                 reward_mean=0.0, reward_std=1.0, kl_coef=kl.value, cfg=ppo)
        row["experience"] = time.perf_counter() - t
        t = time.perf_counter()
        blocks = [ptx.next_blocks(ppo.ptx_batch_size) for _ in range(train.num_update_steps(ppo))]
        seed = rollout_seed(ppo.seed, step, 0xC0FFEE)
        train.policy_update(policy_trainer, exp, blocks, ppo, seed)
        train.critic_update(critic_trainer, exp, ppo, seed)
        row["train"] = time.perf_counter() - t
        t = time.perf_counter()
        engine.load_weights({n: p.detach() for n, p in policy.named_parameters()})
        row["sync"] = time.perf_counter() - t
        rows.append(row)
    return rows


def with_ray(cfg, policy_path: str, prompts: str, corpus: str, work: Path, cpus: int) -> list[dict[str, float]]:
    import ray
    from conftest import WORKER_ENV

    from actors import kit
    from batray.metrics import read_metrics
    from batray.ppo.driver import run_ppo

    ray.init(num_cpus=cpus, include_dashboard=False, runtime_env=WORKER_ENV, log_to_driver=False)
    try:
        run_ppo(cfg, str(work / "ray"), policy_init=policy_path, reward_model=None, prompts=prompts, ptx_data=corpus,
                kit=kit())
    finally:
        ray.shutdown()
    return [{**{p: r[f"time_{p}"] for p in PHASES}, **{f"{k}_{p}": r[f"{k}_{p}"] for p in PHASES for k in ("compute", "busy")},
             **{f"driver_{p}": r.get(f"driver_{p}", 0.0) for p in PHASES}}
            for r in read_metrics(work / "ray")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64, help="model width (64: batgpt-tiny)")
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of the local Ray")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # as each fractional-CPU actor runs (Ray sets OMP_NUM_THREADS=1)
    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    policy_path, prompts, corpus = setup(work, args.hidden)
    steps = args.steps + args.warmup
    cfg = config(steps)
    base = baseline(cfg, policy_path, prompts, corpus, steps)[args.warmup :]
    ray_rows = with_ray(cfg, policy_path, prompts, corpus, work, args.cpus)[args.warmup :]

    def med(rows, p):
        return statistics.median(r[p] for r in rows)

    print(f"PPO step on CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, hidden {args.hidden}, {args.steps} steps after {args.warmup} warm-up, "
          "16 prompts x 16 new tokens, 2 epochs x 2 minibatches, ptx on")
    # "driver math": collate and make_experience (GAE, whitening), the PPO math the driver itself does while no
    # actor works (the baseline does it too). "cores bound": the phase's actors' busy seconds summed over the
    # cores, when more than the slowest actor's, plus the driver's math: the wall time the phase needs even
    # with free calls, because its actors share the cores
    print(f"{'phase':<12}{'baseline s':>12}{'batray s':>10}{'actor compute':>15}{'driver math':>13}"
          f"{'orchestration':>15}{'cores bound':>13}")
    total_b = total_r = total_c = total_d = total_bound = 0.0
    for p in PHASES:
        b, r, c, d = med(base, p), med(ray_rows, p), med(ray_rows, f"compute_{p}"), med(ray_rows, f"driver_{p}")
        bound = max(c, med(ray_rows, f"busy_{p}") / args.cpus) + d
        total_b, total_r, total_c, total_d = total_b + b, total_r + r, total_c + c, total_d + d
        total_bound += bound
        print(f"{p:<12}{b:>12.3f}{r:>10.3f}{c:>15.3f}{d:>13.4f}{r - c - d:>15.3f}{bound:>13.3f}")
    print(f"{'step':<12}{total_b:>12.3f}{total_r:>10.3f}{total_c:>15.3f}{total_d:>13.4f}"
          f"{total_r - total_c - total_d:>15.3f}{total_bound:>13.3f}")
    print(f"orchestration share of the batray step: {(total_r - total_c - total_d) / total_r:.1%} "
          f"(batray step / serial baseline: {total_r / total_b:.2f}); "
          f"beyond the cores bound: {(total_r - total_bound) / total_r:.1%}; "
          f"with the driver's math counted as orchestration: {(total_r - total_c) / total_r:.1%}")


if __name__ == "__main__":
    main()
