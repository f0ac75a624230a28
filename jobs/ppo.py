"""`batray ppo`: PPO with a KL penalty and a pretraining term (§3.3, Eq. 4) on Ray actors.

    batray ppo --config FILE [--run-dir DIR] [--dry-run] [ppo.steps=40 ...]

Five roles as actor groups (policy and critic under DeepSpeed, reference, reward, rollout engines):
`batray.ppo.driver` runs the loop over the actor classes of `actors/`; `batray.stages` resolves the
inputs (the SFT policy, the reward model unless `ppo.reward.kind: rule`, prompts, the ptx corpus).
"""

from __future__ import annotations

from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("ppo", "PPO with KL penalty and pretraining loss (Eq. 4) on Ray actors").parse_args(argv)
    result = run_stage_command("ppo", args)
    if result is not None:
        print(result.plan.outputs["model"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
