"""What a person sees while a training stage runs (`batray sft` in a subprocess, its own local Ray).

On a terminal (a pseudo-terminal here): one rich bar, step / total, loss, tokens/s and an ETA. Not on a
terminal (a log file): plain `[sft] step i/n ... ETA` lines, and none of Ray Data's progress bars or
per-dataset chatter, from the driver or from Ray Train's workers and split coordinator, nor Ray Train's
placement-group cleaner's failed State API queries.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
# What Ray Data prints when its output is on (seen in a stage's log before it was turned off).
RAY_DATA_LINES = re.compile(r"Running Dataset|MapBatches|\[dataset\]|Operator|Starting execution of Dataset|"
                            r"Progress bars|Execution plan of Dataset|execution finished in|Registered dataset logger|"
                            # Ray Train's placement-group cleaner, which cannot reach a State API without a dashboard
                            r"PlacementGroupCleaner|Failed to query Ray Train Controller")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def sft_command(tiny_checkpoint, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."}) + "\n"
                            for i in range(48)))

    def command(*more: str) -> list[str]:
        return [sys.executable, "-m", "batray.cli", "sft", "--run-dir", str(tmp_path / "run"),
                f"sft.init_from={tiny_checkpoint}", f"data.sft={data}", "sft.seq_len=48", "sft.micro_batch_size=4",
                f"sft.max_steps={STEPS}", "sft.log_every=2", f"sft.eval_every={STEPS}", f"sft.ckpt_every={STEPS}",
                "ray.num_cpus=2", "data.held_out_fraction=0.1", *more]

    return command


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def run_in_pty(cmd: list[str], timeout_s: float = 240) -> tuple[int, str]:
    """Run `cmd` with stdin/stdout/stderr on a 120x40 pseudo-terminal; (exit code, everything it wrote)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=child_env(),
                            close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child side closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), out.decode("utf-8", "replace")


def test_a_terminal_gets_one_progress_bar_with_loss_rate_and_eta(sft_command):
    rc, out = run_in_pty(sft_command())
    assert rc == 0, out[-3000:]
    text = ANSI.sub("", out)
    assert "━" in text  # rich's bar
    assert re.search(rf"sft\s+━+\s+{STEPS}/{STEPS} steps", text), text[-2000:]
    assert re.search(r"loss \d+\.\d{4}", text) and re.search(r"\d+ tok/s", text)
    assert re.search(r"ETA \d+:\d\d:\d\d", text)
    assert not re.search(r"\[sft\] step \d+/", text)  # the bar replaces the plain lines


def test_a_log_gets_plain_lines_with_eta_and_no_ray_data_output(sft_command, tmp_path):
    log = tmp_path / "sft.log"
    with log.open("w") as f:
        proc = subprocess.run(sft_command(), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              cwd=ROOT, env=child_env(), timeout=240)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("[sft] step ")]
    assert [line.split()[2] for line in lines] == [f"{s}/{STEPS}" for s in range(2, STEPS + 1, 2)], text[-3000:]
    assert all(re.search(r"loss \d+\.\d{4}.* tok/s\s+ETA \d+:\d\d:\d\d$", line) for line in lines), lines
    assert not re.search(r"━+\s+\d+/\d+ steps", text)  # no rich bar in a log
    noise = [line for line in text.splitlines() if RAY_DATA_LINES.search(line)]
    assert not noise, "\n".join(noise[:20])


def test_ray_data_output_comes_back_with_the_config_switch():
    import logging

    from ray.data import DataContext

    from batray.config import load_config
    from batray.ray_session import ray_data_output

    ctx = DataContext.get_current()
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ == "PlainRayHandler"]
    try:
        ray_data_output(load_config(None, ["logging.ray_data_progress=true"]).logging)
        assert ctx.enable_progress_bars and ctx.enable_operator_progress_bars and ctx.print_on_execution_start
        assert all(h.level == logging.INFO for h in console)
        ray_data_output(load_config(None, []).logging)
        assert not (ctx.enable_progress_bars or ctx.enable_operator_progress_bars or ctx.print_on_execution_start)
        assert console and all(h.level == logging.WARNING for h in console)
    finally:
        ray_data_output(None)
