"""LoRA vs full fine-tuning on the same model: trainable-parameter share and peak memory, as ratios.

Both sides train the same GLM (BatGPT's family, built from config: ~66M parameters, large enough that the
optimizer state shows) with batray's own training pieces: `batray.models.lora.apply_lora` (LoRA side only),
`batray.train.engine.build_engine` (DeepSpeed ZeRO-0 over a one-process gloo group, torch AdamW, the LR
schedule, clipping) and `CausalLMTask.loss` (Eq. 2), on the same fixed batches of token ids for the same
number of steps. Ray Train around it adds the same constant per-worker cost to both sides, so it is left out.

Each side runs in a fresh Python process (so one side's allocations cannot hide in the other's peak) and
reports:
- trainable and total parameter counts (the share);
- model-state bytes at the end, torch-level: parameters + gradients + the optimizer's state tensors (Adam's
  moments), summed over tensors: what full fine-tuning pays ~4x for;
- peak RSS of the process (the kernel's VmHWM: resident set high-water mark; PSS has no high-water mark) and
  the same minus the RSS after imports, before the model (the Python/torch/DeepSpeed baseline both share).

Run: `PYTHONPATH=. python benchmarks/bench_lora.py [--steps 4 --rank 8 --layers 12]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=2,
             head_dim=64)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(mode: str, args) -> dict:
    """One side, in this process: build, train `args.steps` steps, measure."""
    import deepspeed  # noqa: F401 - imported by both sides before the baseline is read
    import peft  # noqa: F401
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)

    from batray.config.base import LoraConfig, TrainConfig
    from batray.models.lora import apply_lora, trainable_share
    from batray.models.presets import build_model, preset_config
    from batray.train.engine import build_engine
    from batray.train.task import CausalLMTask, ModelSource, Objective

    # a one-process group, as a Ray Train worker has with num_workers=1 (DeepSpeed reads the launcher's variables)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)
    baseline_kb = _status_kb("VmRSS")  # imports done, no model yet

    model = build_model(preset_config("batgpt-tiny", num_hidden_layers=args.layers, **MODEL), seed=0)
    if mode == "lora":
        model = apply_lora(model, LoraConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.0))
    trainable, total = trainable_share(model)
    tc = TrainConfig(max_steps=args.steps, micro_batch_size=args.batch, seq_len=args.seq_len,
                     optim={"lr": 1e-4, "warmup_steps": 0})
    engine, optimizer, _ = build_engine(model, tc, use_gpu=False)
    task = CausalLMTask(model_source=ModelSource(), tokenizer_dir="", stage="sft", objective=Objective.INSTRUCTION)

    gen = torch.Generator().manual_seed(0)  # the same batches on both sides
    ids = torch.randint(0, MODEL["vocab_size"], (args.steps, args.batch, args.seq_len), generator=gen)
    labels = ids.clone()
    labels[:, :, : args.seq_len // 2] = -100  # a prompt half without loss, as SFT masks the prompt
    positions = torch.arange(args.seq_len).expand(args.batch, -1)
    engine.train()
    step_s, losses, grad_bytes = [], [], 0
    for step in range(args.steps):
        t0 = time.perf_counter()
        loss, _ = task.loss(engine, {"input_ids": ids[step], "labels": labels[step], "position_ids": positions})
        engine.backward(loss)
        grad_bytes = max(grad_bytes, sum(p.grad.numel() * p.grad.element_size() for p in engine.module.parameters()
                                         if p.grad is not None))  # before the step frees them
        engine.step()
        step_s.append(time.perf_counter() - t0)
        losses.append(float(loss))

    base_opt = getattr(optimizer, "optimizer", optimizer)
    params = list(engine.module.parameters())
    state_bytes = {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grads": grad_bytes,  # their peak, read after each backward
        "optimizer": sum(v.numel() * v.element_size() for s in base_opt.state.values() for v in s.values()
                         if torch.is_tensor(v)),
    }
    dist.destroy_process_group()
    return {"mode": mode, "trainable": trainable, "total": total, "state_bytes": state_bytes,
            "peak_rss_kb": _status_kb("VmHWM"), "baseline_rss_kb": baseline_kb,
            "step_s": sorted(step_s)[len(step_s) // 2], "losses": losses}


def run_side(mode: str, args, port: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps), "--rank", str(args.rank),
           "--layers", str(args.layers), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
           "--threads", str(args.threads), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} side failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--port", type=int, default=29631)
    ap.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0

    import deepspeed
    import peft
    import torch
    import transformers

    load_start = os.getloadavg()
    full = run_side("full", args, args.port)
    lora = run_side("lora", args, args.port + 1)
    load_end = os.getloadavg()

    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"deepspeed {deepspeed.__version__}; {args.threads} thread(s) per side")
    print(f"load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}")
    print(f"model: GLM (batgpt-tiny family) {MODEL}, {args.layers} layers, {full['total']:,} parameters; "
          f"LoRA rank {args.rank}, alpha {2 * args.rank}, default targets (q/k/v/o, gate_up, down); "
          f"{args.steps} steps of {args.batch} x {args.seq_len} tokens, AdamW, fp32, DeepSpeed ZeRO-0")
    rows = [
        ("trainable parameters", f"{full['trainable']:,}", f"{lora['trainable']:,}",
         lora["trainable"] / full["trainable"]),
        ("trainable share", f"{full['trainable'] / full['total']:.2%}", f"{lora['trainable'] / lora['total']:.2%}",
         None),
    ]
    for key in ("params", "grads", "optimizer"):
        f, lo = full["state_bytes"][key], lora["state_bytes"][key]
        rows.append((f"{key} bytes (torch)", _gb(f), _gb(lo), lo / f if f else None))
    f_state, l_state = sum(full["state_bytes"].values()), sum(lora["state_bytes"].values())
    rows.append(("model state (params+grads+optimizer)", _gb(f_state), _gb(l_state), l_state / f_state))
    rows.append(("peak RSS (VmHWM)", _gb(full["peak_rss_kb"] * 1024), _gb(lora["peak_rss_kb"] * 1024),
                 lora["peak_rss_kb"] / full["peak_rss_kb"]))
    f_own = full["peak_rss_kb"] - full["baseline_rss_kb"]
    l_own = lora["peak_rss_kb"] - lora["baseline_rss_kb"]
    rows.append(("peak RSS above the import baseline", _gb(f_own * 1024), _gb(l_own * 1024), l_own / f_own))
    rows.append(("median step time", f"{full['step_s']:.2f} s", f"{lora['step_s']:.2f} s",
                 lora["step_s"] / full["step_s"]))
    print("| | full fine-tuning | LoRA | LoRA / full |")
    print("|---|---:|---:|---:|")
    for name, f, lo, ratio in rows:
        print(f"| {name} | {f} | {lo} | {'' if ratio is None else f'{ratio:.3f}'} |")
    print(f"import baseline RSS: full {_gb(full['baseline_rss_kb'] * 1024)}, "
          f"lora {_gb(lora['baseline_rss_kb'] * 1024)}")
    print(f"losses: full {[round(x, 3) for x in full['losses']]}, lora {[round(x, 3) for x in lora['losses']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
