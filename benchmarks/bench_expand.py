"""`batray expand` (width x2, exact) as a whole process tree against `cp -r` + `sync` of the same source.

    python benchmarks/bench_expand.py [--layers 24 36] [--hidden 1024] [--workdir /tmp/bench_expand]

For each source size: builds a GLM checkpoint (BatGPT family: grouped KV heads, fused gate/up, QKV
bias) of random bf16 weights in 400 MB safetensors shards, then side by side:
  1. the baseline: `cp -r SRC COPY && sync` (read + write of the source's bytes);
  2. the landed command, `python -m batray.cli expand SRC DST` with hidden 1024 -> 2048, heads 8 -> 16,
     KV heads 2 -> 4, FFN 2816 -> 5632, `--method exact`, its defaults otherwise (the probe on, the
     shard writers on a local Ray cluster), then `sync`.
Both wall times include process start-up. Bandwidth is (bytes read + bytes written) / wall time. For
scale, a third line times `dd oflag=direct` writing the output's bytes (rounded up to 32 MB blocks): the
device's floor for the output alone.
While the expansion runs, the proportional set size (`psutil.Process.memory_full_info().pss`) of the
command and all of its descendants (Ray's GCS, raylet, workers) is summed every few ms; shared pages
(Ray's object store, mapped files, libraries) count once over the tree. Prints machine info and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FLAGS = ["--hidden-size", "2048", "--num-heads", "16", "--num-kv-heads", "4", "--intermediate-size", "5632",
         "--method", "exact"]
SHARD_BYTES = 400 << 20


def build_source(folder: Path, layers: int, hidden: int) -> int:
    """Random bf16 weights for a GLM of this shape in ~400 MB shards, written a shard at a time; returns bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from batray.models.presets import preset_config

    config = preset_config("batgpt-tiny", vocab_size=32000, hidden_size=hidden, intermediate_size=2816,
                           num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                           max_position_embeddings=2048, dtype="bfloat16")
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    groups, current, size = [], [], 0
    for name in sorted(shapes):
        n = 2 * torch.Size(shapes[name]).numel()
        if current and size + n > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    groups.append(current)
    weight_map, total = {}, 0
    for s, part in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.randn(shapes[k], generator=gen) * 0.02).to(torch.bfloat16) for k in part}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update(dict.fromkeys(part, fname))
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return total


def tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def timed(cmd: list[str], env: dict | None = None, sample: bool = False) -> dict:
    """Run `cmd` then `sync`; wall seconds, and (with `sample`) the peak PSS summed over its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def watch():
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak[0] = max(peak[0], tree_pss(ps))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    if sample:
        watcher.start()
    out = proc.communicate()[0]
    done.set()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    os.sync()
    seconds = time.perf_counter() - t0
    if sample:
        watcher.join()
    return {"seconds": seconds, "peak_pss": peak[0], "output": out}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, nargs="+", default=[24, 36])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--workdir", default="/tmp/bench_expand")
    p.add_argument("overrides", nargs="*", help="key.sub=value passed to batray expand (e.g. expand.probe=false)")
    args = p.parse_args()
    work = Path(args.workdir)
    load = os.getloadavg()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    for layers in args.layers:
        if work.exists():
            shutil.rmtree(work)
        src = work / "src"
        src_bytes = build_source(src, layers, args.hidden)
        os.sync()
        copy = timed(["cp", "-r", str(src), str(work / "copy")])
        shutil.rmtree(work / "copy")
        os.sync()
        exp = timed([sys.executable, "-m", "batray.cli", "expand", str(src), str(work / "dst"), *FLAGS,
                     f"run_dir={work / 'run'}", *args.overrides], env=env, sample=True)
        out_bytes = folder_bytes(work / "dst")
        # The device's floor for the output alone: its bytes written unbuffered by dd (no page cache, no CPU work).
        floor = timed(["dd", "if=/dev/zero", f"of={work / 'floor'}", "bs=32M", f"count={-(-out_bytes // (32 << 20))}",
                       "oflag=direct", "status=none"])
        (work / "floor").unlink()
        src_bytes_on_disk = folder_bytes(src)
        copy_bw = 2 * src_bytes_on_disk / copy["seconds"]
        exp_bw = (src_bytes_on_disk + out_bytes) / exp["seconds"]
        report = json.loads((work / "dst" / "expansion.json").read_text())
        print(f"source: GLM {layers} layers, hidden {args.hidden}, {src_bytes / 1e9:.2f} GB bf16 in "
              f"{len(list(src.glob('*.safetensors')))} shards -> {out_bytes / 1e9:.2f} GB "
              f"({report['shards']} shards), probe: {report['deviation'].get('max_abs', 'off')}")
        print(f"  cp -r + sync:          {copy['seconds']:7.2f} s  {copy_bw / 1e9:.3f} GB/s read+write")
        print(f"  batray expand + sync:  {exp['seconds']:7.2f} s  {exp_bw / 1e9:.3f} GB/s read+write "
              f"(writing the shards: {report['write_seconds']:.2f} s)")
        print(f"  dd oflag=direct of the output's bytes: {floor['seconds']:5.2f} s (expand takes "
              f"{exp['seconds'] / floor['seconds']:.1f}x this floor)")
        print(f"  ratio expand/copy bandwidth: {exp_bw / copy_bw:.2f}; peak PSS of the expand process tree "
              f"(driver + Ray): {exp['peak_pss'] / 1e9:.2f} GB")
        shutil.rmtree(work)
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, python {platform.python_version()}; "
          f"load average at start {load:.2f}")


if __name__ == "__main__":
    main()
