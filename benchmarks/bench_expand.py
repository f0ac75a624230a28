"""Expansion throughput against copying the same bytes with the filesystem, and peak resident memory.

    python benchmarks/bench_expand.py [--layers 24] [--hidden 1024] [--workdir /tmp/bench_expand]

Builds a GLM checkpoint (BatGPT family: grouped KV heads, fused gate/up, QKV bias) of random float32
weights in 4 safetensors shards, then, side by side in one run:
  1. `expand` serially in a child process (heads x2 incl. KV, FFN x2, method exact), no probe: its
     wall time and the child's peak RSS (sampled every 5 ms while expanding), against the checkpoint's and largest tensor's size;
  2. the same expansion with one Ray task per output shard (2 CPUs);
  3. the baseline: copying the expanded output's bytes with the filesystem (shutil.copyfile), the
     limit any expansion could reach.
Prints the ratios. The probe is off: it loads whole models, which is what the streaming avoids.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUEST = dict(num_heads=16, num_kv_heads=4, intermediate_size=5632, method="exact")


def build_source(folder: Path, layers: int, hidden: int) -> dict:
    """Random float32 weights for a GLM of the given shape, written shard by shard (never the whole model)."""
    import torch
    from safetensors.torch import save_file

    from batray.models.presets import preset_config

    config = preset_config("batgpt-tiny", vocab_size=32000, hidden_size=hidden, intermediate_size=2816,
                           num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                           max_position_embeddings=2048)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    names = sorted(shapes)
    shards = 4
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {k: torch.randn(shapes[k], generator=gen) * 0.02 for k in part}
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        total += sum(t.numel() * 4 for t in tensors.values())
        weight_map.update({k: fname for k in part})
        del tensors
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    largest = max(shapes.values(), key=lambda s: s[0] * (s[1] if len(s) > 1 else 1))
    return {"bytes": total, "largest_tensor_bytes": largest[0] * largest[1] * 4, "largest_shape": list(largest)}


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from batray.expansion import Request, expand
import threading
import transformers, safetensors.torch  # imported before the baseline reading, as expand would

def rss():
    """(total, anonymous) resident bytes; the rest is file-backed: pages of the memory-mapped source
    shards, which the kernel can drop at any time."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    kb = lambda k: int(fields[k].split()[0]) * 1024
    return kb("VmRSS"), kb("RssAnon")

peak, peak_anon, stop = [rss()[0]], [rss()[1]], threading.Event()
baseline_rss, baseline_anon = peak[0], peak_anon[0]

def sample():  # the current RSS every 5 ms: ru_maxrss would be dominated by the imports' own peak
    while not stop.is_set():
        total, anon = rss()
        peak[0], peak_anon[0] = max(peak[0], total), max(peak_anon[0], anon)
        time.sleep(0.005)

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.perf_counter()
report = expand({src!r}, {dst!r}, Request(**{request!r}), probe=False, max_shard_bytes=512 << 20)
stop.set(); sampler.join()
print(json.dumps({{"seconds": time.perf_counter() - t0, "bytes": report["bytes_written"], "shards": report["shards"],
                  "peak_rss": peak[0], "baseline_rss": baseline_rss,
                  "peak_anon": peak_anon[0], "baseline_anon": baseline_anon}}))
"""


def expand_serial(src: Path, dst: Path) -> dict:
    code = CHILD.format(root=str(ROOT), src=str(src), dst=str(dst), request=REQUEST)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def expand_ray(src: Path, dst: Path) -> dict:
    import ray

    from batray.expansion import Request, expand
    from actors.shard_writer import ShardWriter
    from batray.config import load_config
    from batray.expansion.run import shard_runner

    for attempt in range(3):  # a local Ray can time out starting on a box crowded by other work
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
            break
        except Exception:
            if attempt == 2:
                raise
    try:
        t0 = time.perf_counter()
        report = expand(src, dst, Request(**REQUEST), probe=False, max_shard_bytes=512 << 20,
                        run_shards=shard_runner(load_config(None, []), ShardWriter))
        return {"seconds": time.perf_counter() - t0, "bytes": report["bytes_written"], "shards": report["shards"]}
    finally:
        ray.shutdown()


def copy_bytes(src: Path, dst: Path) -> dict:
    """The filesystem baseline: copy every weight file of the expanded folder."""
    dst.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    total = 0
    for f in sorted(src.glob("*.safetensors")):
        shutil.copyfile(f, dst / f.name)
        total += f.stat().st_size
    os.sync()
    return {"seconds": time.perf_counter() - t0, "bytes": total}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--workdir", default="/tmp/bench_expand")
    args = p.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    src = work / "src"
    info = build_source(src, args.layers, args.hidden)
    os.sync()
    print(f"source: GLM {args.layers} layers, hidden {args.hidden}, {info['bytes'] / 1e9:.2f} GB float32 "
          f"in 4 shards; largest tensor {info['largest_shape']} = {info['largest_tensor_bytes'] / 1e6:.0f} MB")
    print(f"request: {REQUEST}")

    gbps = lambda r: r["bytes"] / r["seconds"] / 1e9  # noqa: E731
    serial = expand_serial(src, work / "serial")
    os.sync()
    baseline = copy_bytes(work / "serial", work / "copy")
    shutil.rmtree(work / "copy")
    print(f"output: {serial['bytes'] / 1e9:.2f} GB in {serial['shards']} shards")
    print(f"expand, serial (1 process):    {serial['seconds']:7.2f} s  {gbps(serial):.3f} GB/s written")
    print(f"filesystem copy, same bytes:   {baseline['seconds']:7.2f} s  {gbps(baseline):.3f} GB/s", flush=True)
    parallel = expand_ray(src, work / "ray")
    print(f"expand, Ray tasks (2 CPUs):    {parallel['seconds']:7.2f} s  {gbps(parallel):.3f} GB/s written")
    print(f"ratio expand/copy throughput: serial {gbps(serial) / gbps(baseline):.2f}, "
          f"Ray {gbps(parallel) / gbps(baseline):.2f}")
    print(f"peak RSS of the serial expansion: {serial['peak_rss'] / 1e6:.0f} MB = "
          f"{serial['peak_rss'] / info['bytes']:.3f} x source, {serial['peak_rss'] / serial['bytes']:.3f} x output, "
          f"{serial['peak_rss'] / info['largest_tensor_bytes']:.1f} x largest source tensor; "
          f"{(serial['peak_rss'] - serial['baseline_rss']) / 1e6:.0f} MB above the process before expanding "
          f"({serial['baseline_rss'] / 1e6:.0f} MB: python + torch + transformers)")
    print(f"  of which anonymous (the expansion's own buffers, not mapped source pages): peak "
          f"{(serial['peak_anon'] - serial['baseline_anon']) / 1e6:.0f} MB above the start = "
          f"{(serial['peak_anon'] - serial['baseline_anon']) / info['largest_tensor_bytes']:.1f} x largest source tensor")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; ru_maxrss of this driver {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
