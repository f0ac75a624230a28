"""How close the expanded model is to its source: logit deviation on a probe batch.

The probe is random token ids (seeded). Both models are run in float32 with their weights streamed
from the checkpoint (`streamed_logits`): the embedding rows of the probe's ids, then one decoder
layer at a time, then the head a block of vocabulary rows at a time, so the probe, like the
expansion, holds one layer's weights whatever the model's size. `exact` width growth and
`stack: zero` should give a
deviation at float32 rounding level; `fpi` (Eqs. 5-7) shows how far RMSNorm's changed statistics
move the function; `stack: copy` is not function preserving at all.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from batray.expansion.direct_io import DirectTensors

PROBE_BATCH = 2


def probe_ids(vocab_size: int, tokens: int, seed: int, batch: int = PROBE_BATCH) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, tokens), generator=gen)


def logits_of(path: str | Path, ids: torch.Tensor, *, offload: bool = False) -> torch.Tensor:
    """Logits of the checkpoint at `path` (float32 in memory; or, with `offload`, decoder layers left on
    disk and streamed in one at a time by accelerate, in the checkpoint's own dtype)."""
    import tempfile

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from batray.models.presets import load_causal_lm

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="batray-probe-") as spill:
        if offload:
            cfg = json.loads(Path(path, "config.json").read_text())
            device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
            device_map.update({f"model.layers.{i}": "disk" for i in range(cfg["num_hidden_layers"])})
            # safetensors layers are read in place: nothing is written to `spill` when dtypes match
            model = AutoModelForCausalLM.from_pretrained(str(path), device_map=device_map, offload_folder=spill,
                                                         dtype="auto")
        else:
            model = load_causal_lm(str(path), dtype=torch.float32)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=ids).logits.float()
        del model
    return out


# Vocabulary rows of the output head multiplied at a time (float32 bytes) in `streamed_logits`.
HEAD_BLOCK_BYTES = 64 << 20


class _Checkpoint:
    """Tensors of an HF safetensors folder by name, as float32. Through `safe_open`, each read through a
    handle opened for that read (no mapped pages left behind); with `direct`, through one `DirectTensors`
    per file (O_DIRECT into a reused buffer: for an output just written that way, nothing is read through
    the page cache)."""

    def __init__(self, path: Path, *, direct: bool = False):
        index = path / "model.safetensors.index.json"
        if index.is_file():
            self.files = json.loads(index.read_text())["weight_map"]
        else:
            from safetensors import safe_open

            with safe_open(str(path / "model.safetensors"), "pt") as f:
                self.files = dict.fromkeys(f.keys(), "model.safetensors")
        self.path = path
        self.direct = direct
        self._direct: dict[str, DirectTensors] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def _open(self, name: str):
        from safetensors import safe_open

        return safe_open(str(self.path / self.files[name]), "pt")

    def _direct_file(self, name: str) -> DirectTensors:
        file = self.files[name]
        if file not in self._direct:
            self._direct[file] = DirectTensors(self.path / file)
        return self._direct[file]

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Tensor `name` as float32; into `out` (same shape) when given."""
        if self.direct:
            return self._direct_file(name).get(name, out=out)
        with self._open(name) as f:
            value = f.get_tensor(name)
        return value.float() if out is None else out.copy_(value)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if self.direct:
            return self._direct_file(name).rows(name, start, stop)
        with self._open(name) as f:
            return f.get_slice(name)[start:stop].float()

    def shape(self, name: str) -> list[int]:
        if self.direct:
            return self._direct_file(name).shape(name)
        with self._open(name) as f:
            return f.get_slice(name).get_shape()

    def close(self) -> None:
        for f in self._direct.values():
            f.close()
        self._direct.clear()


def streamed_logits(path: str | Path, ids: torch.Tensor, *, direct: bool = False) -> torch.Tensor:
    """Float32 logits of the checkpoint at `path` on `ids`, holding one decoder layer's weights at a time.

    The model is built with its parameters on the meta device (buffers such as the rotary frequencies
    real); `inputs_embeds` are the embedding rows of `ids`; each decoder layer's weights are read in
    just before it runs and dropped after; the final norm is read; the head multiplies a block of
    vocabulary rows at a time (the tied embedding when the checkpoint has no `lm_head.weight`).
    `direct`: read the weights with O_DIRECT (`_Checkpoint`), for a checkpoint written that way.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    ckpt = _Checkpoint(path, direct=direct)
    config = AutoConfig.from_pretrained(str(path))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    names = [n for n, _ in model.named_parameters()]

    # A dropped layer's float32 tensors are reused for a later layer's weights of the same shape: fresh
    # float32 memory for every layer would be page-faulted in anew each time (for a few hundred MB a layer,
    # most of the probe's time on a small VM).
    spare: dict[tuple, list[torch.Tensor]] = {}
    spare_lock = threading.Lock()

    def buffer(shape: tuple) -> torch.Tensor | None:
        with spare_lock:
            free = spare.get(shape)
            return free.pop() if free else None

    def read(prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for n in names:
            if n.startswith(prefix):
                shape = tuple(model.get_parameter(n).shape)
                out[n] = ckpt.get(n, out=buffer(shape))
        return out

    def place(tensors: dict[str, torch.Tensor]) -> None:
        for n, value in tensors.items():
            set_module_tensor_to_device(model, n, "cpu", value=value)

    def drop(prefix: str) -> None:
        for n in names:
            if n.startswith(prefix):
                value = model.get_parameter(n).data
                set_module_tensor_to_device(model, n, "meta")
                with spare_lock:
                    spare.setdefault(tuple(value.shape), []).append(value)

    body = model.get_decoder()
    prefixes = [f"model.layers.{i}." for i in range(len(body.layers))]
    # Layer i + 1's weights are read (and made float32) in a thread while layer i runs, so the disk and the
    # arithmetic overlap; one read at a time, so `ckpt` is never used by two threads at once.
    reader = ThreadPoolExecutor(1, thread_name_prefix="probe-read")
    pending: dict[int, Future] = {}

    def load(i: int) -> None:
        tensors = pending.pop(i).result()
        if i + 1 < len(prefixes):
            pending[i + 1] = reader.submit(read, prefixes[i + 1])
        place(tensors)

    hooks = []
    for i, layer in enumerate(body.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: load(i)))
        hooks.append(layer.register_forward_hook(lambda m, a, o, prefix=prefixes[i]: drop(prefix)))
    place(read("model.norm."))
    embed = "model.embed_tokens.weight"
    unique, inverse = torch.unique(ids, return_inverse=True)
    with torch.no_grad():
        rows = torch.stack([ckpt.rows(embed, int(t), int(t) + 1)[0] for t in unique])
        embeds = rows[inverse]
        if prefixes:
            pending[0] = reader.submit(read, prefixes[0])
        try:
            hidden = body(inputs_embeds=embeds).last_hidden_state
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
        head = "lm_head.weight" if "lm_head.weight" in ckpt else embed
        vocab, width = ckpt.shape(head)
        step = max(1, HEAD_BLOCK_BYTES // (4 * width))
        logits = torch.cat([hidden @ ckpt.rows(head, v, min(vocab, v + step)).T for v in range(0, vocab, step)], dim=-1)
        if "lm_head.bias" in ckpt:
            logits = logits + ckpt.get("lm_head.bias")
    for h in hooks:
        h.remove()
    ckpt.close()
    return logits


def logit_deviation(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Max and mean absolute logit difference, with the reference logits' scale for context."""
    diff = (reference - other).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "reference_logit_std": float(reference.std())}


# A source of at least this many bytes gets its probe in a child process (`Probe`): its modelling imports and
# float32 forwards then use the second CPU while this process writes the shards. In a thread they would
# share one interpreter lock with the writer (measured: the shards took 8.8 s instead of 4.8 s); for a
# small model the child's own start-up (~3 s) would cost more than the whole probe.
CHILD_MIN_BYTES = 256 << 20


def checkpoint_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _deviation(src: str | Path, dst: str | Path, ids: torch.Tensor, reference: torch.Tensor | None,
               direct: bool) -> dict:
    if reference is None:
        reference = streamed_logits(src, ids)
    other = streamed_logits(dst, ids, direct=direct)
    return {"probe_shape": list(ids.shape), "layers_streamed": True, **logit_deviation(reference, other)}


class Probe:
    """`measure`, started before the shards are written: for a large source (`CHILD_MIN_BYTES`) a child
    process (`python -m batray.expansion.probe`) computes the source's logits meanwhile and, told where
    the output is, the output's; for a small one, `deviation` runs both here. Call `close` in any case."""

    def __init__(self, src: str | Path, *, tokens: int, seed: int, in_child: bool | None = None):
        self.src, self.tokens, self.seed = str(src), tokens, seed
        vocab = json.loads(Path(src, "config.json").read_text())["vocab_size"]
        self.ids = probe_ids(vocab, tokens, seed)
        self._child = None
        if in_child if in_child is not None else checkpoint_bytes(src) >= CHILD_MIN_BYTES:
            import subprocess
            import sys

            import batray

            root = str(Path(batray.__file__).resolve().parent.parent)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
                   "TRANSFORMERS_VERBOSITY": "error"}
            self._child = subprocess.Popen([sys.executable, "-m", "batray.expansion.probe", self.src, str(tokens),
                                            str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env=env)

    def deviation(self, dst: str | Path, *, direct: bool = False) -> dict:
        """`dst`'s logits against the source's; `direct`: `dst`'s shards were written with O_DIRECT, so they
        are read back that way."""
        if self._child is None:
            return _deviation(self.src, dst, self.ids, None, direct)
        out, err = self._child.communicate(json.dumps({"dst": str(dst), "direct": direct}) + "\n")
        lines = out.strip().splitlines()
        if self._child.returncode or not lines:
            from batray.errors import BatrayError

            last = (err.strip().splitlines() or ["no output"])[-1]
            raise BatrayError(f"expand: the probe process failed (exit {self._child.returncode}): {last}")
        return json.loads(lines[-1])

    def close(self) -> None:
        """Stop a child that was never told where the output is (the writing failed)."""
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
            self._child.communicate()


def measure(src: str | Path, dst: str | Path, *, tokens: int, seed: int, direct: bool = False) -> dict:
    """Deviation of `dst`'s logits from `src`'s on a seeded random batch, both run in float32 with their
    weights streamed from disk one decoder layer at a time (`streamed_logits`)."""
    return _deviation(src, dst, probe_ids(json.loads(Path(src, "config.json").read_text())["vocab_size"], tokens,
                                          seed), None, direct)


def _child_main(src: str, tokens: str, seed: str) -> None:
    """`Probe`'s child: the source's logits first, then one JSON line on stdin names the output, and the
    deviation is printed as one JSON line. EOF on stdin (the parent gave up) ends it quietly."""
    import sys

    vocab = json.loads(Path(src, "config.json").read_text())["vocab_size"]
    ids = probe_ids(vocab, int(tokens), int(seed))
    reference = streamed_logits(src, ids)
    line = sys.stdin.readline()
    if not line.strip():
        return
    ask = json.loads(line)
    print(json.dumps(_deviation(src, ask["dst"], ids, reference, ask["direct"])), flush=True)


if __name__ == "__main__":
    import sys

    _child_main(*sys.argv[1:])
