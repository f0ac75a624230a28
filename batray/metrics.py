"""Per-step metrics: `metrics.jsonl` (one JSON object per step: step, time, named values) and
TensorBoard events beside it. On resume, rows at or after the resumed step are dropped first so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, out_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] < resume_step]
            self.path.write_text("".join(k + "\n" for k in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.dir / "tb"))
            except ImportError:  # tensorboard is a dependency; tolerate its absence in minimal installs
                self._tb = None

    def log(self, step: int, **values: float) -> dict:
        row = {"step": int(step), "time": time.time()}
        for k, v in values.items():
            v = float(v) if v is not None else None
            row[k] = v if v is None or math.isfinite(v) else str(v)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, float):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()]
