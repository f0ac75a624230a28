"""Subject tables shipped with batray: English key, Chinese name, categories, C-Eval Hard.

CMMLU (67 subjects) is derived from the benchmark's own `src/categories.py`: a subject belongs to
every category whose subcategory list shares a subcategory with it, so the 15 "China specific"
subjects also count in one of STEM / Humanities / Social Science / Other, as in the official code.
C-Eval (52 subjects) follows its `subject_mapping.json`: one category each, plus the 8-subject Hard
subset (advanced/discrete mathematics, probability and statistics, college physics/chemistry, high
school mathematics/physics/chemistry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from batray.errors import BatrayError

BENCHMARKS = ("cmmlu", "ceval")


@dataclass(frozen=True)
class Subject:
    name: str  # the file-name key, e.g. "high_school_geography"
    zh: str  # the Chinese name that goes into the prompt
    categories: tuple[str, ...]
    hard: bool = False  # C-Eval Hard member


@dataclass(frozen=True)
class SubjectTable:
    benchmark: str
    categories: tuple[str, ...]  # in the paper's column order
    subjects: dict[str, Subject]

    def __getitem__(self, name: str) -> Subject:
        try:
            return self.subjects[name]
        except KeyError:
            raise BatrayError(
                f"{self.benchmark}: unknown subject {name!r} (the {len(self.subjects)} subjects are listed in "
                f"batray/eval/{self.benchmark}_subjects.json)"
            ) from None

    @property
    def hard(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.subjects.values() if s.hard)


@cache
def subject_table(benchmark: str) -> SubjectTable:
    if benchmark not in BENCHMARKS:
        raise BatrayError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
    raw = json.loads(resources.files("batray.eval").joinpath(f"{benchmark}_subjects.json").read_text("utf-8"))
    subjects = {
        name: Subject(name, s["zh"], tuple(s["categories"]), bool(s.get("hard", False)))
        for name, s in raw["subjects"].items()
    }
    return SubjectTable(benchmark, tuple(raw["categories"]), subjects)
