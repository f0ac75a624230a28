"""The run report: headline table first, tables instead of JSON, report.json beside it; the intervals."""

from __future__ import annotations

import json
import math
import re

import pytest

from batray.measure import Claim, mean_ci, paired_rise, proportion, wilson
from batray.report import build_report


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_mean_interval_and_proportion():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 1.959964 * math.sqrt(5 / 3) / 2
    assert (m, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    p = proportion(3, 4)
    assert p["value"] == 0.75 and p["low"] < 0.75 < p["high"]


def test_the_ppo_rise_is_measured_on_paired_per_prompt_differences():
    """Same prompts, same seeds: prompt difficulty (a per-prompt offset shared by both policies) cancels; each
    prompt's answers are averaged first, so the interval is over prompts, not over correlated answers."""
    samples, offsets = 2, [-3.0, -1.0, 0.0, 1.0, 2.0, 3.0, 5.0, -2.0]
    before = [o + e for o in offsets for e in (0.0, 0.2)]
    after = [o + e + 0.3 + 0.05 * (i % 3) for i, o in enumerate(offsets) for e in (0.0, 0.2)]
    rise = paired_rise(before, after, samples)
    per_prompt = [0.3 + 0.05 * (i % 3) for i in range(len(offsets))]
    m, lo, hi = mean_ci(per_prompt)
    assert rise["n"] == len(offsets) and (rise["value"], rise["low"], rise["high"]) == pytest.approx((m, lo, hi))
    assert rise["low"] > 0  # the rise is resolved ...
    _, b_lo, b_hi = mean_ci(before)
    _, a_lo, a_hi = mean_ci(after)
    assert a_lo < b_hi  # ... where the two means' own intervals overlap widely


def _state(tmp_path):
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i, "reward": 0.1 * i, "kl": 0.01 * i, "entropy": 2.0 - 0.1 * i}) + "\n" for i in range(1, 6)))
    return {"stages": {
        "ppo": {"status": "done", "seconds": 12.5, "inputs": {"policy": str(tmp_path / "sft" / "final")},
                "outputs": {"model": str(tmp_path / "ppo" / "final")},
                "summary": {"nested": {"a": 1, "b": [1, 2]}, "rows": [{"x": 1, "y": "z"}]}},
    }}


def test_report_opens_with_the_headline_and_renders_no_json(tmp_path):
    claims = [Claim("ppo", "reward rises", "mean reward", "SFT policy", "0.1 -> 0.3", True),
              Claim("eval", "above chance", "accuracy", "25%", "24%", False, note="interval reaches 25%"),
              Claim("grow", "stacked beats scratch", "-", "-", "not measured", None, "no scratch run")]
    measurements = {"headline": [c.__dict__ for c in claims],
                    "stages": {"ppo": {"prompts": 4, "samples_per_prompt": 2,
                                       "accuracy_sft": proportion(1, 8), "accuracy_ppo": proportion(2, 8)}}}
    path = build_report(tmp_path, _state(tmp_path), measurements)
    page = path.read_text()
    body = page.split("<body>", 1)[1]
    assert body.startswith("<table class='headline'>")  # the headline table is the first element
    headline = body.split("</table>", 1)[0]
    assert headline.count("<tr>") == 4 and ">held<" in headline and ">did not hold<" in headline
    assert "not measured" in headline and "interval reaches 25%" in headline
    text = re.sub(r"<[^>]+>", " ", re.sub(r"src='data:[^']+'", "", page.split("</style>", 1)[1]))
    assert not re.search(r"[{\[]\s*['\"]", text), "raw JSON or a Python dict in the page"
    assert "data:image/png;base64," in page and "http" not in page.split("</style>", 1)[1]  # self-contained
    doc = json.loads(path.with_suffix(".json").read_text())
    assert [r["held"] for r in doc["headline"]] == [True, False, None]
    assert doc["seconds"] == {"ppo": 12.5}


def _results(root, bench, label, mode, shots, correct, n):
    d = root / bench / label / f"{mode}_{shots}shot"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"benchmark": bench, "model_label": label, "mode": mode,
                                                "shots": shots, "correct": correct, "n": n}))


def test_eval_claim_is_made_for_ppl_and_reports_da_beside_it(tmp_path):
    from batray.measure import measure_eval

    _results(tmp_path, "cmmlu", "sft", "ppl", 0, 40, 64)
    _results(tmp_path, "cmmlu", "sft", "da", 0, 10, 64)  # at chance: shown, not claimed
    rows, _ = measure_eval(None, str(tmp_path))
    (row,) = rows
    assert row.held is True and "ppl mode" in row.claim
    assert "reported, not claimed: sft da 0shot: 15.6%" in row.figure
    assert "0 of 1 intervals above 25%" in row.note
    _results(tmp_path, "cmmlu", "ppo", "ppl", 0, 18, 64)  # a claimed setting at chance: the row does not hold
    (row,) = measure_eval(None, str(tmp_path))[0]
    assert row.held is False and "claimed interval reaches 25%" in row.note
    _results(tmp_path, "ceval", "sft", "da", 5, 30, 40)  # no ppl run: every setting is claimed
    ceval = next(r for r in measure_eval(None, str(tmp_path))[0] if "C-Eval" in r.claim)
    assert ceval.held is True and "not claimed" not in ceval.figure
