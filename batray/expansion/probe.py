"""How close the expanded model is to its source: logit deviation on a probe batch.

The probe is random token ids (seeded). `exact` width growth and `stack: zero` should give a
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


def logits_of(path: str | Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers.utils import logging as hf_logging

    from batray.models.presets import load_causal_lm

    hf_logging.disable_progress_bar()
    model = load_causal_lm(str(path), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
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
    """Deviation of `dst`'s logits from `src`'s on a seeded random batch; skipped if it cannot fit in memory.

    The probe loads the two models one after the other (float32), so it needs the larger of the two
    in memory; when that is over 80% of the available memory it is skipped and says so.
    """
    need = max(fp32_bytes(src), fp32_bytes(dst))
    avail = available_bytes()
    if avail is not None and need > 0.8 * avail:
        return {"skipped": f"probe needs ~{need / 2**30:.1f} GiB (float32 model) but {avail / 2**30:.1f} GiB "
                           f"are available"}
    vocab = json.loads(Path(src, "config.json").read_text())["vocab_size"]
    ids = probe_ids(vocab, tokens, seed)
    reference = logits_of(src, ids)
    other = logits_of(dst, ids)
    return {"probe_shape": list(ids.shape), **logit_deviation(reference, other)}
