"""Prompts as the benchmarks' own evaluation code builds them, character for character.

CMMLU (`src/mp_utils.py`: `format_example`, `gen_prompt`):
    以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\\n\\n       (cot: 请分析并选出正确答案。)
    per shot: 题目：{q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{answer}\\n\\n
    the item: 题目：{q}\\nA. ...\\nD. {D}\\n答案是：                     (cot: \\n逐步分析并给出答案选项。)
  In cot mode only the header and the item change; the shots stay direct-answer shots, as there.

C-Eval (`code/evaluator_series/evaluators/*.py`: `format_example`, `generate_few_shot_prompt`):
    以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\\n\\n
    per shot: {q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：{answer}\\n\\n
    cot shot: {q}\\nA. ...\\n答案：让我们一步一步思考，\\n{explanation}\\n所以答案是{answer}。\\n\\n
    the item: {q}\\nA. ...\\nD. {D}\\n答案：                             (cot: 答案：让我们一步一步思考，\\n)

k shots are the first k dev items. When the prompt does not fit the context, shots are dropped by
CMMLU's own rule (used for both benchmarks): while the shots' token count reaches the budget left by
header + item, remove the longest shot(s); if even header + item do not fit, the prompt is the item
alone. A chat model gets the finished prompt as one user turn of its chat template.

`ppl` style (option likelihood): `题目：{q}\n答案是：{option}` (CMMLU) / `{q}\n答案：{option}` (C-Eval), the
shots answered with the gold option's text; the prediction is the option whose text is likeliest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batray.eval.data import LETTERS, Item

CMMLU_HEADER = {
    "da": "以下是关于{}的单项选择题，请直接给出正确答案的选项。\n\n",
    "cot": "以下是关于{}的单项选择题，请分析并选出正确答案。\n\n",
}
CEVAL_HEADER = "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n"
CEVAL_COT_LEAD = "让我们一步一步思考，\n"

# The text every direct-answer prompt ends with (the letter comes next).
ANSWER_CUE = {"cmmlu": "答案是：", "ceval": "答案："}


def _options(item: Item) -> str:
    return "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, item.options))


def format_example(benchmark: str, item: Item, include_answer: bool, style: str = "da") -> str:
    """One question: a shot (with its answer) or the scored item (ending where the answer goes).

    style `ppl` (the option-likelihood evaluation of OpenCompass's PPL inferencer): the question without
    its options, the shots answered with the gold option's text; the scored item ends at the answer cue
    and each option's text is scored as its continuation.
    """
    if style == "ppl":
        cue = "\n答案是：" if benchmark == "cmmlu" else "\n答案："
        text = ("题目：" if benchmark == "cmmlu" else "") + item.question + cue
        return text + (item.options["ABCD".index(item.answer)] + "\n\n" if include_answer else "")
    if benchmark == "cmmlu":
        text = "题目：" + item.question + _options(item)
        if include_answer:  # shots are always direct-answer shots in CMMLU's code
            return text + "\n答案是：" + f"{item.answer}\n\n"
        return text + ("\n逐步分析并给出答案选项。" if style == "cot" else "\n答案是：")
    text = item.question + _options(item) + "\n答案："
    if include_answer:
        if style == "cot":
            return text + CEVAL_COT_LEAD + item.explanation + f"\n所以答案是{item.answer}。\n\n"
        return text + f"{item.answer}\n\n"
    return text + (CEVAL_COT_LEAD if style == "cot" else "")


def header(benchmark: str, subject_zh: str, style: str = "da") -> str:
    if benchmark == "cmmlu":
        return CMMLU_HEADER.get(style, CMMLU_HEADER["da"]).format(subject_zh)
    return CEVAL_HEADER.format(subject_zh)


@dataclass(frozen=True)
class Prompt:
    text: str
    shots: int  # shots actually included (fewer than asked when some were dropped)


def build_prompt(
    benchmark: str,
    subject_zh: str,
    shots: Sequence[Item],
    item: Item,
    style: str = "da",
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> Prompt:
    """Header + shots + item; shots dropped (longest first) until it fits `max_tokens`.

    Without `count_tokens` (e.g. an endpoint with no tokenizer) nothing is dropped, as in the
    official code when it has no tokenizer.
    """
    head = header(benchmark, subject_zh, style)
    end = format_example(benchmark, item, include_answer=False, style=style)
    examples = [format_example(benchmark, s, include_answer=True, style=style) for s in shots]
    if count_tokens is None or max_tokens is None:
        return Prompt(head + "".join(examples) + end, len(examples))
    head_end = count_tokens(head) + count_tokens(end)
    if head_end > max_tokens:
        return Prompt(end, 0)
    lengths = [count_tokens(e) for e in examples]
    kept = list(zip(examples, lengths))
    while kept and sum(n for _, n in kept) >= max_tokens - head_end:
        longest = max(n for _, n in kept)
        kept = [(e, n) for e, n in kept if n != longest]
    return Prompt(head + "".join(e for e, _ in kept) + end, len(kept))


def wrap_chat(tokenizer, prompt: str) -> str:
    """The prompt as one user turn of the tokenizer's chat template, ready for the answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
