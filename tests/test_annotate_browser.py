"""The annotation page in real headless Chromium (Debian's `chromium`, driven by Playwright).

Signs in with a token, labels with the keyboard only, skips, undoes, comments, reloads (resume),
and checks that an injected <script>/<img onerror> in a model output is shown as text and never runs.

`python tests/test_annotate_browser.py docs/annotate.png` renders the README screenshot.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from batray.annotate.db import Database, Label, Task
from test_annotate_server import LONG, XSS, AnnotateServer, make_server, write_pairs  # noqa: F401 (fixture)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium fonts-noto-cjk)"
)

FIRST_TASKS = [
    {"pair_id": "xss", "prompt": "Repeat this HTML exactly: <script>alert(1)</script>",
     "response_a": XSS, "response_b": "我不能执行脚本。 I will not run scripts.", "model_a": "sft", "model_b": "sft"},
    {"pair_id": "long", "prompt": "请用中文和英文各写一段很长的说明。 Write a long bilingual explanation.",
     "response_a": LONG, "response_b": "简短回答。 A short answer.", "model_a": "sft", "model_b": "sft"},
]


def _browser(playwright):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)  # generous on a loaded CI machine; waits end as soon as the page is ready
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def _page(browser, **kw):
    page = browser.new_page(**kw)
    page.set_default_timeout(30_000)
    return page


def _labels(server: AnnotateServer) -> dict[str, Label]:
    db = Database(server.db_url)
    try:
        with db.read() as s:
            return {pair_id: label for label, pair_id in s.execute(select(Label, Task.pair_id).join(Task))}
    finally:
        db.close()


def _sign_in(page, server: AnnotateServer, token: str) -> None:
    from playwright.sync_api import expect

    page.goto(server.url + "/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.press("#token", "Enter")
    expect(page.locator("#task")).to_be_visible()


def test_label_with_the_keyboard_in_chromium(make_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server = make_server(n_tasks=6, first=FIRST_TASKS)
    token = server.add_user("alice")
    with sync_playwright() as p:
        browser = _browser(p)
        page = _page(browser, viewport={"width": 1280, "height": 900})
        page.goto(server.url + "/")
        page.fill("#token", "wrong-token")
        page.press("#token", "Enter")
        expect(page.locator("#login-error")).to_have_text("unknown token")
        _sign_in(page, server, token)
        expect(page.locator("#who")).to_have_text("alice")
        expect(page.locator("#progress")).to_have_text("0 labeled · 6 left")

        # task 1: the injected markup is text, not elements, and nothing ran
        expect(page.locator("#prompt")).to_contain_text("<script>alert(1)</script>")
        boxes = page.locator("#left, #right")
        assert "<script>window.__pwned = 1</script>" in " ".join(boxes.all_text_contents())
        assert page.evaluate("document.querySelectorAll('#prompt *, #left *, #right *').length") == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0

        # sending with options missing is refused on the page, nothing stored
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        expect(page.locator("#message")).to_contain_text("Answer acceptability")
        assert _labels(server) == {}

        # keyboard: A acceptable (1), B unacceptable (4), B better (6), send (Enter)
        for key in ("1", "4", "6", "Enter"):
            page.keyboard.press(key)
        expect(page.locator("#progress")).to_have_text("1 labeled · 5 left")
        first = _labels(server)["xss"]
        assert (first.acceptable_left, first.acceptable_right, first.helpfulness) == (True, False, "right_better")

        # task 2: bilingual, and the long output scrolls inside its box
        expect(page.locator("#prompt")).to_contain_text("请用中文和英文")
        long_box = "#left" if "第 1 行" in page.locator("#left").text_content() else "#right"
        assert page.locator(long_box).get_attribute("lang") == "zh-CN"
        assert page.evaluate(f"(() => {{ const e = document.querySelector('{long_box}'); return e.scrollHeight > e.clientHeight + 100; }})()")
        assert page.evaluate("document.documentElement.scrollHeight") < 3000  # the page itself stays short
        page.keyboard.press("s")  # skip it
        expect(page.locator("#prompt")).not_to_contain_text("请用中文和英文")
        expect(page.locator("#message")).to_have_text("Skipped. 已跳过。")
        third_prompt = page.locator("#prompt").text_content()

        # undo the last label: task 1 is back with the old answer selected; change it, comment, send
        page.keyboard.press("u")
        expect(page.locator("#prompt")).to_contain_text("<script>alert(1)</script>")
        expect(page.locator("#progress")).to_have_text("0 labeled · 6 left")
        assert page.is_checked('input[name="helpfulness"][value="right_better"]')
        assert page.is_checked('input[name="acceptable_right"][value="false"]')
        for key in ("3", "7"):  # B acceptable after all; both good
            page.keyboard.press(key)
        page.keyboard.press("c")
        page.keyboard.type("两个都可以 both fine")
        page.keyboard.press("Control+Enter")
        expect(page.locator("#progress")).to_have_text("1 labeled · 5 left")
        relabeled = _labels(server)["xss"]
        assert (relabeled.acceptable_left, relabeled.acceptable_right, relabeled.helpfulness) == (True, True, "both_good")
        assert relabeled.comment == "两个都可以 both fine"

        # resume: the task shown before the undo comes back, also after a reload (session cookie)
        expect(page.locator("#prompt")).to_have_text(third_prompt)
        page.reload()
        expect(page.locator("#prompt")).to_have_text(third_prompt)
        expect(page.locator("#progress")).to_have_text("1 labeled · 5 left")
        for key in ("2", "4", "8", "Enter"):
            page.keyboard.press(key)
        expect(page.locator("#progress")).to_have_text("2 labeled · 4 left")
        page.screenshot(path=str(tmp_path / "annotate.png"))
        browser.close()
    assert len(_labels(server)) == 2


def test_keys_pressed_while_a_request_is_in_flight_run_in_order(make_server):
    """Label, then skip and undo and relabel with no wait between the keys: each key waits for the action
    before it (the skip's requests, the next task) instead of being dropped or hitting a stale form."""
    from playwright.sync_api import expect, sync_playwright

    server = make_server(n_tasks=4, first=FIRST_TASKS)
    token = server.add_user("alice")
    with sync_playwright() as p:
        browser = _browser(p)
        page = _page(browser)
        _sign_in(page, server, token)
        expect(page.locator("#prompt")).to_contain_text("<script>alert(1)</script>")
        # Wait for the relabel's own response: the page after the first send already shows what it shows at the
        # end ("Saved.", "1 labeled · 3 left"), so the text alone could pass before skip, undo and relabel ran.
        def relabel(response) -> bool:
            return (response.request.method == "POST" and response.url.endswith("/api/labels")
                    and '"acceptable_left":false' in (response.request.post_data or ""))

        with page.expect_response(relabel):
            for key in ("1", "4", "6", "Enter", "s", "u", "2", "Enter"):  # send, skip the next, undo the first, relabel
                page.keyboard.press(key)
        expect(page.locator("#progress")).to_have_text("1 labeled · 3 left")
        expect(page.locator("#message")).to_have_text("Saved. 已保存。")
        browser.close()
    labels = _labels(server)
    assert list(labels) == ["xss"]  # the skipped task is not labeled; the undone label was replaced
    assert (labels["xss"].acceptable_left, labels["xss"].acceptable_right, labels["xss"].helpfulness) == \
        (False, False, "right_better")


def test_admin_view_in_chromium(make_server):
    from playwright.sync_api import expect, sync_playwright

    server = make_server(n_tasks=4, overlap=1.0)
    admin = server.add_user("boss", admin=True)
    annotator = server.add_user("alice")
    with server.client(annotator) as c:
        task_id = c.get("/api/next").json()["task_id"]
        body = {"task_id": task_id, "acceptable_left": True, "acceptable_right": True, "helpfulness": "both_good"}
        assert c.post("/api/labels", json=body).status_code == 201
    with sync_playwright() as p:
        browser = _browser(p)
        page = _page(browser)
        page.goto(server.url + "/admin")
        expect(page.locator("#error")).to_contain_text("not signed in")
        _sign_in(page, server, admin)
        expect(page.locator("#admin-link")).to_be_visible()
        page.click("#admin-link")
        expect(page.locator("#tasks")).to_have_text("0 of 4 tasks done · 1 labels · 4 tasks for two annotators")
        expect(page.locator("#position")).to_contain_text("both good 1")
        expect(page.locator("#annotators tbody tr")).to_have_count(2)
        expect(page.locator("#annotators tbody tr").first).to_contain_text("alice")
        browser.close()


def render_screenshot(out: Path) -> None:
    """The README screenshot: a bilingual task mid-answer, with some progress made."""
    import tempfile

    from playwright.sync_api import expect, sync_playwright

    workdir = Path(tempfile.mkdtemp())
    rows = [{
        "pair_id": "demo", "model_a": "sft", "model_b": "sft",
        "prompt": "用中文简要介绍维洛里亚的首都，并给出一句英文翻译。\nBriefly describe the capital of Veloria in Chinese, then translate one sentence into English.",
        "response_a": "维洛里亚的首都是马尔内。马尔内位于北部海岸，以古老的港口和制图学院闻名，"
                      "著名制图师艾达·奎尔就在那里工作。\n\nEnglish: The capital of Veloria is Marnet, "
                      "a harbour city known for its school of cartography.",
        "response_b": "维洛里亚的首都是瓦尔登。\n\nEnglish: Veloria's capital is Valden, the largest city in the south.",
    }]
    server = AnnotateServer(workdir, write_pairs(workdir / "pairs.parquet", 24, rows)).start()
    try:
        token = server.add_user("alice")
        with server.client(token) as c:  # some work done already (labels posted straight to the API)
            for task_id in (2, 3, 4):
                body = {"task_id": task_id, "acceptable_left": True, "acceptable_right": True, "helpfulness": "both_good"}
                assert c.post("/api/labels", json=body).status_code == 201
        with sync_playwright() as p:
            browser = _browser(p)
            page = _page(browser, viewport={"width": 1200, "height": 760}, device_scale_factor=1)
            _sign_in(page, server, token)
            for key in ("1", "4", "5"):
                page.keyboard.press(key)
            expect(page.locator("#progress")).to_have_text("3 labeled · 21 left")
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    render_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/annotate.png"))
