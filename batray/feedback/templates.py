"""Judge prompt templates in English and Chinese, mirroring the human annotators' options (Fig. 1).

The annotation page asks two things per pair: for each response, "acceptable / unacceptable"; and
for the pair, "A is better", "B is better", "both good", "both not good". The judge gets the same
questions with numbered options and answers with the number only, so the first answer token's
log-probabilities give a distribution over exactly those options.

Acceptability is asked about one response at a time (it is a property of that response, so there is
no position to be biased by); helpfulness shows both responses and is asked in both orders.

A folder given as `label.templates` may hold `en.yaml` / `zh.yaml` overriding any of `system`,
`acceptability`, `helpfulness` (placeholders: `{prompt}`, `{response}`; `{prompt}`, `{response_1}`,
`{response_2}`). The option numbers are fixed: 1 acceptable, 2 unacceptable; 1 first better,
2 second better, 3 both good, 4 both not good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from batray.errors import ConfigError

ACCEPTABILITY_OPTIONS = ("acceptable", "unacceptable")  # answers "1", "2"
HELPFULNESS_OPTIONS = ("first_better", "second_better", "both_good", "both_bad")  # answers "1".."4"


@dataclass(frozen=True)
class Templates:
    lang: str
    system: str
    acceptability: str
    helpfulness: str
    # Phrases a free-text answer may use instead of the number, per option (checked longest first).
    acceptability_words: tuple[tuple[str, ...], ...]
    helpfulness_words: tuple[tuple[str, ...], ...]


EN = Templates(
    lang="en",
    system="You are a careful annotator who rates answers of an AI assistant, exactly as our human annotators do.",
    acceptability=(
        "Judge whether the response to the user's request is acceptable. A response is unacceptable if it states "
        "something false, is irrelevant to the request, or is harmful.\n\n"
        "[User request]\n{prompt}\n\n"
        "[Response]\n{response}\n\n"
        "Options:\n1. The response is acceptable\n2. The response is unacceptable\n"
        "Answer with the number of one option only."
    ),
    helpfulness=(
        "Compare two responses to the user's request and judge which one is more helpful. A response that states "
        "something false is not good.\n\n"
        "[User request]\n{prompt}\n\n"
        "[Response 1]\n{response_1}\n\n"
        "[Response 2]\n{response_2}\n\n"
        "Options:\n1. Response 1 is better\n2. Response 2 is better\n3. Both are good\n4. Both are not good\n"
        "Answer with the number of one option only."
    ),
    acceptability_words=(("is acceptable", "acceptable"), ("is unacceptable", "unacceptable", "not acceptable")),
    helpfulness_words=(("response 1 is better", "first is better"), ("response 2 is better", "second is better"),
                       ("both are good", "both good"), ("both are not good", "both not good", "both bad", "neither")),
)

ZH = Templates(
    lang="zh",
    system="你是一名认真的标注员，像我们的人工标注员一样评价AI助手的回答。",
    acceptability=(
        "判断这个回答对用户请求而言是否可以接受。如果回答包含错误事实、与请求无关或有害，则不可接受。\n\n"
        "[用户请求]\n{prompt}\n\n"
        "[回答]\n{response}\n\n"
        "选项：\n1. 回答可以接受\n2. 回答不可接受\n"
        "只回答一个选项的编号。"
    ),
    helpfulness=(
        "比较用户请求的两个回答，判断哪个更有帮助。包含错误事实的回答不算好。\n\n"
        "[用户请求]\n{prompt}\n\n"
        "[回答 1]\n{response_1}\n\n"
        "[回答 2]\n{response_2}\n\n"
        "选项：\n1. 回答1更好\n2. 回答2更好\n3. 两个都好\n4. 两个都不好\n"
        "只回答一个选项的编号。"
    ),
    acceptability_words=(("可以接受", "可接受"), ("不可接受", "不可以接受", "不能接受")),
    helpfulness_words=(("回答1更好", "回答 1 更好", "第一个更好"), ("回答2更好", "回答 2 更好", "第二个更好"),
                       ("两个都好", "都好"), ("两个都不好", "都不好")),
)

BUILTIN = {"en": EN, "zh": ZH}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(text: str) -> str:
    """"zh" when CJK characters make up at least 30% of the letters, else "en"."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return "zh" if cjk and cjk / (cjk + latin) >= 0.3 else "en"


def load_templates(folder: str | None) -> dict[str, Templates]:
    """The built-in templates, with fields overridden from `<folder>/<lang>.yaml` when given."""
    if folder is None:
        return dict(BUILTIN)
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"label.templates: {folder!r} is not a folder")
    out = {}
    for lang, base in BUILTIN.items():
        path = root / f"{lang}.yaml"
        if not path.is_file():
            out[lang] = base
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        unknown = set(data) - {"system", "acceptability", "helpfulness"}
        if unknown:
            raise ConfigError(f"label.templates: {path}: unknown keys {sorted(unknown)}")
        for key, needed in (("acceptability", ("{prompt}", "{response}")),
                            ("helpfulness", ("{prompt}", "{response_1}", "{response_2}"))):
            if key in data and not all(n in data[key] for n in needed):
                raise ConfigError(f"label.templates: {path}: {key} must contain {', '.join(needed)}")
        out[lang] = replace(base, **data)
    return out


def fill(template: str, **values: str) -> str:
    """Put values into `{name}` placeholders; braces inside the values (code, JSON) are left alone."""
    marks = {k: f"\0{i}\0" for i, k in enumerate(values)}
    for k, m in marks.items():
        template = template.replace("{" + k + "}", m)
    for k, m in marks.items():
        template = template.replace(m, values[k])
    return template


def acceptability_messages(t: Templates, prompt: str, response: str) -> list[dict]:
    return [{"role": "system", "content": t.system},
            {"role": "user", "content": fill(t.acceptability, prompt=prompt, response=response)}]


def helpfulness_messages(t: Templates, prompt: str, first: str, second: str) -> list[dict]:
    return [{"role": "system", "content": t.system},
            {"role": "user", "content": fill(t.helpfulness, prompt=prompt, response_1=first, response_2=second)}]
