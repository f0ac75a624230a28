"""The judge's pure parts: templates, reading answers (logprobs and text), combining both orders."""

from __future__ import annotations

import math

import pytest

from batray.errors import ConfigError
from batray.feedback.judge import Answer, combine, option_distribution, parse_text, read_answer
from batray.feedback.templates import (
    ACCEPTABILITY_OPTIONS,
    EN,
    HELPFULNESS_OPTIONS,
    ZH,
    detect_language,
    helpfulness_messages,
    load_templates,
)

H = HELPFULNESS_OPTIONS


def helpful(p1, p2, p3, p4, logprobs=True):
    return Answer(dict(zip(H, (p1, p2, p3, p4))), logprobs)


ACC = Answer({"acceptable": 0.9, "unacceptable": 0.1}, True)
UNACC = Answer({"acceptable": 0.2, "unacceptable": 0.8}, True)


def test_option_distribution_from_top_logprobs():
    tokens = [(" 2", math.log(0.5), [(" 2", math.log(0.5)), ("1", math.log(0.3)), ("The", math.log(0.1)),
                                     ("2", math.log(0.1))])]
    dist = option_distribution(tokens, ACCEPTABILITY_OPTIONS)
    assert dist == pytest.approx({"acceptable": 0.3 / 0.9, "unacceptable": 0.6 / 0.9})
    # no option at the first position: look at the next ones; none at all: None
    later = [("Answer", -0.1, [("Answer", -0.1)]), (":", -0.1, []), ("4", -0.2, [("4", -0.2), ("3", -2.0)])]
    assert max(option_distribution(later, H).items(), key=lambda kv: kv[1])[0] == "both_bad"
    assert option_distribution([("x", -0.1, [("y", -1.0)])], H) is None


def test_parse_text_en_and_zh():
    words_en, words_zh = EN.helpfulness_words, ZH.helpfulness_words
    assert parse_text("2", H, words_en) == "second_better"
    assert parse_text("Option 3: both are good", H, words_en) == "both_good"
    assert parse_text("Both are not good.", H, words_en) == "both_bad"
    assert parse_text("The response is unacceptable", ACCEPTABILITY_OPTIONS, EN.acceptability_words) == "unacceptable"
    assert parse_text("回答不可接受", ACCEPTABILITY_OPTIONS, ZH.acceptability_words) == "unacceptable"
    assert parse_text("两个都不好", H, words_zh) == "both_bad"
    assert parse_text("我觉得回答1更好", H, words_zh) == "first_better"
    assert parse_text("no idea", H, words_en) is None
    assert parse_text("9", H, words_en) is None
    text_only = read_answer("1", None, ACCEPTABILITY_OPTIONS, EN.acceptability_words)
    assert text_only.dist == {"acceptable": 1.0, "unacceptable": 0.0} and not text_only.from_logprobs


def test_both_orders_cancel_position_bias():
    # A judge that leans to whatever is shown first: 0.6 first vs 0.3 second, in both orders.
    ab, ba = helpful(0.6, 0.3, 0.05, 0.05), helpful(0.6, 0.3, 0.05, 0.05)
    tie = combine(ACC, ACC, ab, ba, "tie")
    assert tie["d"] == 0 and tie["helpfulness"] is None and not tie["orders_agree"]
    low = combine(ACC, ACC, ab, ba, "lower_confidence")
    assert low["d"] == 0 and low["confidence"] == pytest.approx(0.45)  # a_better and b_better exactly tied
    # A real preference survives the order swap and keeps its confidence.
    real = combine(ACC, UNACC, helpful(0.8, 0.1, 0.05, 0.05), helpful(0.1, 0.8, 0.05, 0.05), "tie")
    assert (real["d"], real["helpfulness"], real["orders_agree"]) == (-1, "a_better", True)
    assert real["confidence"] == pytest.approx(0.8)
    assert (real["acceptable_a"], real["acceptable_b"]) == (True, False)


def test_disagreement_policies_differ():
    ab, ba = helpful(0.7, 0.2, 0.05, 0.05), helpful(0.45, 0.40, 0.1, 0.05)  # second order says B, barely
    assert combine(ACC, ACC, ab, ba, "tie")["d"] == 0
    low = combine(ACC, ACC, ab, ba, "lower_confidence")
    assert low["d"] == -1 and low["confidence"] == pytest.approx((0.7 + 0.40) / 2)
    one = combine(ACC, ACC, helpful(0.1, 0.7, 0.1, 0.1), None)
    assert one["d"] == 1 and one["orders_agree"]


def test_templates_language_and_overrides(tmp_path):
    assert detect_language("What is the capital of 维洛里亚?") == "en"
    assert detect_language("维洛里亚的首都是哪里？") == "zh"
    msgs = helpfulness_messages(ZH, "问题 {x}", "甲 {response_2}", "乙")
    assert "[回答 1]\n甲 {response_2}" in msgs[1]["content"] and "两个都不好" in msgs[1]["content"]
    for t in (EN, ZH):  # the human options, all four, in order
        body = helpfulness_messages(t, "q", "a", "b")[1]["content"]
        assert all(f"{i}." in body for i in range(1, 5))
    (tmp_path / "en.yaml").write_text("system: Be strict.\n")
    custom = load_templates(str(tmp_path))
    assert custom["en"].system == "Be strict." and custom["zh"] == ZH
    (tmp_path / "zh.yaml").write_text("helpfulness: 'no placeholders'\n")
    with pytest.raises(ConfigError, match="must contain"):
        load_templates(str(tmp_path))
