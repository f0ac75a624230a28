"""`batray run configs/tiny.yaml` end to end: every stage's headline claim holds on held-out data (issue 19).

Opt-in (`pytest -m slow tests/test_recipe_report.py`): the whole tiny recipe, as `make run` runs it,
takes minutes on 2 cores. It reads `report.json` (the figures of the page's headline table) and checks
that each measured claim held, that the page opens with that table and that no JSON leaks into it.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_tiny_recipe_report_claims_hold(tmp_path, ray_session):
    from jobs.run import main

    assert main([str(ROOT / "configs" / "tiny.yaml"), "--run-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["stage"], r["claim"]): r for r in doc["headline"]}
    stages = {r["stage"] for r in doc["headline"]}
    assert {"grow", "expand", "sft", "reward", "ppo", "eval"} <= stages
    failed = [f"{stage}: {claim}: {r['figure']} ({r['note']})" for (stage, claim), r in rows.items() if r["held"] is False]
    assert not failed, "claims that did not hold:\n" + "\n".join(failed)

    s = doc["stages"]
    for direction in ("l2r", "r2l"):  # held-out loss fell in both directions
        d = s["grow"]["direction_loss"][direction]
        assert d["final"]["high"] < d["init"]["low"]
    assert s["grow"]["stacked_vs_scratch"]["difference"]["high"] < 0
    assert 0.9 < s["grow"]["stacked_vs_scratch"]["compute_ratio"] < 1.1  # the same compute
    sft = s["sft"]["figures"]
    assert sft["after"]["accuracy"]["low"] > sft["before"]["accuracy"]["high"]
    assert sft["after"]["ends_with_eot"]["value"] > 0.9
    assert s["reward"]["accuracy"]["low"] > 0.5
    assert s["ppo"]["reward_rise"]["low"] > 0
    assert s["ppo"]["accuracy_ppo"]["value"] >= s["ppo"]["accuracy_sft"]["low"]
    for models in s["eval"]["demo"].values():  # the claim is the ppl mode's; da is reported beside it
        for runs in models.values():
            assert all(p["low"] > 0.25 for key, p in runs.items() if key.startswith("ppl_"))

    page = (tmp_path / "report.html").read_text()
    assert page.split("<body>", 1)[1].startswith("<table class='headline'>")
    text = re.sub(r"<[^>]+>", " ", re.sub(r"src='data:[^']+'", "", page.split("</style>", 1)[1]))
    assert not re.search(r"[{\[]\s*['\"]", text), "raw JSON or a Python dict in the page"
