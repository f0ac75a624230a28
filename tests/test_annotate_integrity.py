"""The annotation app's integrity and its defences, over a real `batray annotate serve` and SQLite.

A label only for a task handed to that annotator (admins: an explicit, exported override); the
per-task `needed` count and one label per annotator held by the database's own constraints, under
concurrent requests and across a restart (and a database from before them migrated without loss);
ids range-checked to 4xx; `HEAD /`; a body limit answered before the token is looked at; `d` an
integer in the preferences contract.
"""

from __future__ import annotations

import select
import socket
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError
from test_annotate_server import make_server, write_pairs  # noqa: F401 (fixture)

from batray.annotate.db import Assignment, Database, Label, Task, add_user, utcnow
from batray.annotate.labels import export
from batray.annotate.store import Conflict, Store, import_tasks
from batray.data.schemas import check_preferences


def _label(task_id, helpfulness="left_better", **kw) -> dict:
    return {"task_id": task_id, "acceptable_left": True, "acceptable_right": False, "helpfulness": helpfulness, **kw}


def _labels_of(db_url: str, task_id: int) -> int:
    db = Database(db_url)
    try:
        with db.read() as s:
            return s.scalar(sql_select(func.count(Label.id)).where(Label.task_id == task_id))
    finally:
        db.close()


def test_a_label_only_for_a_task_handed_to_that_annotator(make_server, tmp_path):
    server = make_server(n_tasks=6, overlap=0.0)
    alice, bob = server.add_user("alice"), server.add_user("bob")
    boss = server.add_user("boss", admin=True)
    with server.client(alice) as a, server.client(bob) as b, server.client(boss) as admin:
        mine = a.get("/api/next").json()["task_id"]
        other = next(t for t in range(1, 7) if t != mine)
        r = a.post("/api/labels", json=_label(other))  # picking a task by id: refused
        assert r.status_code == 409 and "not handed to you" in r.json()["detail"]
        assert b.post("/api/labels", json=_label(mine)).status_code == 409  # alice's task, not bob's
        assert a.post("/api/labels", json=_label(mine)).status_code == 201
        skipped = a.get("/api/next").json()["task_id"]
        assert a.post("/api/skip", json={"task_id": skipped}).status_code == 200
        r = a.post("/api/labels", json=_label(skipped))
        assert r.status_code == 409 and "skipped" in r.json()["detail"]
        r = a.post("/api/labels", json=_label(other, override=True))
        assert r.status_code == 403 and "admin" in r.json()["detail"]
        # an admin may label any task, explicitly; a task that needs one label takes no second
        assert admin.post("/api/labels", json=_label(other)).status_code == 409
        assert admin.post("/api/labels", json=_label(other, override=True)).status_code == 201
        r = admin.post("/api/labels", json=_label(mine, override=True))
        assert r.status_code == 409 and "1 label(s) it needs" in r.json()["detail"]
    out = tmp_path / "human.parquet"
    db = Database(server.db_url)
    export(db, str(out))
    db.close()
    rows = {r["rater"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["alice"]["admin_override"] is False and rows["boss"]["admin_override"] is True


def test_an_expired_lease_holds_only_while_nobody_else_took_the_task(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    write_pairs(tmp_path / "pairs.parquet", 2)
    import_tasks(db, str(tmp_path / "pairs.parquet"), seed=0, overlap=0.0)
    add_user(db, "alice")
    add_user(db, "bob")
    store = Store(db, lease_minutes=30)
    alice, bob = 1, 2

    def expire(user_id: int) -> None:
        with db.write() as s, s.begin():
            for a in s.scalars(sql_select(Assignment).where(Assignment.user_id == user_id)):
                a.assigned_at = utcnow() - timedelta(minutes=31)

    t1 = store.next_task(alice)["task_id"]
    expire(alice)  # nobody else wants it: alice's late answer is still taken
    assert store.submit(alice, t1, True, True, "both_good", None)
    t2 = store.next_task(alice)["task_id"]
    expire(alice)
    assert store.next_task(bob)["task_id"] == t2  # the lease ran out, so bob is given the task
    with pytest.raises(Conflict, match="ran out"):
        store.submit(alice, t2, True, True, "both_good", None)
    assert store.submit(bob, t2, True, False, "left_better", None)
    db.close()


def test_needed_and_one_label_per_annotator_are_database_constraints(make_server):
    """8 admins override-label the same tasks at once; raw SQL past the app; then a restart."""
    server = make_server(n_tasks=40, overlap=0.5)
    admins = [server.add_user(f"admin-{i}", admin=True) for i in range(8)]
    db = Database(server.db_url)
    with db.read() as s:
        needed = dict(s.execute(sql_select(Task.id, Task.needed)).all())
    single = next(t for t, n in needed.items() if n == 1)
    double = next(t for t, n in needed.items() if n == 2)
    for task_id in (single, double):
        barrier = threading.Barrier(len(admins))

        def send(token, task_id=task_id, barrier=barrier):
            with server.client(token) as c:
                barrier.wait(timeout=60)
                return c.post("/api/labels", json=_label(task_id, override=True)).status_code

        with ThreadPoolExecutor(len(admins)) as pool:
            codes = sorted(pool.map(send, admins))
        assert codes == [201] * needed[task_id] + [409] * (len(admins) - needed[task_id]), (task_id, codes)
        assert _labels_of(server.db_url, task_id) == needed[task_id]

    # the constraints live in the database file: a writer that bypasses the app is refused too
    # (every batray connection turns SQLite's foreign keys on; so does this one)
    raw = sqlite3.connect(server.db_url.removeprefix("sqlite:///"), timeout=30)
    raw.execute("PRAGMA foreign_keys=ON")
    labelers = {u for (u,) in raw.execute("SELECT user_id FROM labels WHERE task_id IN (?, ?)", (single, double))}
    free = next(u for (u,) in raw.execute("SELECT id FROM users") if u not in labelers)  # labeled neither
    insert = ("INSERT INTO labels (task_id, user_id, needed, slot, acceptable_left, acceptable_right, helpfulness, "
              "created_at, admin_override) VALUES (?, ?, ?, ?, 1, 1, 'both_good', '2026-01-01', 0)")
    for values in [(single, free, 1, 1),  # a second slot of a task that needs one
                   (single, free, 2, 1),  # ... claiming the task needs two
                   (double, free, 2, 0)]:  # a slot already taken
        with pytest.raises(sqlite3.IntegrityError):
            raw.execute(insert, values)
            raw.commit()
        raw.rollback()
    raw.close()

    server.kill()
    server.start()  # same database: still one label for the single task, still refused
    with server.client(server.add_user("late-admin", admin=True)) as c:
        r = c.post("/api/labels", json=_label(single, override=True))
        assert r.status_code == 409 and "needs" in r.json()["detail"]
    assert _labels_of(server.db_url, single) == 1
    with db.write() as s, pytest.raises(IntegrityError), s.begin():  # and through SQLAlchemy, the same
        first = s.scalar(sql_select(Label).where(Label.task_id == single))
        s.add(Label(task_id=single, user_id=first.user_id, needed=1, slot=0, acceptable_left=True,
                    acceptable_right=True, helpfulness="both_good"))
    db.close()


OLD_SCHEMA = """
CREATE TABLE users (id INTEGER NOT NULL, name VARCHAR(100) NOT NULL, token_hash VARCHAR(64) NOT NULL,
    is_admin BOOLEAN NOT NULL, created_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (name), UNIQUE (token_hash));
CREATE TABLE tasks (id INTEGER NOT NULL, pair_id VARCHAR(200) NOT NULL, prompt TEXT NOT NULL,
    response_a TEXT NOT NULL, response_b TEXT NOT NULL, model_a TEXT, model_b TEXT, left_is_a BOOLEAN NOT NULL,
    needed INTEGER NOT NULL, PRIMARY KEY (id), UNIQUE (pair_id));
CREATE TABLE labels (id INTEGER NOT NULL, task_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
    acceptable_left BOOLEAN NOT NULL, acceptable_right BOOLEAN NOT NULL, helpfulness VARCHAR(20) NOT NULL,
    comment TEXT, created_at DATETIME NOT NULL, PRIMARY KEY (id),
    CONSTRAINT one_label_per_annotator UNIQUE (task_id, user_id),
    FOREIGN KEY(task_id) REFERENCES tasks (id), FOREIGN KEY(user_id) REFERENCES users (id));
CREATE INDEX ix_labels_task_id ON labels (task_id);
CREATE INDEX ix_labels_user_id ON labels (user_id);
INSERT INTO users VALUES (1, 'a', 'h1', 0, '2026-01-01'), (2, 'b', 'h2', 0, '2026-01-01'), (3, 'c', 'h3', 0, '2026-01-01');
INSERT INTO tasks VALUES (1, 'p1', 'q', 'x', 'y', NULL, NULL, 1, 1), (2, 'p2', 'q', 'x', 'y', NULL, NULL, 0, 2);
INSERT INTO labels VALUES (1, 1, 1, 1, 0, 'left_better', NULL, '2026-01-01'),
    (2, 1, 2, 1, 0, 'both_good', 'over-labeled before the constraint', '2026-01-01'),
    (3, 2, 3, 0, 1, 'right_better', NULL, '2026-01-01');
"""


def test_a_database_from_before_the_constraints_is_migrated_without_loss(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.executescript(OLD_SCHEMA)
    raw.close()
    db = Database(f"sqlite:///{path}")
    with db.read() as s:
        labels = {(lb.task_id, lb.user_id): (lb.slot, lb.needed, lb.comment) for lb in s.scalars(sql_select(Label))}
        needed = dict(s.execute(sql_select(Task.id, Task.needed)).all())
    assert labels == {(1, 1): (0, 2, None), (1, 2): (1, 2, "over-labeled before the constraint"), (2, 3): (0, 2, None)}
    assert needed == {1: 2, 2: 2}  # the over-labeled task keeps both labels
    store = Store(db)
    with pytest.raises(Conflict, match="needs"):
        store.submit(3, 1, True, True, "both_good", None, override=True)
    assert store.submit(1, 2, True, True, "both_good", None, override=True)
    db.close()
    assert Database(f"sqlite:///{path}").url  # opening again: nothing left to migrate


def test_ids_are_range_checked_and_head_answers_like_get(make_server):
    server = make_server(n_tasks=2)
    token = server.add_user("ids")
    with server.client(token) as c:
        for bad in (2**63, 2**64, -1, 0):
            for path, body in (("/api/labels", _label(bad)), ("/api/skip", {"task_id": bad})):
                r = c.post(path, json=body)
                assert r.status_code == 422 and r.headers["content-type"] == "application/json", (bad, r.text)
                assert r.json()["detail"].startswith("malformed request: task_id") and "\n" not in r.json()["detail"]
        assert c.post("/api/labels", json=_label(2**63 - 1)).status_code == 404
    for path in ("/", "/admin", "/healthz"):
        get, head = httpx.get(server.url + path), httpx.head(server.url + path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


def _read_reply(sock: socket.socket) -> bytes:
    sock.settimeout(60)
    reply = b""
    try:
        while data := sock.recv(65536):
            reply += data
    except ConnectionResetError:  # the server closed with our unread chunks in its buffer
        pass
    return reply


def _post_raw(url: str, path: str, *, declared: int | None = None, chunked_total: int = 0) -> tuple[str, int]:
    """POST without a token: only headers declaring `declared` bytes, or a chunked body of up to
    `chunked_total` bytes sent 4 KiB at a time until the server answers. Returns (reply, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        length = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode())
        sent = 0
        try:
            while sent < chunked_total and not select.select([sock], [], [], 0.01)[0]:
                sock.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_reply(sock).decode("utf-8", "replace"), sent


def test_body_limit_413_before_the_token_is_looked_at(make_server):
    server = make_server(n_tasks=2)
    proc = psutil.Process(server.proc.pid)
    before = proc.memory_info().rss
    reply, _ = _post_raw(server.url, "/api/session", declared=100 * 2**20)  # 100 MB announced, no token
    assert reply.startswith("HTTP/1.1 413") and "4096 bytes" in reply, reply[:300]
    for _attempt in range(3):  # streamed without a length: refused soon after the limit
        reply, sent = _post_raw(server.url, "/api/session", chunked_total=100 * 2**20)
        if reply:
            break
    assert reply.startswith("HTTP/1.1 413") and sent < 2**20, (reply[:300], sent)
    assert proc.memory_info().rss - before < 50 * 2**20
    token = server.add_user("big")
    with server.client(token) as c:
        task_id = c.get("/api/next").json()["task_id"]
        r = c.post("/api/labels", json=_label(task_id, comment="界" * 5000))  # the longest comment fits
        assert r.status_code == 201, r.text
        r = c.post("/api/labels", content=b"{" + b" " * 70_000 + b"}", headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]
    with httpx.Client(base_url=server.url) as c:  # under the limit and without a token: 401 as before
        assert c.post("/api/labels", json=_label(1)).status_code == 401


def test_preference_d_must_be_an_integer():
    row = {"pair_id": "p", "prompt": "q", "response_a": "a", "response_b": "b"}
    for good in (-1, 0, 1, np.int8(1)):
        assert check_preferences({**row, "d": good}) is None
    for bad in (True, False, 1.0, 0.0, "1", 2, None):
        reason = check_preferences({**row, "d": bad})
        assert reason is not None and reason.startswith("d must be -1, 0 or 1"), bad
