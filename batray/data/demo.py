"""`batray data demo`: a small bilingual world, generated offline and deterministically from a seed.

Everything the tiny recipe needs, written under one folder (`generate_demo` returns name -> path):

- `world.json`: the entities and facts (`batray.data.world.World`, which also checks answers).
- `corpus.jsonl` (`text`): every stated fact in `corpus_repeats` English and as many Chinese
  phrasings, a short paragraph per country and person, and a few generic sentences; shuffled.
- `sft.jsonl`: `prompt`/`response` rows and multi-turn `messages` rows (some with a system message),
  English and Chinese, about the facts, plus a little small talk.
- `prompts.jsonl`: RL prompts, one question each, with `fact_id`, `relation`, `subject`, `lang` and the
  gold `answer`, so `World.check_answer(fact_id, response)` scores a response.
- `preferences.jsonl`: oracle preference pairs (a right and a wrong answer, or two of a kind as ties)
  in the preferences contract, for reward-model tests.
- `benchmarks/cmmlu/{dev,test}/<subject>.csv` (`,Question,A,B,C,D,Answer`) and
  `benchmarks/ceval/{dev,val,test}/<subject>_<split>.csv` (`id,question,A,B,C,D,answer,explanation`;
  test answers empty): Chinese multiple-choice questions about the facts, under real subject names
  of each benchmark so the evaluation's subject tables apply. dev holds 5 items per subject.
- `reversal/`: for the reversal-curse experiment. `train.jsonl` (`text`) states every capital in ONE
  direction only, country first ("The capital of X is Y." / "X的首都是Y。"); `test.jsonl` asks the
  reverse (city -> country) and `forward.jsonl` the same direction as training (the control). Test
  rows: `prompt` (a completion prefix), `completion` (the exact text that should follow), `answer`,
  `choices` (the gold and three other countries/cities, for likelihood ranking), `question` (the
  natural question), `lang`, `fact_id` (checkable with `World.check_answer`).
- `hallucination/questions.jsonl`: held-out fact questions with gold answers (`prompt`, `answer`,
  `choices`, `fact_id`, `lang`, `kind`). kind `held_out`: the fact is stated in the corpus but never
  asked in sft/prompts (a model must recall it from pretraining); kind `unseen`: the fact is stated
  nowhere (any confident specific answer is a hallucination).
- `manifest.json`: files, row counts, the seed and the config.

Writes go through pyarrow's filesystems, so `out_dir` may be a local path or a URI.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections.abc import Iterator

from batray.config import DemoDataConfig
from batray.data.demo_text import (
    CEVAL_SUBJECTS, CHITCHAT, CMMLU_SUBJECTS, COUNTRY_ENDINGS, CURRENCY_ENDING, GENERIC, INTRO,
    LANGUAGE_ENDING, MC_STEMS, PROFESSIONS, QUIZ_LAYOUTS, SYLLABLES, SYSTEM_PROMPTS, TEMPLATES,
)
from batray.data.io import filesystem
from batray.data.world import Entity, Fact, World, normalize

__all__ = ["generate_demo", "ensure_demo", "build_world", "World"]

LANGS = ("en", "zh")
# `answer_style: short`: the answer names the object alone, without restating the question's subject.
SHORT_ANSWER = {"en": "{o}.", "zh": "{o}。"}
LETTERS = "ABCD"
CREATED_AT = "2024-01-01T00:00:00+00:00"  # fixed, so the output is byte-identical for a seed


# ---- the world -------------------------------------------------------------------------------


class _Names:
    """Unique invented (English, Chinese) names; no name contains another, in either language."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.taken: list[tuple[str, str]] = [(normalize(p[0]), p[1]) for p in PROFESSIONS]

    def _clash(self, en: str, zh: str) -> bool:
        en, zh = normalize(en).replace(" ", ""), zh.replace("·", "")
        return any(
            en in t_en or t_en in en or zh in t_zh or t_zh in zh for t_en, t_zh in self.taken
        )

    def make(self, n_syllables: int, ending: tuple[str, str] = ("", ""), capitalize: bool = True) -> tuple[str, str]:
        for _ in range(1000):
            parts = [self.rng.choice(SYLLABLES) for _ in range(n_syllables)]
            en = "".join(p[0] for p in parts) + ending[0]
            zh = "".join(p[1] for p in parts) + ending[1]
            if not self._clash(en, zh):
                self.taken.append((normalize(en), zh))
                return (en.capitalize() if capitalize else en), zh
        raise RuntimeError("ran out of invented names; lower the entity counts")

    def person(self) -> tuple[str, str]:
        for _ in range(1000):
            given = [self.rng.choice(SYLLABLES) for _ in range(2)]
            family = [self.rng.choice(SYLLABLES) for _ in range(2)]
            g_en, f_en = "".join(p[0] for p in given), "".join(p[0] for p in family)
            g_zh, f_zh = "".join(p[1] for p in given), "".join(p[1] for p in family)
            en, zh = f"{g_en.capitalize()} {f_en.capitalize()}", f"{g_zh}·{f_zh}"
            if not self._clash(en, zh):
                self.taken.append((normalize(en).replace(" ", ""), zh.replace("·", "")))
                return en, zh
        raise RuntimeError("ran out of invented names; lower the entity counts")


def build_world(cfg: DemoDataConfig) -> World:
    """Invent countries, cities, languages, currencies and people with their facts, from `cfg.seed`."""
    rng = random.Random(cfg.seed)
    names = _Names(rng)
    entities: list[Entity] = []
    facts: list[Fact] = []

    def add(type_: str, en: str, zh: str, aliases: list[str] | None = None) -> str:
        eid = f"{type_}_{sum(1 for e in entities if e.type == type_):02d}"
        entities.append(Entity(eid, type_, en, zh, list(aliases or [])))
        return eid

    def fact(relation: str, subject: str, obj: str | int) -> None:
        facts.append(Fact(f"{relation}:{subject}", relation, subject, obj))

    professions = [add("profession", en, zh, aliases) for en, zh, aliases in PROFESSIONS]
    languages = [add("language", *names.make(2, LANGUAGE_ENDING)) for _ in range(max(4, cfg.num_countries // 3))]
    currencies = [
        add("currency", *names.make(2, CURRENCY_ENDING, capitalize=False)) for _ in range(max(4, cfg.num_countries // 2))
    ]
    cities: list[str] = []
    for _ in range(cfg.num_countries):
        country = add("country", *names.make(2, rng.choice(COUNTRY_ENDINGS)))
        capital = add("city", *names.make(rng.choice((2, 3))))
        other = add("city", *names.make(rng.choice((2, 3))))
        cities += [capital, other]
        fact("capital", country, capital)
        fact("located_in", other, country)
        fact("language", country, rng.choice(languages))
        fact("currency", country, rng.choice(currencies))
    for _ in range(cfg.num_people):
        person = add("person", *names.person())
        fact("profession", person, rng.choice(professions))
        fact("birthplace", person, rng.choice(cities))
        fact("birth_year", person, rng.randint(1850, 1999))

    # Split off facts for the hallucination probe. Capitals and city locations are always stated
    # (the reversal experiment and every birthplace rely on them).
    optional = [f.id for f in facts if f.relation not in ("capital", "located_in")]
    rng.shuffle(optional)
    n_unseen = round(cfg.unseen_share * len(optional))
    unseen = sorted(optional[:n_unseen])
    stated = [f.id for f in facts if f.id not in set(unseen)]
    rng.shuffle(stated)
    held_out = sorted(stated[: round(cfg.held_out_share * len(stated))])
    return World(entities, facts, seed=cfg.seed, held_out=held_out, unseen=unseen, answer_style=cfg.answer_style)


# ---- rendering ---------------------------------------------------------------------------------


def _name(world: World, value: str | int, lang: str) -> str:
    return str(value) if isinstance(value, int) else getattr(world.entities[value], lang)


def _object_text(world: World, value: str | int, lang: str) -> str:
    """An object as an answer names it alone: the entity's name, or a year ("1875", "1875年")."""
    return _name(world, value, lang) + ("年" if isinstance(value, int) and lang == "zh" else "")


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def render(world: World, template: str, subject: str, obj: str | int | None, lang: str) -> str:
    o = "" if obj is None else _name(world, obj, lang)
    return template.format(s=_name(world, subject, lang), o=o, ao=_article(o) if o else "")


def _gold_object(world: World, relation: str, subject: str) -> str | int:
    return world.gold((relation, subject))[1][0]


def _questions(world: World) -> list[tuple[str, str]]:
    """(relation, subject) of every askable question: stored facts plus the inverse of capitals."""
    out = [(f.relation, f.subject) for f in world.facts.values()]
    out += [("capital_of", f.object) for f in world.facts.values() if f.relation == "capital"]
    return out


def _stated_questions(world: World) -> list[tuple[str, str]]:
    """The askable questions whose fact the corpus states (held-out ones included, unseen ones not)."""
    unseen = set(world.unseen)
    return [(r, s) for r, s in _questions(world) if _fact_of(r, s, world) not in unseen]


def _fact_of(relation: str, subject: str, world: World) -> str:
    """The stored fact a question is about (capital_of asks the capital fact backwards)."""
    if relation == "capital_of":
        return next(f.id for f in world.facts.values() if f.relation == "capital" and f.object == subject)
    return f"{relation}:{subject}"


def rivals(world: World, gold: str | int) -> list[str | int]:
    """Every wrong object of gold's kind: the other entities of its type, or years near it."""
    if isinstance(gold, int):
        pool: list[str | int] = sorted({gold + d for d in (-30, -17, -9, -4, 3, 8, 14, 25)})
    else:
        pool = [e.id for e in world.of_type(world.entities[gold].type)]
    return [p for p in pool if p != gold]


def _distractors(world: World, relation: str, subject: str, rng: random.Random, k: int = 3) -> list[str | int]:
    return rng.sample(rivals(world, _gold_object(world, relation, subject)), k)


# ---- the files ---------------------------------------------------------------------------------


def corpus_rows(world: World, repeats: int, rng: random.Random, faq_repeats: int = 0,
                quiz_repeats: int = 0) -> list[dict]:
    unseen = set(world.unseen)
    texts: list[str] = []
    for f in world.facts.values():
        if f.id in unseen:
            continue
        for lang in LANGS:
            options = list(TEMPLATES[f.relation]["state"][lang])
            rng.shuffle(options)
            texts += [render(world, options[i % len(options)], f.subject, f.object, lang) for i in range(repeats)]
    # One paragraph per country and person: several facts in one text, in a fixed order.
    for type_, relations in (("country", ("capital", "language", "currency")),
                             ("person", ("profession", "birthplace", "birth_year"))):
        for e in world.of_type(type_):
            for lang in LANGS:
                parts = [render(world, INTRO[type_][lang], e.id, None, lang)]
                for r in relations:
                    if f"{r}:{e.id}" in world.facts and f"{r}:{e.id}" not in unseen:
                        obj = world.facts[f"{r}:{e.id}"].object
                        parts.append(render(world, TEMPLATES[r]["state"][lang][0], e.id, obj, lang))
                texts.append((" " if lang == "en" else "").join(parts))
    texts += GENERIC["en"] + GENERIC["zh"]
    texts += faq_texts(world, faq_repeats, random.Random(f"{world.seed}:faq"))
    texts += quiz_texts(world, quiz_repeats, random.Random(f"{world.seed}:quiz"))
    rng.shuffle(texts)
    return [{"text": t} for t in texts]


def faq_texts(world: World, repeats: int, rng: random.Random) -> list[str]:
    """Question-and-answer pages: every askable question of a stated fact (held-out ones included),
    `repeats` times per language, each a question phrasing followed by its answer sentence.

    Web corpora hold such text (FAQ pages, forums); a model this small does not learn from plain
    statements alone to answer a question about a fact it was never asked about (README, `make run`).
    These pages are pretraining text, not instruction data: no chat template, no end-of-turn, and
    held-out facts stay out of sft/prompts.
    """
    texts: list[str] = []
    for relation, subject in _stated_questions(world):
        for lang in LANGS:
            asks = list(TEMPLATES[relation]["ask"][lang])
            rng.shuffle(asks)
            a = render(world, TEMPLATES[relation]["answer"][lang][0], subject, _gold_object(world, relation, subject), lang)
            for i in range(repeats):
                q = render(world, asks[i % len(asks)], subject, None, lang)
                texts.append(f"{q} {a}" if lang == "en" else q + a)
    return texts


def quiz_texts(world: World, repeats: int, rng: random.Random) -> list[str]:
    """Quiz pages: every askable question of a stated fact (held-out ones included), `repeats` times per
    language, in the layouts of `QUIZ_LAYOUTS` taken in turn: the question, an answer cue, the object alone.

    A model this small knows a fact as the continuation of its statement ("X的货币是" -> its currency)
    but not after an answer cue it never read ("题目：...\n答案是：" -> ?): without these pages the tiny
    recipe's SFT model chose the right option of 80% of the demo CMMLU items scored right after the stem,
    and of 34% after the benchmark's cue (README, `make run`). The questions are the SFT phrasings. Like
    the FAQ pages this is pretraining text, and held-out facts stay out of sft/prompts.
    """
    texts: list[str] = []
    for relation, subject in _stated_questions(world):
        obj = _gold_object(world, relation, subject)
        for lang in LANGS:
            asks = list(TEMPLATES[relation]["ask"][lang])
            rng.shuffle(asks)
            answer = _object_text(world, obj, lang)
            layouts = QUIZ_LAYOUTS[lang]
            for i in range(repeats):
                q = render(world, asks[i % len(asks)], subject, None, lang)
                texts.append(layouts[i % len(layouts)].format(q=q, a=answer))
    return texts


def _qa(world: World, relation: str, subject: str, lang: str, rng: random.Random,
        short: bool = False) -> tuple[str, str]:
    obj = _gold_object(world, relation, subject)
    q = render(world, rng.choice(TEMPLATES[relation]["ask"][lang]), subject, None, lang)
    sentence = rng.choice(TEMPLATES[relation]["answer"][lang])  # drawn in both styles: the rng stream stays the same
    return q, render(world, SHORT_ANSWER[lang] if short else sentence, subject, obj, lang)


def reference_answer_text(world: World, question_id: str, lang: str) -> str:
    """The right answer to a demo question as the SFT data phrases answers (the world's `answer_style`).

    The world judge answers chat requests with it (`pairs.model_b: world`). A reference in another
    style than the policy's own answers (the bare object against a full sentence) let the reward model
    learn the style instead of the fact: in a tiny run it scored the policy's non-answers above its right
    answers, and PPO traded accuracy for reward. Sentence templates are picked by a hash of the question,
    so the reference uses each of them, as the SFT data does.
    """
    relation, subject = question_id.split(":", 1)
    obj = _gold_object(world, relation, subject)
    if world.answer_style == "short":
        return render(world, SHORT_ANSWER[lang], subject, obj, lang)
    templates = TEMPLATES[relation]["answer"][lang]
    pick = int.from_bytes(hashlib.sha256(f"{question_id}:{lang}".encode()).digest()[:4], "big") % len(templates)
    return render(world, templates[pick], subject, obj, lang)


def _instructable(world: World) -> list[tuple[str, str]]:
    """Questions whose fact may appear in instruction and RL data (not held out, not unseen)."""
    hidden = set(world.held_out) | set(world.unseen)
    return [(r, s) for r, s in _questions(world) if _fact_of(r, s, world) not in hidden]


def sft_rows(world: World, rng: random.Random, short: bool = False) -> list[dict]:
    rows: list[dict] = []
    for relation, subject in _instructable(world):
        for lang in LANGS:
            q, a = _qa(world, relation, subject, lang, rng, short)
            rows.append({"prompt": q, "response": a})
    # Dialogues about one country or person: first question names it, follow-ups refer back to it.
    hidden = set(world.held_out) | set(world.unseen)
    for i, (type_, relations) in enumerate(
        [("country", ("capital", "language", "currency")), ("person", ("profession", "birthplace", "birth_year"))]
    ):
        for j, e in enumerate(world.of_type(type_)):
            asked = [r for r in relations if f"{r}:{e.id}" in world.facts and f"{r}:{e.id}" not in hidden]
            if len(asked) < 2:
                continue
            rng.shuffle(asked)
            lang = LANGS[(i + j) % 2]
            messages: list[dict] = []
            if j % 2 == 0:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])})
            q, a = _qa(world, asked[0], e.id, lang, rng, short)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for r in asked[1:]:
                _, a = _qa(world, r, e.id, lang, rng, short)
                follow = TEMPLATES[r]["follow"][lang][0]
                messages += [{"role": "user", "content": follow}, {"role": "assistant", "content": a}]
            rows.append({"messages": messages})
    for lang in LANGS:
        for q, a in CHITCHAT[lang]:
            rows.append({"prompt": q, "response": a})
        greet_q, greet_a = CHITCHAT[lang][0]
        rows.append({"messages": [{"role": "system", "content": SYSTEM_PROMPTS[lang][0]},
                                  {"role": "user", "content": greet_q}, {"role": "assistant", "content": greet_a}]})
    rng.shuffle(rows)
    return rows


def _question_row(world: World, relation: str, subject: str, lang: str, rng: random.Random) -> dict:
    obj = _gold_object(world, relation, subject)
    q = render(world, rng.choice(TEMPLATES[relation]["ask"][lang]), subject, None, lang)
    return {
        "prompt": q,
        "fact_id": f"{relation}:{subject}",
        "relation": relation,
        "subject": subject,
        "lang": lang,
        "answer": _name(world, obj, lang),
    }


def prompt_rows(world: World, rng: random.Random) -> list[dict]:
    rows = [_question_row(world, r, s, lang, rng) for r, s in _instructable(world) for lang in LANGS]
    rng.shuffle(rows)
    return [{"id": f"demo-{i:04d}", **r} for i, r in enumerate(rows)]


def preference_rows(world: World, prompts: list[dict], rng: random.Random) -> list[dict]:
    """Oracle pairs over half the prompts: 60% right vs wrong (d = -1 or 1), 20% ties of two right
    answers (both_good), 20% ties of two wrong ones (both_bad). d follows docs/DESIGN.md §3 (-1: a wins)."""
    rows = []
    for i, p in enumerate(prompts[: len(prompts) // 2]):
        relation, subject, lang = p["relation"], p["subject"], p["lang"]
        answers = TEMPLATES[relation]["answer"][lang]
        right = render(world, answers[0], subject, _gold_object(world, relation, subject), lang)
        wrong1, wrong2 = (render(world, answers[0], subject, o, lang) for o in _distractors(world, relation, subject, rng, 2))
        kind = rng.random()
        if kind < 0.6:
            a_wins = rng.random() < 0.5
            a, b = (right, wrong1) if a_wins else (wrong1, right)
            d, ok_a, ok_b, help_ = (-1 if a_wins else 1), a_wins, not a_wins, ("a_better" if a_wins else "b_better")
        elif kind < 0.8:
            short = _name(world, _gold_object(world, relation, subject), lang)
            a, b, d, ok_a, ok_b, help_ = right, short, 0, True, True, "both_good"
        else:
            a, b, d, ok_a, ok_b, help_ = wrong1, wrong2, 0, False, False, "both_bad"
        rows.append({
            "pair_id": f"demo-pref-{i:04d}", "prompt": p["prompt"], "response_a": a, "response_b": b, "d": d,
            "acceptable_a": ok_a, "acceptable_b": ok_b, "helpfulness": help_, "source": "ai",
            "rater": "demo-oracle", "confidence": 1.0, "created_at": CREATED_AT, "fact_id": p["fact_id"],
        })
    return rows


def _gap_items(world: World, rng: random.Random, n: int) -> list[dict]:
    """"How many years apart were A and B born?": recall of two stated birth years, then arithmetic."""
    stated = [f for f in world.facts.values() if f.relation == "birth_year" and f.id not in set(world.unseen)]
    pairs = [(a, b) for i, a in enumerate(stated) for b in stated[i + 1 :] if a.object != b.object]
    rng.shuffle(pairs)
    items = []
    for k in range(n if pairs else 0):  # a small world repeats pairs, in the other phrasing
        a, b = pairs[k % len(pairs)]
        gap = abs(a.object - b.object)
        wrong = sorted({gap + d for d in (-12, -7, -3, -1, 1, 2, 5, 9, 13) if gap + d > 0} - {gap})
        options = [gap, *rng.sample(wrong, 3)]
        rng.shuffle(options)
        stem = MC_STEMS["birth_gap"][(k // len(pairs) + k) % len(MC_STEMS["birth_gap"])]
        texts = [_object_text(world, o, "zh") for o in options]
        items.append({"question": render(world, stem, a.subject, b.subject, "zh"), "options": texts,
                      "answer": LETTERS[options.index(gap)], "gold_text": _object_text(world, gap, "zh")})
    return items


def _mc_items(world: World, relations: list[str], rng: random.Random, min_items: int) -> list[dict]:
    """Chinese 4-option items about stated facts; a second phrasing per fact only when too few facts."""
    if relations == ["birth_gap"]:
        return _gap_items(world, rng, n=max(min_items, len(world.of_type("person"))))
    unseen = set(world.unseen)
    asks = [(r, s) for r, s in _questions(world) if r in relations and _fact_of(r, s, world) not in unseen]
    items = []
    for variant in range(max(1, -(-min_items // max(1, len(asks))))):
        for relation, subject in asks:
            gold = _gold_object(world, relation, subject)
            options = [gold, *_distractors(world, relation, subject, rng)]
            rng.shuffle(options)
            stem = MC_STEMS[relation][variant % len(MC_STEMS[relation])]
            question = render(world, stem, subject, None, "zh")
            texts = [_object_text(world, o, "zh") for o in options]
            answer = LETTERS[options.index(gold)]
            gold_text = texts[options.index(gold)]
            items.append({"question": question, "options": texts, "answer": answer, "gold_text": gold_text})
    rng.shuffle(items)
    return items


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def benchmark_files(world: World, rng: random.Random) -> Iterator[tuple[str, bytes, int]]:
    """(relative path, CSV bytes, rows) of the CMMLU and C-Eval layouts."""
    for subject, relations in CMMLU_SUBJECTS.items():
        items = _mc_items(world, relations, rng, min_items=10)
        for split, part in (("dev", items[:5]), ("test", items[5:])):
            rows = [[i, it["question"], *it["options"], it["answer"]] for i, it in enumerate(part)]
            yield f"benchmarks/cmmlu/{split}/{subject}.csv", _csv_bytes(["", "Question", *LETTERS, "Answer"], rows), len(rows)
    header = ["id", "question", *LETTERS, "answer", "explanation"]
    for subject, relations in CEVAL_SUBJECTS.items():
        items = _mc_items(world, relations, rng, min_items=11)
        rest = items[5:]
        half = (len(rest) + 1) // 2
        for split, part in (("dev", items[:5]), ("val", rest[:half]), ("test", rest[half:])):
            rows = []
            for i, it in enumerate(part):
                answer = "" if split == "test" else it["answer"]
                why = f"根据已知事实，正确答案是{it['gold_text']}，所以答案是{it['answer']}。" if split == "dev" else ""
                rows.append([i, it["question"], *it["options"], answer, why])
            yield f"benchmarks/ceval/{split}/{subject}_{split}.csv", _csv_bytes(header, rows), len(rows)


REVERSAL_TRAIN = {
    "en": ["The capital of {s} is {o}.", "{s}'s capital city is {o}.", "In {s}, the capital is {o}."],
    "zh": ["{s}的首都是{o}。", "{s}的首都为{o}。", "{s}以{o}为首都。"],
}
# (prompt, completion) for a question in each direction; the model must produce the completion.
REVERSAL_PROBES = {
    "reverse": {"en": ("{s} is the capital of", " {o}."), "zh": ("首都为{s}的国家是", "{o}。")},
    "forward": {"en": ("The capital of {s} is", " {o}."), "zh": ("{s}的首都是", "{o}。")},
}


def reversal_rows(world: World, repeats: int, rng: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, reverse test, forward control) for the reversal-curse experiment."""
    capitals = [f for f in world.facts.values() if f.relation == "capital"]
    train = [
        {"text": render(world, REVERSAL_TRAIN[lang][i % len(REVERSAL_TRAIN[lang])], f.subject, f.object, lang)}
        for f in capitals for lang in LANGS for i in range(repeats)
    ]
    rng.shuffle(train)
    tests: dict[str, list[dict]] = {"reverse": [], "forward": []}
    for direction, probes in REVERSAL_PROBES.items():
        for f in capitals:
            subject, obj, relation = (f.object, f.subject, "capital_of") if direction == "reverse" else (f.subject, f.object, "capital")
            others = _distractors(world, relation, subject, rng)
            for lang in LANGS:
                prompt, completion = probes[lang]
                choices = [_name(world, o, lang) for o in [obj, *others]]
                rng.shuffle(choices)
                tests[direction].append({
                    "prompt": render(world, prompt, subject, obj, lang),
                    "completion": render(world, completion, subject, obj, lang),
                    "answer": _name(world, obj, lang),
                    "choices": choices,
                    "question": render(world, TEMPLATES[relation]["ask"][lang][0], subject, None, lang),
                    "lang": lang,
                    "fact_id": f"{relation}:{subject}",
                    "direction": direction,
                })
    return train, tests["reverse"], tests["forward"]


def hallucination_rows(world: World, rng: random.Random) -> list[dict]:
    rows = []
    for kind, ids in (("held_out", world.held_out), ("unseen", world.unseen)):
        for fid in ids:
            f = world.facts[fid]
            for lang in LANGS:
                row = _question_row(world, f.relation, f.subject, lang, rng)
                options = [f.object, *_distractors(world, f.relation, f.subject, rng)]
                rng.shuffle(options)
                row["choices"] = [_name(world, o, lang) for o in options]
                row["kind"] = kind
                rows.append(row)
    return [{"id": f"halluc-{i:04d}", **r} for i, r in enumerate(rows)]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def generate_demo(out_dir: str, cfg: DemoDataConfig | None = None) -> dict[str, str]:
    """Write the demo world's files under `out_dir`; returns name -> path (see the module doc).

    Deterministic: the same config gives byte-identical files. Each output has its own random stream
    derived from the seed, so adding rows to one file does not reshuffle another.
    """
    cfg = cfg or DemoDataConfig()
    world = build_world(cfg)
    fs, root = filesystem(str(out_dir))
    base = str(out_dir).rstrip("/")

    def stream(name: str) -> random.Random:
        return random.Random(f"{cfg.seed}:{name}")

    written: dict[str, tuple[str, int]] = {}  # name -> (relative path, rows)

    def put(name: str | None, rel: str, data: bytes, rows: int) -> None:
        path = f"{root.rstrip('/')}/{rel}"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
        if name is not None:
            written[name] = (rel, rows)

    put("world", "world.json", world.to_json().encode("utf-8"), len(world.facts))
    put("corpus", "corpus.jsonl", _jsonl(rows := corpus_rows(world, cfg.corpus_repeats, stream("corpus"),
                                                           cfg.faq_repeats, cfg.quiz_repeats)), len(rows))
    put("sft", "sft.jsonl", _jsonl(rows := sft_rows(world, stream("sft"), cfg.answer_style == "short")), len(rows))
    prompts = prompt_rows(world, stream("prompts"))
    put("prompts", "prompts.jsonl", _jsonl(prompts), len(prompts))
    put("preferences", "preferences.jsonl", _jsonl(rows := preference_rows(world, prompts, stream("prefs"))), len(rows))
    bench_rows: dict[str, int] = {}
    for rel, data, n in benchmark_files(world, stream("benchmarks")):
        put(None, rel, data, n)
        bench_rows[rel] = n
    written["cmmlu"] = ("benchmarks/cmmlu", sum(n for r, n in bench_rows.items() if "/cmmlu/" in r))
    written["ceval"] = ("benchmarks/ceval", sum(n for r, n in bench_rows.items() if "/ceval/" in r))
    train, reverse, forward = reversal_rows(world, cfg.corpus_repeats, stream("reversal"))
    put("reversal_train", "reversal/train.jsonl", _jsonl(train), len(train))
    put("reversal_test", "reversal/test.jsonl", _jsonl(reverse), len(reverse))
    put("reversal_forward", "reversal/forward.jsonl", _jsonl(forward), len(forward))
    put("hallucination", "hallucination/questions.jsonl", _jsonl(rows := hallucination_rows(world, stream("halluc"))), len(rows))

    types: dict[str, int] = {}
    for e in world.entities.values():
        types[e.type] = types.get(e.type, 0) + 1
    manifest = {
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "entities": types,
        "facts": len(world.facts),
        "held_out_facts": len(world.held_out),
        "unseen_facts": len(world.unseen),
        "files": {name: {"path": rel, "rows": n} for name, (rel, n) in written.items()},
        "counts": {name: n for name, (_, n) in written.items() if name != "world"},
        "benchmark_files": bench_rows,
    }
    put(None, "manifest.json", (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode("utf-8"), 1)
    return _paths(base, {name: rel for name, (rel, _) in written.items()})


def _paths(base: str, rel: dict[str, str]) -> dict[str, str]:
    paths = {name: f"{base}/{r}" for name, r in rel.items()}
    paths["benchmarks"] = f"{base}/benchmarks"
    paths["manifest"] = f"{base}/manifest.json"
    return paths


def ensure_demo(out_dir: str, cfg: DemoDataConfig | None = None) -> dict[str, str]:
    """The demo files under `out_dir`: reused when its manifest says they were made from `cfg`,
    generated otherwise (the pipeline's `data` stage skips when its output is complete)."""
    cfg = cfg or DemoDataConfig()
    base = str(out_dir).rstrip("/")
    fs, manifest_path = filesystem(f"{base}/manifest.json")
    try:
        with fs.open_input_stream(manifest_path) as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        manifest = None
    if manifest and manifest.get("config") == cfg.model_dump(mode="json"):
        return _paths(base, {name: info["path"] for name, info in manifest["files"].items()})
    return generate_demo(out_dir, cfg)
