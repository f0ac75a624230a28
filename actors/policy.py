"""The PPO policy (trainer): one rank of N replicas that share a torch.distributed group (gloo on CPU).

Holds pi_phi and its optimizer; computes old log-probabilities of rollouts, runs Eq. 4's update on its
shard, hands its weights out in buckets for the rollout engines, and saves/restores its state.
"""

from __future__ import annotations

import torch

from actors.group import DistributedWorker, busy
from batray.checkpoint import save_hf_checkpoint
from batray.config.rl import PpoConfig
from batray.models.presets import load_causal_lm
from batray.models.tokenizer import load_tokenizer
from batray.ppo import state, train
from batray.ppo.batch import default_device, to_device


class PolicyActor(DistributedWorker):
    def __init__(self, model_path: str, cfg: PpoConfig, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        torch.manual_seed(seed + rank)
        train.quiet_model_loading()
        self.cfg = cfg
        self.device = default_device()
        self.model = load_causal_lm(model_path, device=self.device)
        self.tokenizer = load_tokenizer(model_path)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.actor_lr, weight_decay=0.0)

    def ready(self) -> bool:
        return True

    @busy
    def logprobs(self, batch: dict) -> torch.Tensor:
        self.model.eval()
        return train.response_logprobs(self.model, to_device(batch, self.device), self.cfg.micro_batch_size).cpu()

    @busy
    def train(self, experience: dict, ptx_batches: list[dict] | None, seed: int) -> dict[str, float]:
        experience = to_device(experience, self.device)
        ptx_batches = [to_device(b, self.device) for b in ptx_batches] if ptx_batches else None
        return train.policy_update(self.model, self.optimizer, experience, ptx_batches, self.cfg, seed, self.world_size)

    @busy
    def weight_buckets(self) -> list:
        """Object-store references to the weights in buckets of `sync_bucket_mb` (the CPU sync path)."""
        import ray

        size = int(self.cfg.sync_bucket_mb * (1 << 20))
        return [ray.put(bucket) for bucket in state.weight_buckets(self.model, size)]

    def save_checkpoint(self, folder: str) -> None:
        state.save_trainer_state(self.model, self.optimizer, folder, self.rank, tokenizer=self.tokenizer)

    def load_checkpoint(self, folder: str) -> None:
        state.load_trainer_state(self.optimizer, folder, self.rank)

    def save_final(self, folder: str, **marker) -> str | None:
        if self.rank != 0:
            return None
        return str(save_hf_checkpoint(self.model, self.tokenizer, folder, stage="ppo", **marker))
