"""How close the expanded model is to its source: logit deviation on a probe batch.

The probe is random token ids (seeded); models too big for memory are run with their decoder layers
streamed from disk. `exact` width growth and `stack: zero` should give a
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


def logit_deviation(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Max and mean absolute logit difference, with the reference logits' scale for context."""
    diff = (reference - other).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "reference_logit_std": float(reference.std())}


def fp32_bytes(folder: str | Path) -> int:
    """Memory a float32 copy of a checkpoint needs (from the config: parameter count x 4)."""
    from transformers import AutoConfig

    from batray.models.presets import count_parameters

    return 4 * count_parameters(AutoConfig.from_pretrained(str(folder)))


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(src: str | Path, dst: str | Path, *, tokens: int, seed: int) -> dict:
    """Deviation of `dst`'s logits from `src`'s on a seeded random batch.

    The two models are loaded one after the other. When the larger one would not fit in 80% of the
    available memory as float32, the decoder layers stay on disk and are streamed in one at a time
    (accelerate's disk offload), so the probe, like the expansion, needs a few tensors' memory.
    """
    need = max(fp32_bytes(src), fp32_bytes(dst))
    avail = available_bytes()
    offload = avail is not None and need > 0.8 * avail
    vocab = json.loads(Path(src, "config.json").read_text())["vocab_size"]
    ids = probe_ids(vocab, tokens, seed)
    reference = logits_of(src, ids, offload=offload)
    other = logits_of(dst, ids, offload=offload)
    return {"probe_shape": list(ids.shape), "layers_offloaded": offload, **logit_deviation(reference, other)}
