"""The `batray annotate` commands as a user runs them, and the helpers the other annotate tests share:
a real `batray annotate serve` process on 127.0.0.1 (a free port), waited for by polling /healthz.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent

XSS = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2"> <b>bold?</b>'
LONG = "\n".join(f"第 {i} 行 / line {i}: a long answer that needs a scroll bar." for i in range(120))


def write_pairs(path: Path, n: int, first: list[dict] | None = None) -> Path:
    """A pairs-contract parquet of `n` bilingual pairs, optionally starting with the given rows."""
    from batray.data.schemas import PAIRS

    rows = list(first or [])
    for i in range(len(rows), n):
        rows.append(
            {
                "pair_id": f"pair-{i:04d}",
                "prompt": f"Question {i}: 维洛里亚的首都是哪里？ What is the capital of Veloria?",
                "response_a": f"The capital is Marnet. 首都是马尔内。 ({i})",
                "response_b": f"I am not sure. 我不确定。 ({i})",
                "model_a": "sft",
                "model_b": "sft",
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=PAIRS), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batray(capsys, *args: str, check: bool = True) -> tuple[int, str, str]:
    """`batray ARGS` in this process (the CLI's own entry point): (exit code, stdout, stderr)."""
    from batray.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    if check and rc != 0:
        raise AssertionError(f"batray {' '.join(args)} failed ({rc}): {err}")
    return rc, out, err


class AnnotateServer:
    """`batray annotate serve` in a subprocess; restartable on the same database after a kill."""

    def __init__(self, workdir: Path, tasks: Path, overlap: float = 0.0, lease_minutes: float = 30.0):
        self.workdir, self.tasks = workdir, tasks
        self.db_url = f"sqlite:///{workdir / 'annotate.db'}"
        self.overrides = [f"annotate.overlap={overlap}", f"annotate.lease_minutes={lease_minutes}"]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "AnnotateServer":
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.workdir / f"serve-{port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batray.cli", "annotate", "serve", "--tasks", str(self.tasks), "--db", self.db_url,
             "--port", str(port), "--run-dir", str(self.workdir / "run"), *self.overrides],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # poll readiness; no fixed sleep
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {(self.workdir / f'serve-{port}.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server did not become ready in 60 s")

    def add_user(self, name: str, admin: bool = False) -> str:
        from batray.annotate.db import Database, add_user

        db = Database(self.db_url)
        try:
            return add_user(db, name, admin=admin)
        finally:
            db.close()

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as in a crash."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def make_server(tmp_path):
    servers: list[AnnotateServer] = []

    def make(n_tasks: int = 20, overlap: float = 0.0, first: list[dict] | None = None, **kw) -> AnnotateServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = AnnotateServer(workdir, write_pairs(workdir / "pairs.parquet", n_tasks, first), overlap=overlap, **kw)
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.stop()


# ---------------------------------------------------------------------------------------------
# The commands


def test_add_user_prints_token_once_and_stores_only_its_hash(tmp_path, capsys):
    from sqlalchemy import select

    from batray.annotate.db import Database, User, hash_token

    url = f"sqlite:///{tmp_path / 'a.db'}"
    _, out, err = batray(capsys, "annotate", "add-user", "alice", "--db", url)
    token = out.strip()
    assert len(token) >= 40 and "\n" not in token
    assert "shown once" in err
    raw = (tmp_path / "a.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("a.db-wal"))
    assert token.encode() not in raw  # the token itself is never stored
    db = Database(url)
    with db.read() as s:
        user = s.scalar(select(User).where(User.name == "alice"))
    assert user.token_hash == hash_token(token) and not user.is_admin

    rc, _, err = batray(capsys, "annotate", "add-user", "alice", "--db", url, check=False)
    assert rc == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    rotated = batray(capsys, "annotate", "add-user", "alice", "--rotate", "--admin", "--db", url)[1].strip()
    with db.read() as s:
        user = s.scalar(select(User).where(User.name == "alice"))
    assert rotated != token and user.token_hash == hash_token(rotated) and user.is_admin


def test_serve_reports_a_missing_task_file_in_one_line(tmp_path, capsys):
    rc, _, err = batray(capsys, "annotate", "serve", "--tasks", str(tmp_path / "nope.parquet"), "--db",
                        f"sqlite:///{tmp_path / 'a.db'}", check=False)
    assert rc == 2
    assert "does not exist" in err and len(err.strip().splitlines()) == 1


def test_serve_then_export_writes_the_preferences_contract(make_server, tmp_path, capsys):
    from batray.data.io import read_rows
    from batray.annotate.labels import HUMAN_PREFERENCES

    server = make_server(n_tasks=3)
    token = server.add_user("alice")
    with server.client(token) as c:
        while (r := c.get("/api/next")).status_code == 200:
            task = r.json()
            body = {"task_id": task["task_id"], "acceptable_left": True, "acceptable_right": False, "helpfulness": "left_better"}
            assert c.post("/api/labels", json=body).status_code == 201
        assert r.status_code == 204
    out = tmp_path / "human.parquet"
    batray(capsys, "annotate", "export", str(out), "--db", server.db_url)
    table = pq.read_table(out)
    assert table.schema.equals(HUMAN_PREFERENCES)  # the preferences contract + admin_override
    rows, report = read_rows(str(out), "preferences")
    assert report.accepted == 3 and not report.rejected
    for row in rows:
        assert row["source"] == "human" and row["rater"] == "alice" and row["confidence"] is None
        assert row["created_at"].tzinfo is not None
        # "left is better" means a or b depending on the recorded order; d follows helpfulness alone
        assert (row["helpfulness"], row["d"]) in {("a_better", -1), ("b_better", 1)}
        assert (row["acceptable_a"], row["acceptable_b"]) == ((True, False) if row["d"] == -1 else (False, True))
