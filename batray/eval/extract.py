"""The option letter in a generated answer, by the benchmarks' own ordered patterns.

CMMLU's `extract_choice` (src/mp_utils.py) and C-Eval's `extract_cot_answer` (evaluators/chatglm.py)
are followed in order. One deliberate difference: where both fall back to a random letter (CMMLU) or
a placeholder, batray returns None: the answer counts as wrong and is reported as unparsable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LETTERS = "ABCD"

# CMMLU, step 1: single match, (pattern, group holding the letter), first hit wins.
CMMLU_SINGLE = [
    (r"答案(选项)?(是|为)：? ?([ABCD])", 3),
    (r"答案(是|为)选项 ?([ABCD])", 2),
    (r"故?选择?：? ?([ABCD])", 1),
    (r"([ABCD]) ?选?项(是|为)?正确", 1),
    (r"正确的?选项(是|为) ?([ABCD])", 2),
    (r"答案(应该)?(是|为)([ABCD])", 3),
    (r"选项 ?([ABCD]) ?(是|为)?正确", 1),
    (r"选择答案 ?([ABCD])", 1),
    (r"答案?：([ABCD])", 1),
    (r"([ABCD])(选?项)?是?符合题意", 1),
    (r"答案选项：? ?([ABCD])", 1),
    (r"答案(选项)?为(.*?)([ABCD])", 3),
]
# Step 2: recursive match (the last letter in a chain such as "A不对，B正确").
CMMLU_RECURSIVE = [(r"([ABCD])(.*?)当选", 1), (r"([ABCD])(.*?)正确", 1)]
# Step 3: weak single match.
CMMLU_WEAK = [(r"[^不]是：? ?([ABCD])", 1)]
# Step 4: exactly one letter mentioned anywhere.
ONLY_ONE_LETTER = r"^[^ABCD]*([ABCD])[^ABCD]*$"

CEVAL_PATTERNS = [
    r"([ABCD])是正确的",
    r"选项([ABCD])正确",
    r"答案为([ABCD])",
    r"答案是([ABCD])",
    r"答案([ABCD])",
    r"选择([ABCD])",
    r"答案：([ABCD])",
    r"选择答案([ABCD])",
]


def extract_cmmlu(response: str) -> str | None:
    response = str(response).strip()
    if not response:
        return None
    if response[0] in LETTERS:
        return response[0]
    for pattern, group in CMMLU_SINGLE:
        m = re.search(pattern, response, re.M)
        if m:
            return m.group(group)
    for pattern, group in CMMLU_RECURSIVE:
        m = re.search(pattern, response, re.M)
        if m:
            answer = m.group(group)
            while m:
                answer = m.group(group)
                m = re.search(pattern, m.group(0)[1:], re.M)
            return answer
    for pattern, group in CMMLU_WEAK:
        m = re.search(pattern, response, re.M)
        if m:
            return m.group(group)
    m = re.match(ONLY_ONE_LETTER, response)
    return m.group(1) if m else None


def extract_ceval(response: str, options: Sequence[str] = ()) -> str | None:
    response = str(response).strip()
    if not response:
        return None
    m = re.findall(r"所以答案是(.+?)。", response, re.M)
    if m and m[-1] in LETTERS:
        return m[-1]
    for pattern in CEVAL_PATTERNS:
        m = re.search(pattern, response, re.M)
        if m:
            return m.group(1)
    letters = re.findall(r"[ABCD]", response, re.M)
    if len(letters) == 1:
        return letters[0]
    # Only one option's text appears in the answer.
    hits = [letter for letter, text in zip(LETTERS, options) if str(text) and str(text) in response]
    return hits[0] if len(hits) == 1 else None


def extract_answer(benchmark: str, response: str, options: Sequence[str] = ()) -> str | None:
    """The predicted letter, or None when the text names no option (unparsable)."""
    if benchmark == "cmmlu":
        return extract_cmmlu(response)
    return extract_ceval(response, options)
