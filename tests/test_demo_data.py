"""The built-in bilingual demo world: determinism, contracts, benchmark layouts, the answer checker."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from batray.config import DemoDataConfig
from batray.data.demo import _fact_of, _questions as _askable, build_world, generate_demo
from batray.data.demo_text import CEVAL_SUBJECTS, CMMLU_SUBJECTS, QUIZ_LAYOUTS
from batray.data.io import read_rows
from batray.data.world import DERIVED, RELATIONS, World
from batray.errors import DataError

SHARED_DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"

SMALL = DemoDataConfig(seed=7, num_countries=8, num_people=8, corpus_repeats=2)

# Real subject names of the two benchmarks (C-Eval's 52 as its authors list them).
CEVAL_ALL = {
    "computer_network", "operating_system", "computer_architecture", "college_programming", "college_physics",
    "college_chemistry", "advanced_mathematics", "probability_and_statistics", "discrete_mathematics",
    "electrical_engineer", "metrology_engineer", "high_school_mathematics", "high_school_physics",
    "high_school_chemistry", "high_school_biology", "middle_school_mathematics", "middle_school_biology",
    "middle_school_physics", "middle_school_chemistry", "veterinary_medicine", "college_economics",
    "business_administration", "marxism", "mao_zedong_thought", "education_science", "teacher_qualification",
    "high_school_politics", "high_school_geography", "middle_school_politics", "middle_school_geography",
    "modern_chinese_history", "ideological_and_moral_cultivation", "logic", "law",
    "chinese_language_and_literature", "art_studies", "professional_tour_guide", "legal_professional",
    "high_school_chinese", "high_school_history", "middle_school_history", "civil_servant", "sports_science",
    "plant_protection", "basic_medicine", "clinical_medicine", "urban_and_rural_planner", "accountant",
    "fire_engineer", "environmental_impact_assessment_engineer", "tax_accountant", "physician",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, str]:
    return generate_demo(str(tmp_path_factory.mktemp("demo") / "data"), DemoDataConfig())


@pytest.fixture(scope="module")
def world(demo) -> World:
    return World.load(demo["world"])


def _files(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _files(Path(generate_demo(str(tmp_path / "a"), SMALL)["manifest"]).parent)
    b = _files(Path(generate_demo(str(tmp_path / "b"), SMALL)["manifest"]).parent)
    assert a == b and len(a) > 20
    c = _files(Path(generate_demo(str(tmp_path / "c"), SMALL.model_copy(update={"seed": 8}))["manifest"]).parent)
    assert a.keys() == c.keys()
    for name in ("world.json", "corpus.jsonl", "sft.jsonl", "prompts.jsonl", "benchmarks/cmmlu/test/economics.csv"):
        assert a[name] != c[name], name


def test_same_bytes_in_another_process_with_another_hash_seed(tmp_path):
    """No output depends on set/dict hash order: `python -m jobs.data demo` in a fresh interpreter
    with another PYTHONHASHSEED writes exactly what this process writes."""
    import os
    import subprocess
    import sys

    here = _files(Path(generate_demo(str(tmp_path / "here"), SMALL)["manifest"]).parent)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    cmd = [sys.executable, "-m", "jobs.data", "demo", str(tmp_path / "there"), "--seed", "7",
           "num_countries=8", "num_people=8", "corpus_repeats=2"]
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True)
    assert _files(str(tmp_path / "there")) == here


def test_every_file_matches_its_contract(demo):
    manifest = json.loads(Path(demo["manifest"]).read_text(encoding="utf-8"))
    contracts = {
        "corpus": "corpus", "sft": "sft", "prompts": "prompts", "preferences": "preferences",
        "reversal_train": "corpus", "reversal_test": "prompts", "reversal_forward": "prompts",
        "hallucination": "prompts",
    }
    for name, contract in contracts.items():
        rows, report = read_rows(demo[name], contract)
        assert not report.rejected, (name, report.rejected[:2])
        assert len(rows) == manifest["files"][name]["rows"] == manifest["counts"][name] > 0, name
    sft, _ = read_rows(demo["sft"], "sft")
    dialogues = [r for r in sft if "messages" in r]
    assert sum(1 for r in sft if "prompt" in r) > 100 and len(dialogues) > 10
    assert any(d["messages"][0]["role"] == "system" for d in dialogues)
    assert any(d["messages"][0]["role"] != "system" for d in dialogues)
    assert any(len(d["messages"]) >= 5 for d in dialogues)
    for lang_probe in ("的", "the"):  # both languages in every text file
        for name in ("corpus", "sft", "prompts", "reversal_train", "hallucination"):
            assert lang_probe in Path(demo[name]).read_text(encoding="utf-8"), (name, lang_probe)


def test_chinese_round_trips_through_files_and_world(demo, world, tmp_path):
    raw = Path(demo["corpus"]).read_text(encoding="utf-8")
    assert "\\u" not in raw  # Chinese stored as UTF-8 text, not escapes
    rows, _ = read_rows(demo["corpus"], "corpus")
    assert [json.loads(line)["text"] for line in raw.splitlines()] == [r["text"] for r in rows]
    world.save(tmp_path / "w.json")
    again = World.load(tmp_path / "w.json")
    assert again.to_dict() == world.to_dict()
    country = world.of_type("country")[0]
    assert again.resolve(country.zh) == again.resolve(country.en) == country.id
    with pytest.raises(DataError, match="does not exist"):
        World.load(tmp_path / "nowhere.json")


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_cmmlu_layout_is_exact(demo, world):
    root = Path(demo["cmmlu"])
    assert sorted(p.name for p in (root / "dev").iterdir()) == sorted(f"{s}.csv" for s in CMMLU_SUBJECTS)
    official = SHARED_DATASETS / "cmmlu" / "categories.json"
    if official.is_file():  # the subject names are CMMLU's own
        names = json.loads(official.read_text(encoding="utf-8"))["name_en2zh"]
        assert set(CMMLU_SUBJECTS) <= set(names)
    for subject, relations in CMMLU_SUBJECTS.items():
        for split in ("dev", "test"):
            path = root / split / f"{subject}.csv"
            assert path.read_bytes().startswith(b",Question,A,B,C,D,Answer\n0,")
            rows = _read_csv(path)
            assert rows[0] == ["", "Question", "A", "B", "C", "D", "Answer"]
            body = rows[1:]
            assert [r[0] for r in body] == [str(i) for i in range(len(body))]
            assert len(body) == 5 if split == "dev" else len(body) >= 5
            for r in body:
                assert len(r) == 7 and r[6] in "ABCD" and len(set(r[2:6])) == 4
                _assert_gold_option(world, relations, r[1], r[2:6], r[6])


def test_ceval_layout_is_exact(demo, world):
    root = Path(demo["ceval"])
    assert set(CEVAL_SUBJECTS) <= CEVAL_ALL
    assert {"high_school_mathematics", "civil_servant"} <= set(CEVAL_SUBJECTS)  # STEM/Hard and Other covered
    for subject, relations in CEVAL_SUBJECTS.items():
        for split in ("dev", "val", "test"):
            path = root / split / f"{subject}_{split}.csv"
            rows = _read_csv(path)
            assert rows[0] == ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
            body = rows[1:]
            assert [r[0] for r in body] == [str(i) for i in range(len(body))]
            assert len(body) == 5 if split == "dev" else len(body) >= 3
            for r in body:
                assert len(r) == 8 and len(set(r[2:6])) == 4
                if split == "test":
                    assert r[6] == "" and r[7] == ""  # answers withheld, as in the official test split
                else:
                    assert r[6] in "ABCD"
                    _assert_gold_option(world, relations, r[1], r[2:6], r[6])
                    assert bool(r[7]) == (split == "dev")


def _assert_gold_option(world: World, relations: list[str], question: str, options: list[str], letter: str) -> None:
    """The lettered option is the world's answer to the question, and it is the only right option."""
    if relations == ["birth_gap"]:
        a, b = (world.facts[f"birth_year:{p}"].object for p in world.mentions("person", question))
        assert options["ABCD".index(letter)] == f"{abs(a - b)}年" and len(set(options)) == 4, question
        return
    subject_type = {**RELATIONS, **DERIVED}[relations[0]][0]
    (subject,) = world.mentions(subject_type, question)
    golds = set()
    for relation in relations:
        try:
            name = world.answer_name((relation, subject), "zh")
        except DataError:  # e.g. capital_of asked of a city that is not a capital
            continue
        golds.add(name + "年" if world.object_type(relation) == "year" else name)
    right = [o for o in options if o in golds]
    assert right == [options["ABCD".index(letter)]], (question, options, letter)


def test_checker_accepts_right_and_rejects_wrong_answers(world):
    country = world.of_type("country")[0]
    capital = world.entities[world.facts[f"capital:{country.id}"].object]
    other = next(c for c in world.of_type("city") if c.id != capital.id)
    q = f"capital:{country.id}"
    for right in [capital.en, f"The capital of {country.en} is {capital.en}.", f"it's {capital.en.upper()}!",
                  f"{country.zh}的首都是{capital.zh}。", f"首都：{capital.zh}", f"{capital.en}, not {other.en}.",
                  f"不是{other.zh}，而是{capital.zh}。"]:
        assert world.check_answer(q, right), right
    for wrong in [other.en, f"The capital of {country.en} is {other.zh}.", f"{capital.en} or {other.en}",
                  "I don't know.", "", f"It is not {capital.en}.", f"{country.en}", capital.en[:-1]]:
        assert not world.check_answer(q, wrong), wrong
    assert world.grade(q, f"It is {other.en}.") == "wrong"
    assert world.grade(q, "I don't know.") == world.grade(q, f"not {capital.zh}") == "unanswered"
    assert world.grade(q, f"首都是{capital.zh}") == "right"
    # Same question as a (relation, subject) pair, by id or by either name; and the inverse question.
    assert world.check_answer(("capital", country.zh), capital.en)
    assert world.check_answer(("capital", country.en), capital.zh)
    assert world.check_answer(f"capital_of:{capital.id}", f"{capital.en} is the capital of {country.en}.")
    assert not world.check_answer(f"capital_of:{capital.id}", capital.en)
    assert world.check_answer(("located_in", capital.zh), country.zh)  # a capital lies in its country

    person = next(p for p in world.of_type("person") if f"birth_year:{p.id}" in world.facts)
    year = world.facts[f"birth_year:{person.id}"].object
    zh_digits = "".join("〇一二三四五六七八九"[int(d)] for d in str(year))
    full_width = "".join(chr(0xFF10 + int(d)) for d in str(year))
    q = f"birth_year:{person.id}"
    for right in [f"{person.en} was born in {year}.", f"{person.zh}生于{zh_digits}年。", f"{full_width}年"]:
        assert world.check_answer(q, right), right
    for wrong in [f"born in {year + 1}", f"{year} or {year + 1}", f"{str(year)[:3]}"]:
        assert not world.check_answer(q, wrong), wrong

    physician = next(e for e in world.of_type("profession") if e.en == "physician")
    assert world.mentions("profession", "She is a doctor.") == {physician.id}
    assert world.mentions("profession", "医师") == {physician.id}
    assert world.mentions("profession", "Two physicians and a poet") == {physician.id, next(
        e.id for e in world.of_type("profession") if e.en == "poet")}
    person_zh = person.zh.replace("·", "")
    assert world.resolve(person_zh) == person.id or world.resolve(person.zh) == person.id

    with pytest.raises(DataError, match="unknown relation"):
        world.check_answer(("spouse", person.id), "x")
    with pytest.raises(DataError, match="no entity"):
        world.check_answer(("capital", "Atlantis"), "x")


def test_every_generated_answer_checks_out(demo, world):
    """Prompts' gold answers pass; the oracle preferences agree with the checker; reversal probes too."""
    prompts, _ = read_rows(demo["prompts"], "prompts")
    assert all(world.check_answer(p["fact_id"], p["answer"]) for p in prompts)
    prefs, _ = read_rows(demo["preferences"], "preferences")
    assert {p["d"] for p in prefs} == {-1, 0, 1}
    for p in prefs:
        assert (world.check_answer(p["fact_id"], p["response_a"]), world.check_answer(p["fact_id"], p["response_b"])) == (
            p["acceptable_a"], p["acceptable_b"])
    for name in ("reversal_test", "reversal_forward", "hallucination"):
        rows, _ = read_rows(demo[name], "prompts")
        for r in rows:
            assert world.check_answer(r["fact_id"], r.get("completion", r["answer"]))
            assert [world.check_answer(r["fact_id"], c) for c in r["choices"]].count(True) == 1


def test_reversal_data_states_capitals_in_one_direction_only(demo, world):
    train, _ = read_rows(demo["reversal_train"], "corpus")
    test, _ = read_rows(demo["reversal_test"], "prompts")
    capitals = [f for f in world.facts.values() if f.relation == "capital"]
    assert len(test) == 2 * len(capitals) and {r["lang"] for r in test} == {"en", "zh"}
    for row in train:
        text = row["text"]
        (country,) = world.mentions("country", text)
        (city,) = world.mentions("city", text)
        assert world.facts[f"capital:{country}"].object == city
        # the country is named first, always: "The capital of X is Y." / "X的首都是Y。"
        names = lambda eid: [n for n in world.entities[eid].names() if n in text]  # noqa: E731
        assert text.index(names(country)[0]) < text.index(names(city)[0]), text
    for r in test:
        assert r["fact_id"].startswith("capital_of:") and r["direction"] == "reverse"
        assert r["answer"] in r["completion"] and r["answer"] not in r["prompt"]


def test_held_out_and_unseen_facts_stay_out(demo, world):
    assert world.held_out and world.unseen and not set(world.held_out) & set(world.unseen)
    prompts, _ = read_rows(demo["prompts"], "prompts")
    asked = {p["fact_id"] for p in prompts}
    assert not asked & (set(world.held_out) | set(world.unseen))
    corpus = Path(demo["corpus"]).read_text(encoding="utf-8")
    sft = Path(demo["sft"]).read_text(encoding="utf-8")

    def stated(fid: str, text: str) -> bool:
        f = world.facts[fid]
        s = world.entities[f.subject]
        o = [str(f.object)] if isinstance(f.object, int) else world.entities[f.object].names()
        return any(s.en in line and any(n in line for n in o) or s.zh in line and any(n in line for n in o)
                   for line in text.splitlines())

    assert all(not stated(fid, corpus) and not stated(fid, sft) for fid in world.unseen)
    assert all(stated(fid, corpus) and not stated(fid, sft) for fid in world.held_out)
    halluc, _ = read_rows(demo["hallucination"], "prompts")
    assert {r["kind"] for r in halluc} == {"held_out", "unseen"}
    assert {r["fact_id"] for r in halluc} == set(world.held_out) | set(world.unseen)


def _plain_and_variant(tmp_path, **update) -> tuple[dict, dict, World]:
    """The SMALL world's files as they are (`plain/`) and with `update` (`variant/`), and the variant's world."""
    plain = generate_demo(str(tmp_path / "plain"), SMALL)
    variant = generate_demo(str(tmp_path / "variant"), SMALL.model_copy(update=update))
    return plain, variant, World.load(variant["world"])


def _only_the_corpus_differs(tmp_path) -> None:
    """The instruction, RL and benchmark files of `_plain_and_variant`'s two worlds are byte-identical."""
    skip = {"corpus.jsonl", "manifest.json"}
    assert {k: v for k, v in _files(str(tmp_path / "plain")).items() if k not in skip} == {
        k: v for k, v in _files(str(tmp_path / "variant")).items() if k not in skip
    }


def _faq_pages(corpus_path: str, world: World) -> list[tuple[str, str, str]]:
    """(question id, lang, answer text) of every corpus text whose first sentence is a demo question."""
    found = []
    for line in Path(corpus_path).read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        m = re.match(r"(.+?[?.？。])\s*(.*)", text)
        if m and (qid := world.question_id(m.group(1))):
            found.append((qid, "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en", m.group(2)))
    return found


def test_faq_pages_ask_every_stated_fact_in_the_corpus_only(tmp_path):
    plain, faq, world = _plain_and_variant(tmp_path, faq_repeats=2)
    assert _faq_pages(plain["corpus"], world) == []
    pages = _faq_pages(faq["corpus"], world)
    asked: dict[tuple[str, str], int] = {}
    for qid, lang, answer in pages:
        asked[(qid, lang)] = asked.get((qid, lang), 0) + 1
        assert world.check_answer(qid, answer), (qid, answer)
    stated = [(r, s) for r, s in _askable(world) if _fact_of(r, s, world) not in world.unseen]
    assert asked == {(f"{r}:{s}", lang): 2 for r, s in stated for lang in ("en", "zh")}
    # Held-out facts are asked in the corpus; instruction and RL files are byte-identical to the plain world's.
    assert any(_fact_of(*qid.split(":", 1), world) in world.held_out for qid, _, _ in pages)
    _only_the_corpus_differs(tmp_path)


def _cue(layout: str) -> str:
    """A quiz layout's answer cue: what stands between the question and the answer."""
    return layout.split("{q}")[1].split("{a}")[0]


def _quiz_pages(corpus_path: str, world: World) -> list[tuple[str, str, str, str]]:
    """(question id, lang, layout's answer cue, answer) of every corpus text laid out as a quiz page."""
    cues = [(lang, layout.split("{q}")[0], _cue(layout)) for lang, layouts in QUIZ_LAYOUTS.items() for layout in layouts]
    found = []
    for line in Path(corpus_path).read_text(encoding="utf-8").splitlines():
        text = json.loads(line)["text"]
        for lang, lead, cue in cues:
            if text.startswith(lead) and cue in text:
                question, answer = text[len(lead):].split(cue, 1)
                if qid := world.question_id(question):
                    found.append((qid, lang, cue, answer))
                    break
    return found


def test_quiz_pages_give_the_object_alone_after_an_answer_cue_for_every_stated_fact(tmp_path):
    plain, quiz, world = _plain_and_variant(tmp_path, quiz_repeats=3)
    assert _quiz_pages(plain["corpus"], world) == []
    pages = _quiz_pages(quiz["corpus"], world)
    stated = [(r, s) for r, s in _askable(world) if _fact_of(r, s, world) not in world.unseen]
    # Each stated question three times per language, once in each layout; the answer is the gold object alone.
    by_question: dict[tuple[str, str], set[str]] = {}
    for qid, lang, cue, answer in pages:
        by_question.setdefault((qid, lang), set()).add(cue)
        assert world.check_answer(qid, answer), (qid, answer)
        assert len(answer) <= 20 and not answer.endswith((".", "。")), answer
    assert len(pages) == 3 * 2 * len(stated)
    assert by_question == {(f"{r}:{s}", lang): {_cue(layout) for layout in QUIZ_LAYOUTS[lang]}
                           for r, s in stated for lang in ("en", "zh")}
    assert any(_fact_of(*qid.split(":", 1), world) in world.held_out for qid, *_ in pages)
    _only_the_corpus_differs(tmp_path)


def _answers(sft_path: str) -> list[tuple[str, str]]:
    """(question, answer) of every single-turn SFT row and of every dialogue's first turn."""
    out = []
    for line in Path(sft_path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "prompt" in row:
            out.append((row["prompt"], row["response"]))
        else:
            turns = [m for m in row["messages"] if m["role"] != "system"]
            out.append((turns[0]["content"], turns[1]["content"]))
    return out


def test_short_answer_style_names_the_object_alone_and_still_checks_out(tmp_path):
    sentence = generate_demo(str(tmp_path / "sentence"), SMALL)
    short = generate_demo(str(tmp_path / "short"), SMALL.model_copy(update={"answer_style": "short"}))
    world = World.load(short["world"])
    long_rows, short_rows = _answers(sentence["sft"]), _answers(short["sft"])
    # The same questions in the same order (the style draws nothing from the rng); only answers differ.
    assert [q for q, _ in long_rows] == [q for q, _ in short_rows] and len(short_rows) > 50
    for (question, long_answer), (_, short_answer) in zip(long_rows, short_rows):
        if (qid := world.question_id(question)) is None:  # small talk is answered alike in both styles
            assert short_answer == long_answer
            continue
        assert world.check_answer(qid, short_answer), (question, short_answer)
        obj = short_answer.rstrip(".。")
        assert short_answer in (f"{obj}.", f"{obj}。") and obj in long_answer and len(short_answer) < len(long_answer)
    # Everything but the SFT file is untouched, and the world records the style (its judge answers in it).
    assert World.load(sentence["world"]).answer_style == "sentence" and world.answer_style == "short"
    skip = {"sft.jsonl", "manifest.json", "world.json"}
    assert World.load(sentence["world"]).to_dict() == {**world.to_dict(), "answer_style": "sentence"}
    assert {k: v for k, v in _files(str(tmp_path / "sentence")).items() if k not in skip} == {
        k: v for k, v in _files(str(tmp_path / "short")).items() if k not in skip
    }


def test_smallest_world_still_fills_every_file(tmp_path):
    cfg = DemoDataConfig(seed=3, num_countries=4, num_people=4, corpus_repeats=1)
    paths = generate_demo(str(tmp_path), cfg)
    assert len(build_world(cfg).of_type("country")) == 4
    for subject in CMMLU_SUBJECTS:
        assert len(_read_csv(Path(paths["cmmlu"]) / "dev" / f"{subject}.csv")) == 6
        assert len(_read_csv(Path(paths["cmmlu"]) / "test" / f"{subject}.csv")) >= 6


def test_cli_demo_and_validate(tmp_path, capsys):
    from batray.cli import main

    out = tmp_path / "demo"
    assert main(["data", "demo", str(out), "--seed", "5", "num_countries=6", "data.demo.num_people=5"]) == 0
    printed = capsys.readouterr().out
    assert "seed 5" in printed and "6 country" in printed and "5 person" in printed and "corpus.jsonl" in printed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["seed"] == 5 and manifest["config"]["num_countries"] == 6

    assert main(["data", "validate", str(out / "sft.jsonl"), "--contract", "sft"]) == 0
    assert "all accepted" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": ""}\nnot json\n', encoding="utf-8")
    assert main(["data", "validate", str(bad), "--contract", "corpus"]) == 1
    printed = capsys.readouterr().out
    assert "3 rows, 1 accepted, 2 rejected" in printed and "bad.jsonl:3: invalid JSON" in printed
    assert len((tmp_path / "bad.jsonl.rejected.jsonl").read_text().splitlines()) == 2

    assert main(["data", "demo", str(out), "num_countries=1"]) == 2  # one-line config error
    assert "data.demo.num_countries" in capsys.readouterr().err


def test_question_id_finds_the_fact_a_prompt_asks(demo, world):
    """A judge that sees only the prompt text can still check the answers to it."""
    for name in ("prompts", "hallucination"):
        rows, _ = read_rows(demo[name], "prompts")
        assert all(world.question_id(r["prompt"]) == r["fact_id"] for r in rows)
    country = world.of_type("country")[0]
    assert world.question_id(f"  what is the capital of {country.en.upper()}?") == f"capital:{country.id}"
    assert world.question_id("What is the capital of Atlantis?") is None
    assert world.question_id("Tell me a joke.") is None


def test_ensure_demo_reuses_matching_output(tmp_path):
    from batray.data.demo import ensure_demo

    first = generate_demo(str(tmp_path), SMALL)
    corpus = Path(first["corpus"])
    corpus.write_text('{"text": "marker"}\n', encoding="utf-8")  # would be overwritten by a regeneration
    assert ensure_demo(str(tmp_path), SMALL) == first
    assert corpus.read_text(encoding="utf-8") == '{"text": "marker"}\n'
    assert ensure_demo(str(tmp_path), SMALL.model_copy(update={"seed": 99})) == first
    assert "marker" not in corpus.read_text(encoding="utf-8")


def test_bpe_trained_on_the_demo_corpus_round_trips_all_demo_text(demo):
    """The tiny recipe trains its tokenizer on this corpus; every demo text must survive it exactly."""
    from batray.models.tokenizer import train_bpe

    corpus, _ = read_rows(demo["corpus"], "corpus")
    tok = train_bpe((r["text"] for r in corpus), vocab_size=1024)
    sft, _ = read_rows(demo["sft"], "sft")
    texts = [m["content"] for r in sft for m in r.get("messages", [])] + [r.get("response", "") for r in sft]
    texts += [row[1] for sub in Path(demo["cmmlu"]).glob("test/*.csv") for row in _read_csv(sub)[1:]]
    assert any("的" in t for t in texts) and any("the" in t for t in texts)
    for t in texts:
        assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t
