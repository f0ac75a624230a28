"""PPO (§3.3, Eq. 4) helpers: rollout batches, data streams, experience, update loops, checkpoints.

The formulas themselves are in `batray.objectives.ppo`; the Ray actors in `actors/` hold models and
call these; `jobs/ppo.py` runs the control loop.
"""
