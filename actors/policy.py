"""The PPO policy (trainer): one rank of N replicas that share a torch.distributed group (gloo on CPU, NCCL on GPU).

Holds pi_phi under a DeepSpeed engine (`ppo.deepspeed.zero_stage` 0-3, `batray.ppo.trainer`); computes old
log-probabilities of rollouts, runs Eq. 4's update on its shard, hands its weights out in buckets for the
rollout engines, and saves/restores its state. Under ZeRO-3 every method that touches the weights is a
collective: the driver calls it on all ranks at once.
"""

from __future__ import annotations

import torch

from actors.group import DistributedWorker, busy
from batray.checkpoint import save_hf_checkpoint
from batray.config.rl import PpoConfig
from batray.models.presets import load_causal_lm
from batray.models.tokenizer import load_tokenizer
from batray.ppo import train
from batray.ppo.batch import default_device, to_device
from batray.ppo.trainer import DeepSpeedTrainer


class PolicyActor(DistributedWorker):
    def __init__(self, model_path: str, cfg: PpoConfig, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(rank, world_size)
        torch.manual_seed(seed + rank)
        train.quiet_model_loading()
        self.cfg = cfg
        self.device = default_device()
        self.model_path = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.trainer: DeepSpeedTrainer | None = None

    def ready(self) -> bool:
        return True

    def join_process_group(self, addr: str, port: int, backend: str | None, timeout_s: float) -> None:
        """Join the role's group, then build the DeepSpeed engine over it (ZeRO partitions across the ranks)."""
        super().join_process_group(addr, port, backend, timeout_s)
        model = load_causal_lm(self.model_path, device=self.device)
        self.trainer = DeepSpeedTrainer(model, lr=self.cfg.actor_lr, cfg=self.cfg, world_size=self.world_size)

    @busy
    def logprobs(self, batch: dict) -> torch.Tensor:
        self.trainer.eval()
        return train.response_logprobs(self.trainer, to_device(batch, self.device), self.cfg.micro_batch_size).cpu()

    @busy
    def train(self, experience: dict, ptx_batches: list[dict] | None, seed: int) -> dict[str, float]:
        experience = to_device(experience, self.device)
        ptx_batches = [to_device(b, self.device) for b in ptx_batches] if ptx_batches else None
        return train.policy_update(self.trainer, experience, ptx_batches, self.cfg, seed)

    @busy
    def weight_buckets(self) -> list:
        """Object-store references to the weights in buckets of `sync_bucket_mb` (the CPU sync path); rank 0
        returns them, the other ranks take part in ZeRO-3's gathers and return none."""
        import ray

        size = int(self.cfg.sync_bucket_mb * (1 << 20))
        return [ray.put(bucket) for bucket in self.trainer.weight_buckets(size, self.rank)]

    def save_checkpoint(self, folder: str) -> None:
        self.trainer.save(folder, self.rank, tokenizer=self.tokenizer)

    def load_checkpoint(self, folder: str) -> None:
        self.trainer.load(folder, self.rank)

    def save_final(self, folder: str, **marker) -> str | None:
        state = self.trainer.consolidated_state_dict()  # a collective under ZeRO-3
        if self.rank != 0:
            return None
        return str(save_hf_checkpoint(self.trainer.module, self.tokenizer, folder, stage="ppo", state_dict=state,
                                      **marker))
