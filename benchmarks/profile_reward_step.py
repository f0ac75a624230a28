"""Where a reward step's time goes, in one process without Ray: the same batches (bench_reward.py's split
and order, 16 pairs of HH-RLHF, seq_len 192, batgpt-tiny) through padded rows and through `reward.packing`'s
packed rows, forward / backward / gradient clipping / AdamW (for-loop and foreach) timed separately.

    PYTHONPATH=. python benchmarks/profile_reward_step.py [--steps 25]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    import numpy as np
    import torch
    from bench_reward import DATA, prepare

    from batray.objectives.reward import hinge_loss
    from batray.reward.model import build_reward_model
    from batray.reward.task import RewardModule, RewardTask, triple_rows

    torch.set_num_threads(1)
    init, tok, train, _ = prepare(str(DATA), Path(tempfile.mkdtemp()), 192, 2048, 0.3, 0)
    random.Random(0).shuffle(train)
    rows = triple_rows(train, 192, tok.pad_token_id)
    cols = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
    lens = np.concatenate([cols["len_a"], cols["len_b"]])
    print(f"mean sequence length {lens.mean():.1f} of 192; pairs with a 192-token side: "
          f"{np.mean(np.maximum(cols['len_a'], cols['len_b']) == 192):.1%}")
    for packed in (False, True):
        for foreach in (False, True):
            model, _ = build_reward_model(init, tok, seed=0)
            module = RewardModule(model).train()
            task = RewardTask(init_from=init, tokenizer_dir="-", pad_id=tok.pad_token_id, packed=packed)
            opt = torch.optim.AdamW(module.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0, foreach=foreach)
            times, n_rows = [], []
            for s in range(args.steps):
                batch = {k: v[s * args.batch:(s + 1) * args.batch] for k, v in cols.items()}
                t0 = time.perf_counter()
                dev = task.to_device(batch, torch.device("cpu"))
                rewards, _ = (module(dev["input_ids"], position_ids=dev["position_ids"], ends=dev["ends"]) if packed
                              else module(dev["input_ids"], dev["attention_mask"]))
                loss = hinge_loss(rewards[:args.batch], rewards[args.batch:], dev["d"]).mean()
                t1 = time.perf_counter()
                loss.backward()
                t2 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                t3 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append((t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3))
                n_rows.append(dev["input_ids"].shape[0])
            t = np.array(times[5:]) * 1000  # the first steps warm up
            print(f"{'packed' if packed else 'padded'} rows ({np.mean(n_rows):.1f} per batch), AdamW foreach={foreach}: "
                  f"forward {t[:, 0].mean():.0f} ms, backward {t[:, 1].mean():.0f}, clip {t[:, 2].mean():.1f}, "
                  f"AdamW {t[:, 3].mean():.1f}; step {t.sum(1).mean():.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
