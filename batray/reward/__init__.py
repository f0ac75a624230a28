"""The reward model of §3.3: preference data -> (y, y', d) triples, R = backbone + scalar head,
trained with Eq. 3 (`batray.objectives.reward`), evaluated on held-out pairs.

- `data`: both preference layouts (the preferences contract, HH-RLHF's chosen/rejected) -> tokenized
  triples in BatGPT's chat format; the held-out split; batch collation.
- `model`: build R from a causal LM / reward checkpoint or a preset; rewards of a batch; save/load
  with the reward statistics PPO normalizes with.
- `evaluate`: pairwise and tie accuracy, reward mean/std, calibration table.
- `task`: the reward stage as a task of the shared Ray Train loop (`batray.train`).
"""
