"""The demo world's facts and a checker that tells right answers from wrong ones, in English or Chinese.

A `World` holds invented entities (countries, cities, languages, currencies, people, professions)
and facts `relation(subject) = object`. It is saved as `world.json` by `batray data demo` and loaded
by whatever needs to judge an answer: the AI judge, PPO's fact-checker reward, the benchmarks and the
reversal / hallucination experiments.

A question is named by a fact id (`"capital:country_03"`), an inverse id (`"capital_of:city_07"`:
which country has this capital) or a `(relation, subject)` pair whose subject is an entity id or
any of its names. `check_answer` is tolerant to phrasing: an answer is right when it mentions the
gold object (any of its names or aliases, either language) and mentions no other candidate of the
same kind, except after a negation ("not X", "不是X"). Years may be written in digits or Chinese
numerals. `grade` tells a wrong answer (a confident error) from no answer; `question_id` maps a
prompt's text back to the fact it asks, for judges that only see text.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from batray.errors import DataError

# relation -> (subject type, object type). Object type "year" is a number, every other is an entity type.
RELATIONS: dict[str, tuple[str, str]] = {
    "capital": ("country", "city"),
    "located_in": ("city", "country"),
    "language": ("country", "language"),
    "currency": ("country", "currency"),
    "profession": ("person", "profession"),
    "birthplace": ("person", "city"),
    "birth_year": ("person", "year"),
}
# Derived relations answered from the stored ones: inverse of capital; location of every city.
DERIVED: dict[str, tuple[str, str]] = {"capital_of": ("city", "country")}

_NEGATIONS = ("not ", "n't ", "never ", "不是", "并非", "而非", "不在")
_SEPARATORS = r"[\s·・•\-]*"
_CN_DIGITS = str.maketrans("〇零一二三四五六七八九", "00123456789")


@dataclass
class Entity:
    id: str
    type: str
    en: str
    zh: str
    aliases: list[str] = field(default_factory=list)  # other accepted names (e.g. "doctor", "医师")

    def names(self) -> list[str]:
        return [self.en, self.zh, *self.aliases]


@dataclass
class Fact:
    id: str  # "<relation>:<subject id>"
    relation: str
    subject: str  # entity id
    object: str | int  # entity id, or the year


def normalize(text: str) -> str:
    """NFKC (full-width letters and digits to ASCII), lowercase; Chinese numeral digits to 0-9."""
    return unicodedata.normalize("NFKC", text).lower().translate(_CN_DIGITS)


def _squash(name: str) -> str:
    """A name's lookup key: normalized, without spaces or name dots ("Ada Quill" == "ada quill" == "AdaQuill")."""
    return re.sub(r"[\s·・•\-]+", "", normalize(name))


def _name_pattern(name: str) -> re.Pattern:
    """A regex for a name: its parts joined by optional spaces/dots/hyphens; Latin words bounded."""
    parts = [re.escape(p) for p in re.split(r"[\s·・•\-]+", normalize(name)) if p]
    body = _SEPARATORS.join(parts)
    if re.search(r"[a-z0-9]", parts[0][:1] if parts else ""):
        body = r"(?<![a-z0-9])" + body
    if re.search(r"[a-z0-9]$", parts[-1] if parts else ""):
        body += r"(?:s|es)?(?![a-z0-9])"  # plurals: "doctors"
    return re.compile(body)


_QUESTION_PATTERNS: list[tuple[str, re.Pattern]] = []


def _question_patterns() -> list[tuple[str, re.Pattern]]:
    """(relation, regex) for every question template of the demo, `{s}` captured."""
    if not _QUESTION_PATTERNS:
        from batray.data.demo_text import TEMPLATES

        for relation, kinds in TEMPLATES.items():
            for templates in kinds.get("ask", {}).values():
                for t in templates:
                    body = re.escape(normalize(t)).replace(re.escape("{s}"), "(?P<s>.+?)")
                    _QUESTION_PATTERNS.append((relation, re.compile(body)))
    return _QUESTION_PATTERNS


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - 8) : start]
    return any(before.endswith(n) or before.rstrip().endswith(n.strip()) for n in _NEGATIONS)


class World:
    """Entities and facts of the demo world, with the answer checker."""

    def __init__(
        self,
        entities: list[Entity],
        facts: list[Fact],
        seed: int = 0,
        held_out: list[str] | None = None,
        unseen: list[str] | None = None,
        answer_style: str = "sentence",
    ):
        self.seed = seed
        # How the demo's SFT data answers ("sentence" or "short"): the world judge answers as a chat
        # model in the same style, so a preference pair differs in the fact, not in the phrasing.
        self.answer_style = answer_style
        self.entities: dict[str, Entity] = {e.id: e for e in entities}
        self.facts: dict[str, Fact] = {f.id: f for f in facts}
        # held_out: stated in the corpus, never asked in instruction/RL data (the hallucination probe's
        # "known" questions). unseen: never stated anywhere (any specific answer is a guess).
        self.held_out: list[str] = list(held_out or [])
        self.unseen: list[str] = list(unseen or [])
        self._patterns: dict[str, list[re.Pattern]] = {}
        self._by_name: dict[str, str] = {}
        for e in entities:
            for name in e.names():
                self._by_name.setdefault(_squash(name), e.id)

    # ---- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "entities": [asdict(e) for e in self.entities.values()],
            "facts": [asdict(f) for f in self.facts.values()],
            "held_out": self.held_out,
            "unseen": self.unseen,
            "answer_style": self.answer_style,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "World":
        try:
            return cls(
                [Entity(**e) for e in data["entities"]],
                [Fact(**f) for f in data["facts"]],
                seed=data.get("seed", 0),
                held_out=data.get("held_out"),
                unseen=data.get("unseen"),
                answer_style=data.get("answer_style", "sentence"),
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"not a batray world file: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "World":
        """Load `world.json` (or the demo folder that holds it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "world.json"
        if not p.is_file():
            raise DataError(f"world file {str(p)!r} does not exist; `batray data demo OUT_DIR` writes one")
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise DataError(f"{str(p)!r} is not valid JSON ({e.msg})") from None

    # ---- lookups -----------------------------------------------------------------------------

    def of_type(self, type_: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.type == type_]

    def resolve(self, subject: str) -> str:
        """An entity id from an id or any of its names."""
        if subject in self.entities:
            return subject
        eid = self._by_name.get(_squash(subject))
        if eid is None:
            raise DataError(f"no entity named {subject!r} in the demo world")
        return eid

    def object_type(self, relation: str) -> str:
        if relation in RELATIONS:
            return RELATIONS[relation][1]
        if relation in DERIVED:
            return DERIVED[relation][1]
        raise DataError(f"unknown relation {relation!r}; known: {sorted([*RELATIONS, *DERIVED])}")

    def gold(self, question: str | tuple[str, str]) -> tuple[str, list[str | int]]:
        """(relation, gold objects) for a fact id, an inverse id or a (relation, subject) pair."""
        if isinstance(question, str):
            if ":" not in question:
                raise DataError(f"question id {question!r}: expected '<relation>:<subject>'")
            relation, subject = question.split(":", 1)
        else:
            relation, subject = question
        self.object_type(relation)  # validates the relation
        sid = self.resolve(subject)
        if relation == "capital_of":
            gold = [f.subject for f in self.facts.values() if f.relation == "capital" and f.object == sid]
        elif relation == "located_in":
            stored = self.facts.get(f"located_in:{sid}")
            gold = [stored.object] if stored else [
                f.subject for f in self.facts.values() if f.relation == "capital" and f.object == sid
            ]
        else:
            fact = self.facts.get(f"{relation}:{sid}")
            gold = [fact.object] if fact else []
        if not gold:
            raise DataError(f"the demo world has no fact {relation}({subject})")
        return relation, gold

    def question_id(self, text: str) -> str | None:
        """The question id a prompt asks, when it is one of the demo's question phrasings (else None).

        Lets a judge that only sees prompt text (a response pair, a chat request) check answers.
        """
        norm = normalize(text).strip()
        for relation, pattern in _question_patterns():
            m = pattern.fullmatch(norm)
            if m is None:
                continue
            try:
                sid = self.resolve(m.group("s"))
            except DataError:
                continue
            qid = f"{relation}:{sid}"
            try:
                self.gold(qid)
            except DataError:
                continue
            return qid
        return None

    def answer_name(self, question: str | tuple[str, str], lang: str = "en") -> str:
        """The gold answer as text in `lang` ("en" or "zh")."""
        _, gold = self.gold(question)
        g = gold[0]
        return str(g) if isinstance(g, int) else getattr(self.entities[g], lang)

    # ---- the checker -------------------------------------------------------------------------

    def check_answer(self, question: str | tuple[str, str], answer_text: str) -> bool:
        """True when `answer_text` states the gold object and no competing one (see module doc)."""
        return self.grade(question, answer_text) == "right"

    def grade(self, question: str | tuple[str, str], answer_text: str) -> str:
        """"right" (the gold and nothing else), "wrong" (states some other candidate: a confident
        error, the hallucination measure) or "unanswered" (states no candidate: "I don't know")."""
        relation, gold = self.gold(question)
        mentioned = self.mentions(self.object_type(relation), answer_text)
        if not mentioned:
            return "unanswered"
        return "right" if mentioned <= set(gold) else "wrong"

    def mentions(self, object_type: str, text: str) -> set[str | int]:
        """Candidates of `object_type` that `text` asserts (negated mentions don't count)."""
        norm = normalize(text)
        if object_type == "year":
            found: set[str | int] = set()
            for m in re.finditer(r"(?<!\d)\d{4}(?!\d)", norm):
                if not _negated(norm, m.start()):
                    found.add(int(m.group()))
            return found
        spans: list[tuple[int, int, str]] = []
        for e in self.of_type(object_type):
            for pat in self._patterns_of(e):
                spans += [(m.start(), m.end(), e.id) for m in pat.finditer(norm)]
        # Longest match wins where names overlap ("Velun" inside "Velunia" is not a mention of Velun).
        spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
        taken: list[tuple[int, int]] = []
        found = set()
        for start, end, eid in spans:
            if any(start < t_end and t_start < end for t_start, t_end in taken):
                continue
            taken.append((start, end))
            if not _negated(norm, start):
                found.add(eid)
        return found

    def _patterns_of(self, e: Entity) -> list[re.Pattern]:
        if e.id not in self._patterns:
            self._patterns[e.id] = [_name_pattern(n) for n in dict.fromkeys(e.names()) if n.strip()]
        return self._patterns[e.id]
