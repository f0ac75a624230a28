"""GPU check for PPO (issue 8): run on a machine with a CUDA GPU; prints one line per check and a JSON summary.

Run on one H200 on 2026-11-28 (results: `benchmarks/gpu_check_h200.json`, RESULTS.md): env, zero3, cuda_ipc
and ppo_job passed; vllm_rollout and nccl_sync were skipped (no vLLM on that machine; one GPU). Every
check is independent, reports PASS / FAIL (with the error's first line) / SKIP (with the reason), and
the script always finishes. `--rehearse-on-cpu` runs nccl_sync (with gloo), zero3 and the PPO jobs on
CPU, to test the script. (The H200 runs predate nccl_sync's move onto `batray.ppo.weight_sync`.)

    python benchmarks/gpu_check.py [--out results.json] [--skip ppo_job,...] [--rehearse-on-cpu]

On a machine without internet, `benchmarks/gpu_payload.sh` builds the wheels it needs (ray, deepspeed,
pydantic, ...) into `.whl/` to carry there.

Checks, in order (each small: a GLM-family model of ~30M parameters built from config, no downloads):

1. env          CUDA device, torch / vLLM / DeepSpeed versions.
2. vllm_rollout the vLLM rollout engine (`make_engine(path, backend="vllm")`) generates; its sampled
                tokens' log-probabilities match a transformers forward pass of the same model on the
                GPU (the rollout-vs-trainer mismatch PPO logs every step); `load_weights` with new
                weights changes the engine's log-probabilities to those of the new weights.
3. nccl_sync    PPO's `collective` weight-sync transport (`batray.ppo.weight_sync`) over NCCL: rank 0's
                weights broadcast bucket by bucket into the other ranks' models; needs 2 GPUs (SKIP
                with one: a 1-rank group times the bucket path only). Rehearsed on CPU with gloo.
4. cuda_ipc     the colocated sync path: two Ray actors on fractional shares of ONE GPU; the trainer
                shares its CUDA weight buffers by IPC handle (torch.multiprocessing reductions), the
                receiver copies them without a host round trip; checked bit for bit.
5. zero3        `batray.ppo.trainer.DeepSpeedTrainer` (the policy/critic actors' trainer) under ZeRO-3
                in bf16, 1 rank: one minibatch of micro batches steps the weights, and the weight-sync
                buckets (gathered bucket by bucket) equal the consolidated state dict.
6. ppo_job      `batray.ppo.driver.run_ppo` end to end on the GPU: every role colocated on fractional GPU
                shares, policy and critic under ZeRO-3 in bf16, rollout backend vLLM when importable
                (else HF), 4 steps with a rule reward and checkpoints; time per phase and the
                orchestration share (`ppo.profile_phases`) from metrics.jsonl.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

RESULTS: dict[str, dict] = {}


def check(name):
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                detail = fn(*args, **kwargs) or {}
                status = detail.pop("status", "PASS")
            except Exception as e:  # a check never stops the script
                status, detail = "FAIL", {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                                         "trace": traceback.format_exc(limit=4)}
            detail["seconds"] = round(time.perf_counter() - t, 2)
            RESULTS[name] = {"status": status, **detail}
            shown = {k: v for k, v in detail.items() if k != "trace"}
            print(f"[{status}] {name}: {json.dumps(shown, default=str)}", flush=True)
        run.check_name = name
        return run
    return wrap


def build_checkpoint(work: Path) -> str:
    """A GLM-family model with vLLM-friendly head size (64), saved with a trained byte-level BPE."""
    from conftest import SAMPLE_TEXTS

    from batray.checkpoint import save_hf_checkpoint
    from batray.models.presets import build_model, preset_config
    from batray.models.tokenizer import train_bpe

    tok = train_bpe(SAMPLE_TEXTS, vocab_size=512)
    cfg = preset_config("batgpt-tiny", vocab_size=len(tok), hidden_size=512, intermediate_size=1408,
                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    model = build_model(cfg, seed=0)
    path = work / "policy"
    save_hf_checkpoint(model, tok, path, stage="gpu-check")
    return str(path)


@check("env")
def check_env():
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    out = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
           "cuda": torch.version.cuda}
    for mod in ("vllm", "deepspeed", "ray", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


@check("vllm_rollout")
def check_vllm(path: str):
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        return {"status": "SKIP", "reason": "vllm is not installed (pip install 'batray[gpu]' or vllm)"}
    from batray.models.presets import load_causal_lm
    from batray.models.tokenizer import load_tokenizer
    from batray.ppo.batch import Sample, collate
    from batray.ppo.train import response_logprobs
    from batray.rollout.engine import SamplingParams, make_engine

    tok = load_tokenizer(path)
    engine = make_engine(path, backend="vllm")
    prompts = [tok.encode(f"<|l2r|>[Turn 1]\n\n[User] question {i}\n\n[Assistant] ", add_special_tokens=False)
               for i in range(32)]
    t = time.perf_counter()
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=64, seed=0))
    gen_s = time.perf_counter() - t
    new_tokens = sum(len(c.token_ids) for c in outs)
    model = load_causal_lm(path, device="cuda")

    def gap(model) -> float:
        batch = collate([Sample(c.prompt_ids, c.token_ids, c.logprobs) for c in outs], tok.pad_token_id)
        batch = {k: v.cuda() for k, v in batch.items()}
        logp = response_logprobs(model, batch, micro_batch_size=8)
        mask = batch["response_mask"]
        return float(((logp - batch["rollout_logprobs"]).abs() * mask).sum() / mask.sum())

    before = gap(model)
    # new weights: perturb, sync into the engine, regenerate; the gap must stay small against the NEW model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    engine.load_weights({n: p.detach() for n, p in model.named_parameters()})
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=64, seed=1))
    after = gap(model)
    ok = before < 0.05 and after < 0.05
    return {"status": "PASS" if ok else "FAIL", "tokens_per_s": round(new_tokens / gen_s, 1),
            "logprob_gap_mean": round(before, 5), "logprob_gap_after_sync": round(after, 5)}


@check("nccl_sync")
def check_nccl(path: str, backend: str = "nccl"):
    """PPO's `collective` transport (`batray.ppo.weight_sync`): a broadcast group of its own, rank 0's
    changed weights broadcast bucket by bucket into the other ranks' models. `backend="gloo"` rehearses
    it on CPU."""
    import torch
    import torch.multiprocessing as mp

    world = 2 if backend == "gloo" else min(torch.cuda.device_count(), 2)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_sync_rank, args=(r, world, port, path, backend, q)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    results = [q.get(timeout=5) for _ in procs]
    errors = [r for r in results if "error" in r]
    if errors:
        raise RuntimeError(errors[0]["error"])
    out = {"backend": backend, "ranks": world, "gb_per_s": results[0]["gb_per_s"], "buckets": results[0]["buckets"]}
    if world < 2:
        out.update(status="SKIP", reason="one GPU: NCCL needs a device per rank; timed a 1-rank broadcast only")
    elif len({r["checksum"] for r in results}) != 1:
        out.update(status="FAIL", reason="ranks hold different weights after the broadcast")
    return out


def _sync_rank(rank: int, world: int, port: int, path: str, backend: str, q) -> None:
    try:
        import torch

        from batray.models.presets import load_causal_lm
        from batray.ppo.weight_sync import broadcast, bucket_layout, flatten, open_broadcast_group, unflatten

        device = f"cuda:{rank}" if backend == "nccl" else "cpu"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        group = open_broadcast_group("127.0.0.1", port, rank, world, backend, timeout_s=120)
        model = load_causal_lm(path, device=device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            if rank == 0:
                for p in params.values():
                    p.add_(1.0)
            layout = bucket_layout(list(params.items()), 16 << 20)  # ~16 MB buckets, as the trainer sends them
            if backend == "nccl":
                torch.cuda.synchronize()
            t = time.perf_counter()
            total = 0
            for spec in layout:
                flat = flatten([params[n] for n in spec.names])
                broadcast(group, flat, timeout_s=60)
                for name, synced in unflatten(flat, spec).items():
                    params[name].copy_(synced)
                total += flat.numel() * flat.element_size()
            if backend == "nccl":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            checksum = float(sum(p.double().sum() for p in params.values()))
        q.put({"rank": rank, "gb_per_s": round(total / seconds / 1e9, 2), "buckets": len(layout), "checksum": checksum})
    except Exception as e:
        q.put({"rank": rank, "error": f"{type(e).__name__}: {e}"})


@check("cuda_ipc")
def check_cuda_ipc(path: str):
    import ray

    @ray.remote(num_gpus=0.4, num_cpus=1)
    class Sender:
        def __init__(self, path):
            from batray.models.presets import load_causal_lm

            self.model = load_causal_lm(path, device="cuda")

        def handles(self):
            from torch.multiprocessing.reductions import reduce_tensor

            self.keep = {n: p.detach().contiguous() for n, p in self.model.named_parameters()}
            return {n: reduce_tensor(t) for n, t in self.keep.items()}

        def checksum(self):
            return float(sum(p.double().sum() for p in self.model.parameters()))

    @ray.remote(num_gpus=0.4, num_cpus=1)
    class Receiver:
        def __init__(self, path):
            from batray.models.presets import load_causal_lm

            self.model = load_causal_lm(path, device="cuda")
            import torch

            with torch.no_grad():
                for p in self.model.parameters():
                    p.zero_()

        def load(self, handles):
            import torch

            params = dict(self.model.named_parameters())
            t = time.perf_counter()
            with torch.no_grad():
                for name, (rebuild, args) in handles.items():
                    params[name].copy_(rebuild(*args))
            torch.cuda.synchronize()
            return time.perf_counter() - t

        def checksum(self):
            return float(sum(p.double().sum() for p in self.model.parameters()))

    sender, receiver = Sender.remote(path), Receiver.remote(path)
    seconds = ray.get(receiver.load.remote(ray.get(sender.handles.remote())))
    a, b = ray.get([sender.checksum.remote(), receiver.checksum.remote()])
    return {"status": "PASS" if a == b else "FAIL", "copy_s": round(seconds, 4), "checksum_equal": a == b}


@check("zero3")
def check_zero3(path: str):
    """`batray.ppo.trainer.DeepSpeedTrainer` (what the policy and critic actors run) under ZeRO-3 in bf16."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return {"status": "SKIP", "reason": "deepspeed is not installed"}
    import torch

    from batray.config import load_config
    from batray.distributed import destroy_process_group, free_port, init_process_group
    from batray.models.presets import load_causal_lm
    from batray.ppo.trainer import DeepSpeedTrainer
    from batray.ppo.weight_sync import unflatten

    cuda = torch.cuda.is_available()
    port = free_port()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    init_process_group(0, 1, "127.0.0.1", port, backend="nccl" if cuda else "gloo", timeout_s=120)
    try:
        cfg = load_config(None, ["ppo.deepspeed.zero_stage=3", f"ppo.deepspeed.bf16={str(cuda).lower()}",
                                 "ppo.rollout_batch_size=8", "ppo.micro_batch_size=4"]).ppo
        model = load_causal_lm(path, device="cuda" if cuda else "cpu")
        before = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}
        trainer = DeepSpeedTrainer(model, lr=1e-4, cfg=cfg, world_size=1)
        device = next(trainer.module.parameters()).device
        ids = torch.randint(3, model.config.vocab_size, (4, 64), device=device)
        t = time.perf_counter()
        for _ in range(trainer.micro_steps):  # one minibatch of micro batches, our accumulation path
            loss = trainer(input_ids=ids, labels=ids).loss
            trainer.backward(loss / trainer.micro_steps)
        norm = trainer.step()
        step_s = time.perf_counter() - t
        buckets = list(trainer.buckets(16 << 20, rank=0))
        synced = {n: t.cpu() for spec, flat in buckets for n, t in unflatten(flat, spec).items()}
        full = trainer.consolidated_state_dict()
        same = all(torch.equal(synced[n].float(), full[n].float().cpu()) for n in synced)
        moved = any(not torch.equal(synced[n].float(), before[n]) for n in before)
        shapes = all(synced[n].shape == before[n].shape for n in before)
        return {"status": "PASS" if same and moved and shapes else "FAIL", "loss": round(loss.item(), 4),
                "grad_norm": round(norm, 4), "step_s": round(step_s, 3), "sync_buckets": len(buckets),
                "sync_equals_consolidated": same, "weights_changed_by_step": moved, "full_shapes": shapes,
                "param_dtype": str(next(trainer.module.parameters()).dtype)}
    finally:
        destroy_process_group()


@check("ppo_job")
def check_ppo_job(path: str, work: Path, extra: tuple[str, ...] = ()):
    import importlib.util

    import ray
    import torch

    from batray.config import load_config
    from batray.metrics import read_metrics
    from conftest import SAMPLE_TEXTS
    from actors import kit
    from batray import hooks
    from batray.ppo.driver import run_ppo

    texts = sorted(set(SAMPLE_TEXTS))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    backend = "vllm" if importlib.util.find_spec("vllm") else "hf"
    cuda = torch.cuda.is_available()
    cfg = load_config(None, [
        "ppo.steps=4", "ppo.rollout_batch_size=32", "ppo.micro_batch_size=16", "ppo.sampling.max_new_tokens=64",
        "ppo.reward.kind=rule", f"ppo.reward.target_text={json.dumps(' '.join(texts))}", "ppo.colocate=true",
        f"ppo.rollout.backend={backend}", "ppo.deepspeed.zero_stage=3", f"ppo.deepspeed.bf16={str(cuda).lower()}",
        "ppo.profile_phases=true", "ppo.ckpt_every=2", f"ppo.offload_between_phases={str(cuda).lower()}",
        *[f"ppo.{r}.num_gpus={int(cuda)}" for r in ("policy", "critic", "reference", "reward", "rollout")],
        *extra,
    ])
    memory = {}

    def awake_vs_asleep(_self):  # runs inside policy rank 0 after a step, when it is asleep
        asleep = torch.cuda.memory_allocated() / 2**30
        _self.trainer.wake()
        awake = torch.cuda.memory_allocated() / 2**30
        _self.trainer.sleep()
        return {"awake_gib": round(awake, 3), "asleep_gib": round(asleep, 3)}

    def on_step(*, step, roles):
        if step == 1:  # no checkpoint at step 1 (a checkpoint wakes the trainer)
            memory.update(ray.get(roles["policy"].actors[0].__ray_call__.remote(awake_vs_asleep)))

    out = work / "-".join(("ppo",) + tuple(x.replace("=", "_") for x in extra))
    with hooks.on(hooks.PPO_STEP_DONE, on_step):
        run_ppo(cfg, str(out), policy_init=path, reward_model=None, prompts=str(work / "prompts.jsonl"), kit=kit())
    rows = read_metrics(out)
    timed = rows[1:] or rows  # step 1 carries warm-up (first CUDA kernels, allocator growth)
    phases = ("generate", "experience", "train", "sync")  # scoring runs inside the experience phase
    step_s = sum(r["time_step"] for r in timed)
    compute_s = sum(r.get(f"compute_{p}") or 0.0 for r in timed for p in phases)
    last = rows[-1]
    from batray.ppo.weight_sync import choose_transport

    transport = choose_transport(cfg.ppo.sync_transport, colocate=True, cuda=cuda)
    return {"backend": backend, "zero_stage": 3, "sync_transport": transport, "policy_memory_step1": memory,
            "steps": len(rows), "reward": last["reward"],
            "rollout_logprob_diff_mean": last["rollout_logprob_diff_mean"],
            "rollout_logprob_diff_max": last["rollout_logprob_diff_max"],
            **{f"mean_time_{p}": round(sum(r[f"time_{p}"] for r in timed) / len(timed), 3) for p in phases},
            "mean_time_step": round(step_s / len(timed), 3),
            "orchestration_share": round(1 - compute_s / step_s, 3) if step_s else None,
            "checkpoints": sorted(p.name for p in (out / "ckpt").glob("step_*")), "ray": ray.__version__}


def _free_port() -> int:
    from batray.distributed import free_port

    return free_port()


def main() -> int:
    ap = argparse.ArgumentParser(description="PPO GPU checks (vLLM rollouts, NCCL sync, CUDA IPC, ZeRO-3, the job)")
    ap.add_argument("--out", default=None, help="write the JSON summary here (default: $OUT/gpu_check.json if set)")
    ap.add_argument("--skip", default="", help="comma-separated check names to skip")
    ap.add_argument("--rehearse-on-cpu", action="store_true",
                    help="no GPU: run the checks that can run on CPU (nccl_sync with gloo, zero3, ppo_job) to test this script")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check_env()
    if args.rehearse_on_cpu:
        skip |= {"vllm_rollout", "cuda_ipc"}
    elif RESULTS["env"]["status"] != "PASS":
        print("no CUDA device: nothing else to check")
        return 1
    path = build_checkpoint(work)
    sync_backend = "gloo" if args.rehearse_on_cpu else "nccl"
    for fn, args_ in ((check_vllm, (path,)), (check_nccl, (path, sync_backend)), (check_zero3, (path,))):
        if fn.check_name not in skip:
            fn(*args_)
    if not {"cuda_ipc", "ppo_job", "ppo_job_awake", "ppo_job_object_store"} <= skip:
        import ray

        from conftest import WORKER_ENV

        ray.init(num_gpus=0 if args.rehearse_on_cpu else 1, num_cpus=None if not args.rehearse_on_cpu else 4,
                 include_dashboard=False, runtime_env=WORKER_ENV, log_to_driver=False)
        try:
            if "cuda_ipc" not in skip:
                check_cuda_ipc(path)
            if "ppo_job" not in skip:
                check_ppo_job(path, work)
            variants = {  # the same job: trainers never asleep; synced through host memory as well
                "ppo_job_awake": ("ppo.offload_between_phases=false",),
                "ppo_job_object_store": ("ppo.sync_transport=object_store", "ppo.offload_between_phases=false"),
            }
            for name, overrides in variants.items():
                if name not in skip:
                    check(name)(check_ppo_job.__wrapped__)(path, work, overrides)
        finally:
            ray.shutdown()
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(RESULTS, indent=2, default=str))
    failed = [n for n, r in RESULTS.items() if r["status"] == "FAIL"]
    print(f"{len(RESULTS)} checks: {sum(r['status'] == 'PASS' for r in RESULTS.values())} passed, "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
