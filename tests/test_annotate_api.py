"""The JSON API over a real `batray annotate serve` process: auth, bad requests, handout, overlap,
concurrent submissions, and a SIGKILLed server that must keep every acknowledged label."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from batray.annotate.db import Database, Label, Task, User
from test_annotate_server import AnnotateServer, make_server, write_pairs  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("annotate_api")
    s = AnnotateServer(workdir, write_pairs(workdir / "pairs.parquet", 400), overlap=0.5).start()
    yield s
    s.stop()


def _label(task_id, helpfulness="left_better", **kw) -> dict:
    return {"task_id": task_id, "acceptable_left": True, "acceptable_right": False, "helpfulness": helpfulness, **kw}


def _db_count(server: AnnotateServer, name: str) -> int:
    db = Database(server.db_url)
    try:
        with db.read() as s:
            return s.scalar(select(func.count(Label.id)).join(User, Label.user_id == User.id).where(User.name == name))
    finally:
        db.close()


def test_requests_without_a_valid_token_are_refused(server):
    token = server.add_user("auth-user")
    calls = [("GET", "/api/next", None), ("GET", "/api/progress", None), ("GET", "/api/me", None),
             ("POST", "/api/labels", _label(1)), ("POST", "/api/skip", {"task_id": 1}),
             ("DELETE", "/api/labels/last", None), ("GET", "/api/admin/summary", None)]
    bad_headers = [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {token}"},
                   {"Authorization": "Bearer"}, {"Cookie": "batray_session=forged"}]
    for headers in bad_headers:
        with httpx.Client(base_url=server.url, headers=headers) as c:
            for method, path, body in calls:
                r = c.request(method, path, json=body)
                assert r.status_code == 401, (headers, path, r.text)
                assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert _db_count(server, "auth-user") == 0
    page = httpx.get(server.url + "/")  # the page itself is public (it is the sign-in form) and locked down
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    with server.client(token) as c:  # a valid annotator token is not an admin token
        r = c.get("/api/admin/summary")
        assert r.status_code == 403 and "--admin" in r.json()["detail"]
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/api/session", json={"token": "wrong"}).status_code == 401
        r = c.post("/api/session", json={"token": token})  # the browser's way: token -> session cookie
        assert r.status_code == 200 and r.json()["name"] == "auth-user"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and token.lower() not in cookie
        assert c.get("/api/progress").status_code == 200
        assert c.delete("/api/session").status_code == 204
        assert c.get("/api/progress").status_code == 401  # signed out: the session is gone


def test_malformed_requests_get_4xx_with_a_message(server):
    token = server.add_user("malformed-user")
    with server.client(token) as c:
        task_id = c.get("/api/next").json()["task_id"]
        bad_bodies = [
            {},
            {"task_id": task_id},
            _label(str(task_id)),  # "3" is not an integer
            _label(task_id, helpfulness="a_better"),  # a/b is export vocabulary; the page speaks left/right
            {**_label(task_id), "acceptable_left": "yes"},
            {**_label(task_id), "acceptable_right": None},
            _label(task_id, extra_field=1),
            _label(task_id, comment="x" * 5001),
            [1, 2],
        ]
        for body in bad_bodies:
            r = c.post("/api/labels", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"].startswith("malformed request")
        r = c.post("/api/labels", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "JSON" in r.json()["detail"]
        r = c.post("/api/labels", data={"task_id": str(task_id)})  # a form post (no JSON) is refused
        assert r.status_code == 422
        r = c.post("/api/labels", json=_label(10**6))
        assert r.status_code == 404 and "does not exist" in r.json()["detail"]
        assert c.post("/api/skip", json={"task_id": 10**6}).status_code == 404
        assert c.delete("/api/labels/last").status_code == 404  # nothing to undo yet
        assert c.post("/api/labels", json=_label(task_id, comment="中文备注")).status_code == 201
        r = c.post("/api/labels", json=_label(task_id, helpfulness="both_bad"))
        assert r.status_code == 409 and "already labeled" in r.json()["detail"]
    assert _db_count(server, "malformed-user") == 1


def test_next_skip_undo_resume_and_progress(server):
    token = server.add_user("flow-user")
    with server.client(token) as c:
        start = c.get("/api/progress").json()
        assert start["labeled"] == 0 and start["total_tasks"] == 400
        first = c.get("/api/next")
        assert first.status_code == 200 and set(first.json()) == {"task_id", "prompt", "left", "right"}
        first = first.json()
        assert c.get("/api/next").json() == first  # resume: the same task until it is answered
        assert c.post("/api/skip", json={"task_id": first["task_id"]}).status_code == 200
        second = c.get("/api/next").json()
        assert second["task_id"] != first["task_id"]
        assert c.post("/api/labels", json=_label(second["task_id"], comment="ok")).status_code == 201
        undone = c.delete("/api/labels/last")
        assert undone.status_code == 200 and undone.json()["task_id"] == second["task_id"]
        assert undone.json()["previous"] == {"acceptable_left": True, "acceptable_right": False,
                                             "helpfulness": "left_better", "comment": "ok"}
        assert c.get("/api/progress").json()["labeled"] == 0
        assert c.get("/api/next").json()["task_id"] == second["task_id"]  # resume at the undone task
        assert c.post("/api/labels", json=_label(second["task_id"], "both_good")).status_code == 201
        third = c.get("/api/next").json()
        assert third["task_id"] not in (first["task_id"], second["task_id"])
        progress = c.get("/api/progress").json()
        assert progress["labeled"] == 1 and progress["remaining"] == start["remaining"] - 1


def test_overlap_share_goes_to_two_annotators_and_admin_sees_kappa(make_server):
    server = make_server(n_tasks=30, overlap=0.5)
    tokens = {name: server.add_user(name) for name in ("ann1", "ann2")}
    admin = server.add_user("boss", admin=True)
    got: dict[str, list[int]] = {}
    for name, token in tokens.items():  # ann1 labels all it can get, then ann2
        got[name] = []
        with server.client(token) as c:
            while (r := c.get("/api/next")).status_code == 200:
                task_id = r.json()["task_id"]
                got[name].append(task_id)
                helpfulness = "left_better" if task_id % 3 else "both_good"
                if name == "ann2" and task_id % 4 == 0:
                    helpfulness = "right_better"  # some disagreement
                assert c.post("/api/labels", json=_label(task_id, helpfulness)).status_code == 201
            assert r.status_code == 204 and r.content == b""
    db = Database(server.db_url)
    with db.read() as s:
        doubled = set(s.scalars(select(Task.id).where(Task.needed == 2)))
    db.close()
    assert 0 < len(doubled) < 30
    assert sorted(got["ann1"]) == list(range(1, 31))  # alone, ann1 is offered every task
    assert sorted(got["ann2"]) == sorted(doubled)  # ann2 gets exactly the overlap share
    with server.client(admin) as c:
        summary = c.get("/api/admin/summary").json()
    assert summary["tasks"] == {"total": 30, "done": 30, "overlap": len(doubled), "left_is_a": summary["tasks"]["left_is_a"]}
    assert {a["name"]: a["labeled"] for a in summary["annotators"]} == {"ann1": 30, "ann2": len(doubled), "boss": 0}
    assert sum(summary["helpfulness_on_screen"].values()) == summary["labels"] == 30 + len(doubled)
    overall = summary["agreement"]["overall"]
    assert overall["tasks"] == len(doubled)
    disagree = sum(1 for t in doubled if t % 4 == 0)  # ann2 said right_better, ann1 never did
    assert overall["helpfulness_agreement"] == pytest.approx(1 - disagree / len(doubled))
    assert summary["agreement"]["pairs"][0]["annotators"] == ["ann1", "ann2"]


def test_concurrent_submissions_all_land(server):
    """16 annotators label at the same moment, over and over: every 201 is a stored label, none lost."""
    n_threads, per_thread = 16, 4
    tokens = [server.add_user(f"conc-{i}") for i in range(n_threads)]
    barrier = threading.Barrier(n_threads)

    def work(token: str) -> list[int]:
        statuses = []
        with server.client(token) as c:
            for _ in range(per_thread):
                task = c.get("/api/next").json()
                barrier.wait(timeout=120)  # submit together
                statuses.append(c.post("/api/labels", json=_label(task["task_id"])).status_code)
        return statuses

    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(work, tokens))
    assert all(s == 201 for statuses in results for s in statuses), results
    for i in range(n_threads):
        assert _db_count(server, f"conc-{i}") == per_thread

    # one annotator sending the same label from 8 threads at once: exactly one lands
    token = server.add_user("dup-user")
    with server.client(token) as c:
        task_id = c.get("/api/next").json()["task_id"]
    barrier8 = threading.Barrier(8)

    def send(_):
        with server.client(token) as c:
            barrier8.wait(timeout=60)
            return c.post("/api/labels", json=_label(task_id)).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(send, range(8)))
    assert codes == [201] + [409] * 7
    assert _db_count(server, "dup-user") == 1


def test_killed_server_keeps_every_acknowledged_label(make_server, tmp_path):
    """SIGKILL the server while 8 annotators submit; after a restart every 201 is in the export."""
    server = make_server(n_tasks=300, overlap=0.2)
    names = [f"kill-{i}" for i in range(8)]
    tokens = {n: server.add_user(n) for n in names}
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()
    enough = threading.Event()

    def work(name: str) -> None:
        with server.client(tokens[name]) as c:
            try:
                while True:
                    r = c.get("/api/next")
                    if r.status_code != 200:
                        return
                    task_id = r.json()["task_id"]
                    if c.post("/api/labels", json=_label(task_id)).status_code == 201:
                        with lock:
                            acked.append((name, task_id))
                            if len(acked) >= 40:
                                enough.set()
            except httpx.TransportError:
                return  # the server is gone

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    assert enough.wait(timeout=240), "the annotators did not get 40 labels acknowledged"
    server.kill()  # mid-run: requests are in flight
    for t in threads:
        t.join(timeout=60)
    assert len(acked) >= 40

    server.start()  # same database, same tasks file: nothing re-imported, nothing lost
    out = tmp_path / "human.parquet"
    from batray.annotate.labels import export

    db = Database(server.db_url)
    export(db, str(out))
    with db.read() as s:
        pair_of = dict(s.execute(select(Task.id, Task.pair_id)).all())
        n_tasks = s.scalar(select(func.count(Task.id)))
    db.close()
    import pyarrow.parquet as pq

    exported = {(r["rater"], r["pair_id"]) for r in pq.read_table(out).to_pylist()}
    missing = [(n, t) for n, t in acked if (n, pair_of[t]) not in exported]
    assert not missing, f"{len(missing)} acknowledged labels lost: {missing[:5]}"
    assert n_tasks == 300
    with server.client(tokens["kill-0"]) as c:  # and annotation goes on where it stopped
        # at least every acknowledged label (a label committed just before the kill may lack its 201)
        assert c.get("/api/progress").json()["labeled"] >= sum(1 for n, _ in acked if n == "kill-0")
        assert c.get("/api/next").status_code == 200
