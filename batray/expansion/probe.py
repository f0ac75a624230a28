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
from pathlib import Path

import torch

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
    """Tensors of an HF safetensors folder by name, each read through a handle opened for that read (no
    mapped pages left behind)."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        if index.is_file():
            self.files = json.loads(index.read_text())["weight_map"]
        else:
            from safetensors import safe_open

            with safe_open(str(path / "model.safetensors"), "pt") as f:
                self.files = dict.fromkeys(f.keys(), "model.safetensors")
        self.path = path

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def _open(self, name: str):
        from safetensors import safe_open

        return safe_open(str(self.path / self.files[name]), "pt")

    def get(self, name: str) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_tensor(name).float()

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        with self._open(name) as f:
            return f.get_slice(name)[start:stop].float()

    def shape(self, name: str) -> list[int]:
        with self._open(name) as f:
            return f.get_slice(name).get_shape()


def streamed_logits(path: str | Path, ids: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the checkpoint at `path` on `ids`, holding one decoder layer's weights at a time.

    The model is built with its parameters on the meta device (buffers such as the rotary frequencies
    real); `inputs_embeds` are the embedding rows of `ids`; each decoder layer's weights are read in
    just before it runs and dropped after; the final norm is read; the head multiplies a block of
    vocabulary rows at a time (the tied embedding when the checkpoint has no `lm_head.weight`).
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    ckpt = _Checkpoint(path)
    config = AutoConfig.from_pretrained(str(path))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    names = [n for n, _ in model.named_parameters()]

    def load(prefix: str) -> None:
        for n in names:
            if n.startswith(prefix):
                set_module_tensor_to_device(model, n, "cpu", value=ckpt.get(n))

    def drop(prefix: str) -> None:
        for n in names:
            if n.startswith(prefix):
                set_module_tensor_to_device(model, n, "meta")

    body = model.get_decoder()
    hooks = []
    for i, layer in enumerate(body.layers):
        prefix = f"model.layers.{i}."
        hooks.append(layer.register_forward_pre_hook(lambda m, a, prefix=prefix: load(prefix)))
        hooks.append(layer.register_forward_hook(lambda m, a, o, prefix=prefix: drop(prefix)))
    load("model.norm.")
    embed = "model.embed_tokens.weight"
    unique, inverse = torch.unique(ids, return_inverse=True)
    with torch.no_grad():
        rows = torch.stack([ckpt.rows(embed, int(t), int(t) + 1)[0] for t in unique])
        embeds = rows[inverse]
        hidden = body(inputs_embeds=embeds).last_hidden_state
        head = "lm_head.weight" if "lm_head.weight" in ckpt else embed
        vocab, width = ckpt.shape(head)
        step = max(1, HEAD_BLOCK_BYTES // (4 * width))
        logits = torch.cat([hidden @ ckpt.rows(head, v, min(vocab, v + step)).T for v in range(0, vocab, step)], dim=-1)
        if "lm_head.bias" in ckpt:
            logits = logits + ckpt.get("lm_head.bias")
    for h in hooks:
        h.remove()
    return logits


def logit_deviation(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Max and mean absolute logit difference, with the reference logits' scale for context."""
    diff = (reference - other).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "reference_logit_std": float(reference.std())}


def measure(src: str | Path, dst: str | Path, *, tokens: int, seed: int) -> dict:
    """Deviation of `dst`'s logits from `src`'s on a seeded random batch, both run in float32 with their
    weights streamed from disk one decoder layer at a time (`streamed_logits`)."""
    vocab = json.loads(Path(src, "config.json").read_text())["vocab_size"]
    ids = probe_ids(vocab, tokens, seed)
    reference = streamed_logits(src, ids)
    other = streamed_logits(dst, ids)
    return {"probe_shape": list(ids.shape), "layers_streamed": True, **logit_deviation(reference, other)}
