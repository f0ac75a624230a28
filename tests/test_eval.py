"""CMMLU / C-Eval evaluation, the parts without Ray: subject tables, readers, prompts (character for
character against the official formats), shot dropping, answer extraction, aggregation, tables and
letter scoring on a real tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from batray.data.io import RejectReport
from batray.errors import BatrayError, DataError
from batray.eval.data import Item, read_split
from batray.eval.extract import extract_answer
from batray.eval.prompts import build_prompt, format_example
from batray.eval.results import aggregate
from batray.eval.subjects import subject_table
from batray.eval.tables import render

from conftest import SHARED_DATASETS

Q1 = Item("anatomy", 0, "0", "壁胸膜的分部不包括", ("肋胸膜", "肺胸膜", "膈胸膜", "胸膜顶"), "B", "肺胸膜属于脏胸膜。")
Q2 = Item("anatomy", 1, "1", "属于蝶骨上的结构为", ("垂体窝", "棘孔", "破裂孔", "视神经管"), "B", "")
ITEM = Item("anatomy", 0, "0", "从脑干背侧出脑的脑神经是", ("副神经", "三叉神经", "舌下神经", "滑车神经"), "D")


# ---- subject tables -------------------------------------------------------------------------------


def test_cmmlu_table_has_67_subjects_in_the_official_categories():
    t = subject_table("cmmlu")
    assert len(t.subjects) == 67
    assert t.categories == ("STEM", "Humanities", "Social Science", "Other", "China specific")
    count = {c: sum(c in s.categories for s in t.subjects.values()) for c in t.categories}
    # CMMLU paper: 17 STEM, 13 Humanities, 22 Social Science, 15 Other; 15 of them China specific.
    assert count == {"STEM": 17, "Humanities": 13, "Social Science": 22, "Other": 15, "China specific": 15}
    assert t["anatomy"].zh == "解剖学"
    assert t["ancient_chinese"].categories == ("Social Science", "China specific")


@pytest.mark.skipif(not (SHARED_DATASETS / "cmmlu" / "categories.json").is_file(), reason="no shared CMMLU")
def test_cmmlu_table_matches_the_official_categories_file():
    src = json.loads((SHARED_DATASETS / "cmmlu" / "categories.json").read_text())
    t = subject_table("cmmlu")
    assert {k: s.zh for k, s in t.subjects.items()} == src["name_en2zh"]
    for name, subs in src["subject_to_subcategories"].items():
        want = {c for c, cs in src["category_to_subcategories"].items() if set(subs) & set(cs)}
        assert set(t[name].categories) == want, name


def test_ceval_table_has_52_subjects_4_categories_and_8_hard():
    t = subject_table("ceval")
    assert len(t.subjects) == 52
    count = {c: sum(c in s.categories for s in t.subjects.values()) for c in t.categories}
    assert count == {"STEM": 20, "Social Science": 10, "Humanities": 11, "Other": 11}
    assert set(t.hard) == {"advanced_mathematics", "discrete_mathematics", "probability_and_statistics",
                           "college_chemistry", "college_physics", "high_school_mathematics",
                           "high_school_chemistry", "high_school_physics"}
    assert t["high_school_geography"].zh == "高中地理"
    with pytest.raises(BatrayError, match="unknown subject 'astrology'"):
        t["astrology"]


# ---- prompts, character for character -------------------------------------------------------------


def test_cmmlu_prompt_is_the_official_format():
    got = build_prompt("cmmlu", "解剖学", [Q1, Q2], ITEM, "da").text
    want = (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目：壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案是：B\n\n"
        "题目：属于蝶骨上的结构为\nA. 垂体窝\nB. 棘孔\nC. 破裂孔\nD. 视神经管\n答案是：B\n\n"
        "题目：从脑干背侧出脑的脑神经是\nA. 副神经\nB. 三叉神经\nC. 舌下神经\nD. 滑车神经\n答案是："
    )
    assert got == want
    zero = build_prompt("cmmlu", "解剖学", [], ITEM, "da")
    assert zero.text == want.split("\n\n", 1)[0] + "\n\n" + want.rsplit("\n\n", 1)[1] and zero.shots == 0


def test_cmmlu_cot_prompt_changes_header_and_item_only():
    got = build_prompt("cmmlu", "解剖学", [Q1], ITEM, "cot").text
    assert got == (
        "以下是关于解剖学的单项选择题，请分析并选出正确答案。\n\n"
        "题目：壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案是：B\n\n"
        "题目：从脑干背侧出脑的脑神经是\nA. 副神经\nB. 三叉神经\nC. 舌下神经\nD. 滑车神经\n逐步分析并给出答案选项。"
    )


def test_ceval_prompts_are_the_official_format():
    da = build_prompt("ceval", "高中地理", [Q1, Q2], ITEM, "da").text
    assert da == (
        "以下是中国关于高中地理考试的单项选择题，请选出其中的正确答案。\n\n"
        "壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案：B\n\n"
        "属于蝶骨上的结构为\nA. 垂体窝\nB. 棘孔\nC. 破裂孔\nD. 视神经管\n答案：B\n\n"
        "从脑干背侧出脑的脑神经是\nA. 副神经\nB. 三叉神经\nC. 舌下神经\nD. 滑车神经\n答案："
    )
    cot = build_prompt("ceval", "高中地理", [Q1], ITEM, "cot").text
    assert cot == (
        "以下是中国关于高中地理考试的单项选择题，请选出其中的正确答案。\n\n"
        "壁胸膜的分部不包括\nA. 肋胸膜\nB. 肺胸膜\nC. 膈胸膜\nD. 胸膜顶\n答案：让我们一步一步思考，\n肺胸膜属于脏胸膜。\n所以答案是B。\n\n"
        "从脑干背侧出脑的脑神经是\nA. 副神经\nB. 三叉神经\nC. 舌下神经\nD. 滑车神经\n答案：让我们一步一步思考，\n"
    )


def test_shots_are_dropped_longest_first_until_the_prompt_fits():
    long = Item("anatomy", 2, "2", "很长" * 40, ("甲", "乙", "丙", "丁"), "A")
    count = len  # one token per character keeps the arithmetic visible
    shots = [Q1, long, Q2]
    full = build_prompt("cmmlu", "解剖学", shots, ITEM, "da", count, 10_000)
    assert full.shots == 3
    head_end = len(full.text) - sum(len(format_example("cmmlu", s, True)) for s in shots)
    short_two = sum(len(format_example("cmmlu", s, True)) for s in (Q1, Q2))
    dropped = build_prompt("cmmlu", "解剖学", shots, ITEM, "da", count, head_end + short_two + 1)
    assert dropped.shots == 2 and "很长" not in dropped.text and count(dropped.text) <= head_end + short_two + 1
    assert dropped.text == build_prompt("cmmlu", "解剖学", [Q1, Q2], ITEM, "da").text
    none = build_prompt("cmmlu", "解剖学", shots, ITEM, "da", count, head_end + 5)
    assert none.shots == 0 and none.text.startswith("以下是关于解剖学")
    # Not even header + item fit: the item alone, as the official code does.
    alone = build_prompt("cmmlu", "解剖学", shots, ITEM, "da", count, 10)
    assert alone.text == format_example("cmmlu", ITEM, False) and alone.shots == 0


# ---- answer extraction ----------------------------------------------------------------------------


@pytest.mark.parametrize("text,letter", [
    ("B", "B"),
    ("答案是：C", "C"),
    ("经过分析，答案为 D。", "D"),
    ("故选A", "A"),
    ("分析：A不对，B也不对，C正确", "C"),
    ("首先排除其他项，正确选项是 B", "B"),
    ("我认为是：D", "D"),
    ("只有选项里的 C 说得通", "C"),
    ("无法确定", None),
    ("在B与C之间犹豫", None),
    ("", None),
])
def test_cmmlu_extraction(text, letter):
    assert extract_answer("cmmlu", text) == letter


@pytest.mark.parametrize("text,letter", [
    ("1. 先看题干……\n所以答案是C。", "C"),
    ("经过计算，答案是B", "B"),
    ("D是正确的", "D"),
    ("选择A比较合适", "A"),
    ("应当是三叉神经", "B"),  # only one option's text appears
    ("不知道", None),
    ("副神经或三叉神经", None),
])
def test_ceval_extraction(text, letter):
    assert extract_answer("ceval", text, ITEM.options) == letter


# ---- readers --------------------------------------------------------------------------------------


def test_readers_count_rejected_rows_and_check_the_header(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,问题一,甲,乙,丙,丁,A\n1,问题二,甲,乙,丙,丁,E\n2,,甲,乙,丙,丁,B\n3,\"带,逗号\",甲,乙,丙,丁,C\n",
        encoding="utf-8")
    report = RejectReport()
    items = read_split(str(tmp_path), "cmmlu", "anatomy", "test", report)
    assert [i.question for i in items] == ["问题一", "带,逗号"] and items[1].answer == "C"
    assert report.total == 4 and len(report.rejected) == 2
    assert "2 rejected" in report.summary("rows")
    (tmp_path / "test" / "virology.csv").write_text("q,a\n", encoding="utf-8")
    with pytest.raises(DataError, match="not the official cmmlu layout"):
        read_split(str(tmp_path), "cmmlu", "virology", "test")
    (tmp_path / "test").joinpath("law_test.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,问,甲,乙,丙,丁,,\n", encoding="utf-8")
    withheld = read_split(str(tmp_path), "ceval", "law", "test", require_answer=False)
    assert withheld[0].answer == ""


# ---- aggregation and tables -----------------------------------------------------------------------


def _rows(subject: str, correct: int, n: int) -> list[dict]:
    return [{"subject": subject, "correct": i < correct, "pred": "A"} for i in range(n)]


def test_cmmlu_averages_follow_the_official_definitions():
    # ancient_chinese counts in Social Science AND China specific; anatomy in STEM; arts in Humanities.
    rows = _rows("anatomy", 9, 10) + _rows("arts", 1, 2) + _rows("ancient_chinese", 1, 4)
    rows[-1]["pred"] = None  # an unparsable answer is wrong and counted
    r = aggregate("cmmlu", rows, {"model_label": "m", "mode": "da", "shots": 5})
    assert r["subjects"]["anatomy"]["accuracy"] == pytest.approx(0.9)
    assert r["average"] == pytest.approx((0.9 + 0.5 + 0.25) / 3)  # mean over subjects
    assert r["weighted_average"] == pytest.approx(11 / 16)  # item-weighted, labeled
    cats = r["categories"]
    assert cats["STEM"]["accuracy"] == pytest.approx(0.9)
    assert cats["Social Science"]["accuracy"] == pytest.approx(0.25)
    assert cats["China specific"]["accuracy"] == pytest.approx(0.25)
    assert cats["Other"]["accuracy"] is None and r["unparsable"] == 1
    assert len(r["missing_subjects"]) == 64
    table = render([r])
    assert "| Model | Setting | STEM | Humanities | Social Science | Other | China specific | Average |" in table
    assert "| m | 5-shot DA | 90.00 | 50.00 | 25.00 | – | 25.00 | 55.00 |" in table


def test_ceval_hard_average_and_table_3_and_table_2():
    rows = _rows("college_physics", 1, 4) + _rows("high_school_physics", 3, 4) + _rows("law", 2, 2)
    base = {"model_label": "m", "shots": 0}
    da = aggregate("ceval", rows, {**base, "mode": "da"})
    assert da["hard"] == {"accuracy": pytest.approx(0.5), "subjects": 2}
    assert da["categories"]["STEM"]["accuracy"] == pytest.approx(0.5)
    assert da["average"] == pytest.approx((0.25 + 0.75 + 1.0) / 3)
    cot = aggregate("ceval", _rows("law", 1, 2), {**base, "mode": "cot"})
    table = render([da, cot])
    assert "| Model | Setting | STEM | Social Science | Humanities | Other | Average | Avg(Hard) |" in table
    assert "| m | 0-shot DA | 50.00 | – | 100.00 | – | 66.67 | 50.00 |" in table
    assert "**Table 2" in table and "| m | C-Eval | 0-shot | 66.67 | 50.00 | 0 |" in table


# ---- letter scoring on a real tiny model ----------------------------------------------------------


def test_letter_ids_and_one_pass_scoring_match_the_four_pass_baseline(tiny_tokenizer):
    from batray.eval.scoring import LocalBackend
    from batray.models.presets import build_model, preset_config

    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=1)
    backend = LocalBackend("tiny", model=model, tokenizer=tiny_tokenizer, batch_size=3)
    prompts = [build_prompt("cmmlu", "解剖学", shots, ITEM, "da").text for shots in ([], [Q1], [Q1, Q2])]
    prompts.append(build_prompt("ceval", "高中地理", [Q2], ITEM, "da").text)
    # Byte-level BPE: the letters are single tokens, found after the prompt's own last token.
    ids = backend.letter_ids(prompts[0])
    assert ids == tiny_tokenizer.convert_tokens_to_ids(list("ABCD"))
    batched = backend.letter_scores(prompts)
    separate = backend.letter_scores_separately(prompts)
    for p, b, s in zip(prompts, batched, separate):
        single = backend.letter_scores([p])[0]  # unpadded: left padding must not change anything
        assert b == pytest.approx(single, abs=1e-4)
        logp = torch.tensor(b).log_softmax(-1)  # same ranking as the per-option log-probabilities
        assert int(logp.argmax()) == int(torch.tensor(s).argmax())


def test_chat_wrapping_puts_the_prompt_in_one_user_turn(tiny_tokenizer):
    from batray.eval.scoring import LocalBackend
    from batray.eval.tasks import PromptFitter
    from batray.models.presets import build_model, preset_config

    fitter = PromptFitter(tokenizer=tiny_tokenizer, context=1024, prefix_tokens=1, chat=True)
    prompt = build_prompt("cmmlu", "解剖学", [Q1], ITEM, "da").text
    wrapped = fitter.finish(prompt)
    assert wrapped == "<|l2r|>[Turn 1]\n\n[User] " + prompt + "\n\n[Assistant] "
    assert fitter.budget(1) == 1024 - 1 - fitter.chat_overhead - 1 and fitter.chat_overhead > 0
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=0)
    backend = LocalBackend("tiny", model=model, tokenizer=tiny_tokenizer)
    l2r = tiny_tokenizer.convert_tokens_to_ids("<|l2r|>")
    assert backend.encode(wrapped).count(l2r) == 1 and backend.encode(prompt)[0] == l2r


def test_ppl_mode_scores_option_texts_as_continuations(tiny_tokenizer):
    from batray.eval.modes import Request, get_mode
    from batray.eval.scoring import LocalBackend
    from batray.models.presets import build_model, preset_config

    prompt = build_prompt("cmmlu", "解剖学", [Q1], ITEM, "ppl").text
    assert prompt.endswith("题目：" + ITEM.question + "\n答案是：") and "\nA. " not in prompt  # no options shown
    assert Q1.options["ABCD".index(Q1.answer)] + "\n\n" in prompt  # the shot answered with the gold text
    model = build_model(preset_config("batgpt-tiny", vocab_size=len(tiny_tokenizer)), seed=1)
    backend = LocalBackend("tiny", model=model, tokenizer=tiny_tokenizer, batch_size=3)
    pairs = [(prompt, o) for o in ITEM.options]
    batched = backend.continuation_logprobs(pairs)
    for (p, o), got in zip(pairs, batched):  # left padding changes nothing; the sum over the option's tokens
        ctx, full = backend.encode(p), backend.encode(p + o)
        logp = model(input_ids=torch.tensor([full])).logits.float().log_softmax(-1)[0]
        want = sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full)))
        assert got == pytest.approx(want, abs=1e-3)
    req = Request("anatomy", 0, prompt, ITEM.answer, ITEM.options, 1)
    row = get_mode("ppl").predict(backend, [req], "cmmlu")[0]
    norm = [b / len(o) for b, o in zip(batched, ITEM.options)]
    assert row["pred"] == "ABCD"[max(range(4), key=lambda k: norm[k])]
