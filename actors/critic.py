"""The PPO critic: a value model initialized from the reward model, N ranks like the policy."""

from __future__ import annotations

import torch

from actors.group import DistributedWorker, busy
from batray.config.rl import PpoConfig
from batray.models.tokenizer import load_tokenizer
from batray.ppo import state, train
from batray.ppo.batch import default_device, to_device
from batray.reward.model import build_reward_model


class CriticActor(DistributedWorker):
    def __init__(self, model_path: str, cfg: PpoConfig, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        train.quiet_model_loading()
        self.cfg = cfg
        # A causal-LM path gets a fresh value head (seeded: every rank builds the same one).
        self.model, self.tokenizer = build_reward_model(model_path, load_tokenizer(model_path), seed=seed)
        self.device = default_device()
        self.model.to(self.device)
        torch.manual_seed(seed + rank)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.critic_lr, weight_decay=0.0)

    def ready(self) -> bool:
        return True

    @busy
    def values(self, batch: dict) -> torch.Tensor:
        self.model.eval()
        return train.batch_values(self.model, to_device(batch, self.device), self.cfg.micro_batch_size).cpu()

    @busy
    def train(self, experience: dict, seed: int) -> dict[str, float]:
        return train.critic_update(self.model, self.optimizer, to_device(experience, self.device), self.cfg, seed,
                                   self.world_size)

    def save_checkpoint(self, folder: str) -> None:
        state.save_trainer_state(self.model, self.optimizer, folder, self.rank, tokenizer=self.tokenizer)

    def load_checkpoint(self, folder: str) -> None:
        state.load_trainer_state(self.optimizer, folder, self.rank)
