"""The reward stage as a task of the shared Ray Train loop (`batray.train.TrainTask`).

Rows of the training dataset hold one triple each, padded to a fixed width so they batch into
arrays: `ids_a`, `ids_b` (y and y', right-padded), `len_a`, `len_b`, `d`. `to_device` trims a batch
to its longest sequence and stacks y over y' into one forward of 2B sequences; with `packed`
(`reward.packing`) it packs those 2B sequences whole into fewer rows of that width
(`batray.reward.packing`), each attending only to itself, the rewards read at each one's last token.

The model each worker trains is `RewardModule`: the Hugging Face reward model plus, for
`tie_loss: rao_kupper`, the learned tie threshold; both are computed inside `forward`, so ZeRO-3
gathers the threshold like any other parameter. `save_final` writes the HF model alone and puts the
threshold and the held-out evaluation (accuracy, tie accuracy, reward mean/std, calibration) into
`batray.json` and `reward_stats.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from batray.objectives.reward import raw_from_theta, reward_loss, theta_from_raw
from batray.reward.data import EncodedTriple
from batray.reward.packing import pack_sequences, packed_rewards
from batray.train.task import TrainTask

# Stats the loop sums over micro batches and workers; `metrics` turns them into means.
_SUMMED = ("loss", "loss_eq3", "loss_eq3_strict", "correct", "gap", "ties_in_band", "theta")


class RewardModule(torch.nn.Module):
    """R plus, when ties follow Rao-Kupper, its learned threshold theta = softplus(tie_raw)."""

    def __init__(self, model: torch.nn.Module, tie_threshold: float | None = None):
        super().__init__()
        self.model = model
        # shape [1], not 0-d: ZeRO partitions and gathers 1-d tensors
        self.tie_raw = None if tie_threshold is None else torch.nn.Parameter(torch.tensor([raw_from_theta(tie_threshold)]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, ends: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rewards of a padded batch (`attention_mask`), or of packed rows (`position_ids`, `ends`)."""
        if ends is not None:
            rewards = packed_rewards(self.model, input_ids, position_ids, ends)
        else:
            rewards = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, 0].float()
        theta = None if self.tie_raw is None else theta_from_raw(self.tie_raw.float())[0]
        return rewards, theta


def triple_rows(encoded: list[EncodedTriple], width: int, pad_id: int) -> list[dict]:
    """Fixed-width rows for a Ray Dataset (one triple each)."""
    rows = []
    for t in encoded:
        ids_a = np.full(width, pad_id, dtype=np.int32)
        ids_b = np.full(width, pad_id, dtype=np.int32)
        ids_a[: len(t.ids_a)] = t.ids_a
        ids_b[: len(t.ids_b)] = t.ids_b
        rows.append({"ids_a": ids_a, "ids_b": ids_b, "len_a": len(t.ids_a), "len_b": len(t.ids_b), "d": int(t.d)})
    return rows


def write_triples(encoded: list[EncodedTriple], path: str | Path) -> None:
    """Encoded triples as JSONL (the held-out split that `save_final` evaluates)."""
    with open(path, "w") as f:
        for t in encoded:
            f.write(json.dumps({"pair_id": t.pair_id, "ids_a": t.ids_a, "ids_b": t.ids_b, "d": t.d}) + "\n")


def read_triples(path: str | Path) -> list[EncodedTriple]:
    with open(path) as f:
        return [EncodedTriple(**json.loads(line)) for line in f if line.strip()]


@dataclass
class RewardTask(TrainTask):
    """Eq. 3 (and its tie variants) on preference triples."""

    init_from: str  # a causal LM / reward checkpoint folder, or a preset name (random init)
    tokenizer_dir: str
    pad_id: int
    margin: float = 1.0
    tie_loss: str = "none"
    tie_band: float = 0.25
    held_out: str | None = None  # JSONL of encoded held-out triples, evaluated into the final folder
    eval_batch_size: int = 16
    seed: int = 0
    dtype: str = "float32"
    stage: str = "reward"
    parent: str | None = None
    config_hash: str | None = None
    extra_meta: dict = field(default_factory=dict)
    lora: object = None  # a `batray.config.base.LoraConfig`: adapters, the score head trained in full
    packed: bool = False  # `reward.packing`: a micro batch's 2B sequences packed whole into fewer rows

    def build_model(self) -> torch.nn.Module:
        from batray.models.tokenizer import load_tokenizer
        from batray.reward.model import build_reward_model

        tokenizer = load_tokenizer(self.tokenizer_dir)
        model, _ = build_reward_model(self.init_from, tokenizer, seed=self.seed, dtype=getattr(torch, self.dtype))
        if self.lora is not None:
            from batray.models.lora import apply_lora

            model = apply_lora(model, self.lora, kind="score", base=self.init_from)
        # Rao-Kupper starts its threshold at the band: ties within tau start out most likely.
        return RewardModule(model, self.tie_band if self.tie_loss == "rao_kupper" else None)

    def to_device(self, batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
        def column(name: str) -> torch.Tensor:  # a copy: Ray Data hands out read-only arrays
            v = np.asarray(batch[name])
            if v.dtype == object:  # per-row arrays that did not arrive as one tensor column
                v = np.stack([np.asarray(x) for x in v])
            return torch.from_numpy(v.astype(np.int64))

        len_a, len_b = column("len_a"), column("len_b")
        width = int(max(len_a.max(), len_b.max()))
        ids = torch.cat([column("ids_a")[:, :width], column("ids_b")[:, :width]])
        lengths = torch.cat([len_a, len_b])
        out = {"d": column("d").to(device), "tokens": int(lengths.sum())}
        if self.packed:
            return {**out, **{k: v.to(device) for k, v in pack_sequences(ids, lengths, self.pad_id).items()}}
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return {**out, "input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def num_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["tokens"]

    def loss(self, model, batch):
        if "ends" in batch:
            rewards, theta = model(batch["input_ids"], position_ids=batch["position_ids"], ends=batch["ends"])
        else:
            rewards, theta = model(batch["input_ids"], batch["attention_mask"])
        n = batch["d"].shape[0]
        r_a, r_b, d = rewards[:n], rewards[n:], batch["d"]
        loss, means = reward_loss(r_a, r_b, d, tie_loss=self.tie_loss, margin=self.margin, tau=self.tie_band,
                                  theta=theta)
        with torch.no_grad():
            strict = d != 0
            n_strict, n_ties = strict.sum(), (~strict).sum()
            band = theta.detach() if theta is not None else self.tie_band
            gap = (r_b - r_a).abs()
            stats = {
                "pairs": torch.tensor(float(n)),
                "strict": n_strict.float(),
                "ties": n_ties.float(),
                "loss": loss.detach() * n,
                "loss_eq3": means["loss_eq3"] * n,
                "loss_eq3_strict": means["loss_eq3_strict"] * n_strict,
                "correct": means["accuracy"] * n_strict,
                "gap": means["reward_gap"] * n_strict,
                "ties_in_band": (gap[~strict] <= band).float().sum(),
                "reward_sum": rewards.detach().sum(),
                "reward_sq": (rewards.detach() ** 2).sum(),
            }
            if theta is not None:
                stats["theta"] = theta.detach() * n
        return loss, stats

    def metrics(self, stats, prefix=""):
        pairs, strict, ties = stats.get("pairs", 0.0), stats.get("strict", 0.0), stats.get("ties", 0.0)
        per = {"loss": pairs, "loss_eq3": pairs, "loss_eq3_strict": strict, "correct": strict, "gap": strict,
               "ties_in_band": ties, "theta": pairs}
        names = {"correct": "accuracy", "gap": "reward_gap", "ties_in_band": "tie_accuracy"}
        out = {}
        for key in _SUMMED:
            if key in stats and per[key] > 0:
                out[prefix + names.get(key, key)] = stats[key] / per[key]
        if pairs > 0:
            n = 2 * pairs
            mean = stats["reward_sum"] / n
            out[prefix + "tie_share"] = ties / pairs
            out[prefix + "reward_mean"] = mean
            out[prefix + "reward_std"] = max(stats["reward_sq"] / n - mean * mean, 0.0) ** 0.5
        return out

    def save_final(self, model, out_dir, *, step, tokens_seen):
        from batray.models.tokenizer import load_tokenizer
        from batray.reward.evaluate import reward_metrics, score_triples
        from batray.reward.model import save_reward_model

        theta = None
        if model.tie_raw is not None:
            theta = float(theta_from_raw(model.tie_raw.detach().float())[0])
        hf_model = model.model
        peft_model = None
        if self.lora is not None:  # score and save the merged model; the adapter goes to final/adapter
            from batray.models.lora import merged_copy

            peft_model, hf_model = hf_model, merged_copy(hf_model)
        band = theta if theta is not None else self.tie_band
        held = read_triples(self.held_out) if self.held_out and Path(self.held_out).exists() else []
        stats: dict = {"held_out": None}
        if held:
            scorer = _plain_copy(hf_model)
            device = next(scorer.parameters()).device
            r_a, r_b, d = score_triples(scorer, held, self.pad_id, self.eval_batch_size, device=device)
            del scorer
            stats["held_out"] = reward_metrics(r_a, r_b, d, tie_band=band, margin=self.margin)
            mean, std = stats["held_out"]["reward_mean"], stats["held_out"]["reward_std"]
        else:
            mean, std = 0.0, 1.0  # nothing held out: PPO's normalization stays the identity
        stats.update({"mean": mean, "std": std, "tie_loss": self.tie_loss, "margin": self.margin,
                      "tie_band": band, "theta": theta})
        def save(m, more=None):
            return save_reward_model(m, load_tokenizer(self.tokenizer_dir), out_dir, stats, step=step,
                                     tokens_seen=tokens_seen, parent=self.parent, config_hash=self.config_hash,
                                     extra={"objective": "eq3", **self.extra_meta, **(more or {})})

        if peft_model is None:
            save(hf_model)
        else:
            from batray.models.lora import save_lora_final

            save_lora_final(peft_model, out_dir, self.lora, save, merged=hf_model)  # merged once, above


def _plain_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, or under ZeRO-3 (parameters gathered by the caller) a hook-free copy: a
    forward through ZeRO-3's hooks on rank 0 alone would re-partition the parameters mid-save."""
    if not any(hasattr(p, "ds_id") for p in hf_model.parameters()):
        return hf_model
    from transformers import AutoModelForSequenceClassification

    copy = AutoModelForSequenceClassification.from_config(hf_model.config)
    copy.load_state_dict({k: v.detach().clone() for k, v in hf_model.state_dict().items()})
    return copy.to(next(hf_model.parameters()).device)
