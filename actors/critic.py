"""The PPO critic: a value model initialized from the reward model, N ranks under DeepSpeed like the policy."""

from __future__ import annotations

import torch

from batray.groups import DistributedWorker, busy
from batray.config.rl import PpoConfig
from batray.models.tokenizer import load_tokenizer
from batray.ppo import train
from batray.ppo.batch import default_device, forward_batch, to_device
from batray.ppo.trainer import DeepSpeedTrainer
from batray.ppo.wire import from_wire, to_wire
from batray.reward.model import build_reward_model


class CriticActor(DistributedWorker):
    def __init__(self, model_path: str, cfg: PpoConfig, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        train.quiet_model_loading()
        self.cfg = cfg
        self.seed = seed
        self.model_path = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.device = default_device()
        self.trainer: DeepSpeedTrainer | None = None

    def ready(self) -> bool:
        return True

    def join_process_group(self, addr: str, port: int, backend: str | None, timeout_s: float) -> None:
        super().join_process_group(addr, port, backend, timeout_s)
        # A causal-LM path gets a fresh value head (seeded: every rank builds the same one).
        model, _ = build_reward_model(self.model_path, self.tokenizer, seed=self.seed)
        if self.cfg.lora is not None:  # adapters on the backbone, the value head trained in full
            from batray.models.lora import apply_lora

            model = apply_lora(model, self.cfg.lora, kind="score", base=self.model_path)
        torch.manual_seed(self.seed + self.rank)
        self.trainer = DeepSpeedTrainer(model.to(self.device), lr=self.cfg.critic_lr, cfg=self.cfg,
                                        world_size=self.world_size)

    # Batches and values cross Ray as numpy arrays (`batray.ppo.wire`: no torch.save per tensor).
    @busy
    def values(self, batch, *answers):
        """Values of a batch split (wire form), or of `RolloutRows` of the engines' `answers`."""
        self.trainer.wake()  # ppo.offload_between_phases
        self.trainer.eval()
        batch = to_device(forward_batch(batch, answers), self.device)
        return to_wire(train.batch_values(self.trainer, batch, self.cfg.micro_batch_size))

    @busy
    def train(self, experience: dict, seed: int) -> dict[str, float]:
        stats = train.critic_update(self.trainer, to_device(from_wire(experience), self.device), self.cfg, seed)
        self.trainer.sleep()  # the step's last use of the critic
        return stats

    def save_checkpoint(self, folder: str) -> None:
        self.trainer.wake()
        self.trainer.save(folder, self.rank, tokenizer=self.tokenizer)

    def load_checkpoint(self, folder: str) -> None:
        self.trainer.wake()
        self.trainer.load(folder, self.rank)
