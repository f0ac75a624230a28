"""Held-out evaluation of a reward model: pairwise accuracy on strict pairs, tie accuracy within the
band, the reward distribution (mean/std, saved for PPO's normalization) and a calibration table.

The calibration table bins pairs by the reward gap |r(y') - r(y)|: a calibrated reward model is more
often right where the gap is large, and its ties sit in the small-gap bins. `p_bt` is the
Bradley-Terry probability sigmoid(|gap|) the gap implies, to compare with the observed accuracy.
"""

from __future__ import annotations

import math

import torch

from batray.reward.data import EncodedTriple, collate_triples
from batray.reward.model import pair_rewards


@torch.no_grad()
def score_triples(model, encoded: list[EncodedTriple], pad_id: int, batch_size: int = 16,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r_a, r_b, d) for every triple, in order, with the model in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    r_a, r_b, d = [], [], []
    try:
        for i in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate_triples(encoded[i: i + batch_size], pad_id).items()}
            a, b = pair_rewards(model, batch)
            r_a.append(a.cpu())
            r_b.append(b.cpu())
            d.append(batch["d"].cpu())
    finally:
        model.train(was_training)
    if not r_a:
        empty = torch.zeros(0)
        return empty, empty, torch.zeros(0, dtype=torch.long)
    return torch.cat(r_a), torch.cat(r_b), torch.cat(d)


def calibration_table(r_a: torch.Tensor, r_b: torch.Tensor, d: torch.Tensor, margin: float = 1.0) -> list[dict]:
    """Rows per |gap| bin (edges in units of the margin): pairs, accuracy, ties, mean gap, p_bt."""
    gap = (r_b - r_a).abs()
    strict = d != 0
    correct = (d.to(gap.dtype) * (r_b - r_a)) > 0
    edges = [0.0, 0.25, 0.5, 1.0, 2.0, math.inf]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (gap >= lo * margin) & (gap < hi * margin)
        n_strict = int((in_bin & strict).sum())
        n_ties = int((in_bin & ~strict).sum())
        if n_strict + n_ties == 0:
            continue
        rows.append({
            "gap_from": lo * margin,
            "gap_to": hi * margin,
            "pairs": n_strict,
            "accuracy": float(correct[in_bin & strict].float().mean()) if n_strict else None,
            "ties": n_ties,
            "mean_gap": float(gap[in_bin].mean()),
            "p_bt": float(torch.sigmoid(gap[in_bin & strict]).mean()) if n_strict else None,
        })
    return rows


def reward_metrics(r_a: torch.Tensor, r_b: torch.Tensor, d: torch.Tensor, *, tie_band: float,
                   margin: float = 1.0) -> dict:
    """The held-out figures: accuracy on strict pairs, tie accuracy (|gap| <= tie_band), Eq. 3 loss,
    reward mean/std over every scored response, and the calibration table."""
    strict = d != 0
    signed = d.to(r_a.dtype) * (r_b - r_a)
    gap = (r_b - r_a).abs()
    rewards = torch.cat([r_a, r_b])
    n_strict, n_ties = int(strict.sum()), int((~strict).sum())
    return {
        "pairs": int(d.numel()),
        "strict_pairs": n_strict,
        "ties": n_ties,
        "accuracy": float((signed[strict] > 0).float().mean()) if n_strict else None,
        "tie_accuracy": float((gap[~strict] <= tie_band).float().mean()) if n_ties else None,
        "tie_band": tie_band,
        "loss_eq3": float(torch.clamp(margin - signed, min=0).mean()) if d.numel() else None,
        "mean_gap_strict": float(signed[strict].mean()) if n_strict else None,
        "reward_mean": float(rewards.mean()) if rewards.numel() else 0.0,
        "reward_std": float(rewards.std(unbiased=False)) if rewards.numel() > 1 else 1.0,
        "calibration": calibration_table(r_a, r_b, d, margin),
    }


def format_calibration(rows: list[dict]) -> str:
    """The calibration table as aligned text, for logs and reports."""
    lines = [f"{'|gap| bin':>14} {'pairs':>6} {'acc':>6} {'p_bt':>6} {'ties':>5} {'mean|gap|':>9}"]
    for r in rows:
        hi = "inf" if math.isinf(r["gap_to"]) else f"{r['gap_to']:.2f}"
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        p = "-" if r["p_bt"] is None else f"{r['p_bt']:.3f}"
        lines.append(f"{r['gap_from']:>6.2f}-{hi:<7} {r['pairs']:>6} {acc:>6} {p:>6} {r['ties']:>5} {r['mean_gap']:>9.3f}")
    return "\n".join(lines)
