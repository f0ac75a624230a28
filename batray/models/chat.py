"""Chat format for any model: which template renders, where a turn ends, prompts and masked SFT samples.

A model that has its own chat template keeps it; BatGPT's format (`batray.models.tokenizer.CHAT_TEMPLATE`)
is the template of batray's own tokenizers and of models without one. `model.chat_template` chooses
explicitly: `batgpt`, `model` (the model's own, required), or a path to a `.jinja` file.

Everything renders through `tokenizer.apply_chat_template`, and the rendered text is tokenized
without adding special tokens (the template writes the BOS it wants), as transformers, vLLM and TGI
do for chat. Generation stops at the template's end-of-turn token: the first special token the
template writes after an assistant message's content (`<|eot_id|>`, `<|im_end|>`, `</s>`, `<eop>`),
plus EOS. Checkpoints record these in `generation_config.json`.

SFT samples (Eq. 2) are built from incremental renderings, as TRL and OpenRLHF compute assistant
masks: each assistant turn starts where the rendering of the messages before it (with the
generation prompt) ends and ends where the rendering up to and including it ends. A trained turn is
tokenized on its own and the final turn's prompt as one generation prompt, so the sample's tokens
are those of a generation request followed by what the model is to generate. A
template whose shorter renderings are not prefixes of the longer ones (prefix-unstable, e.g. one
that rewrites earlier turns) cannot be masked and is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from batray.data.direction import IGNORE_INDEX
from batray.errors import BatrayError
from batray.models.tokenizer import BATGPT_CHAT_TOKENS, CHAT_TEMPLATE

log = logging.getLogger(__name__)

BATGPT = "batgpt"
MODEL = "model"
_PROBE = "Xq7PROBE"  # a content string no template rewrites


class SampleError(ValueError):
    """A sample that cannot be used (bad roles, response too long); counted and written aside."""


class ChatTemplateError(BatrayError):
    """The chat template cannot be used as batray needs it (one line, stops the stage)."""


# ---- choosing the template --------------------------------------------------------------------------


def apply_chat_template_choice(tokenizer, choice: str | None = None) -> list[str]:
    """Set the tokenizer's chat template per `choice` (None: the model's own, else BatGPT's); returns the
    tokens added (BatGPT's `<eot>`/`<eop>` when its format is used and they are missing)."""
    own = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if isinstance(tokenizer.chat_template, dict):  # named templates: the default one renders chat
        own = tokenizer.chat_template.get("default")
    if choice in (None, "auto"):
        template = own or CHAT_TEMPLATE
    elif choice == MODEL:
        if not own:
            raise ChatTemplateError(f"model.chat_template is 'model' but the tokenizer "
                                    f"{getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                                    "use 'batgpt' or a path to a .jinja file")
        template = own
    elif choice == BATGPT:
        template = CHAT_TEMPLATE
    else:
        path = Path(choice)
        if not path.is_file():
            raise ChatTemplateError(f"model.chat_template {choice!r}: no such file (expected batgpt, model or a "
                                    "path to a .jinja template)")
        template = path.read_text(encoding="utf-8")
    tokenizer.chat_template = template
    if not is_batgpt_format(tokenizer):
        return []
    added = [t for t in BATGPT_CHAT_TOKENS if t not in tokenizer.get_vocab()]
    if added:
        tokenizer.add_tokens(added, special_tokens=True)
    return added


def is_batgpt_format(tokenizer) -> bool:
    """Whether the tokenizer renders BatGPT's chat format (this template, or the older literal-`<|l2r|>` one)."""
    t = tokenizer.chat_template
    return isinstance(t, str) and "[Assistant] " in t and "<eop>" in t


# ---- rendering --------------------------------------------------------------------------------------


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages`; a template that refuses them raises `SampleError`."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # noqa: BLE001 - jinja's TemplateError / raise_exception, ValueError of transformers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SampleError(f"the chat template refuses this conversation: {first}") from None


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of already rendered text (no special tokens added: the template wrote them)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_prompt_ids(tokenizer, conversation: str | list[dict]) -> list[int]:
    """Token ids of a generation prompt: the conversation (or one user message) rendered with the
    generation prompt, ending where the assistant's answer starts."""
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    return encode_text(tokenizer, render_chat(tokenizer, messages, add_generation_prompt=True))


def chat_prompts_ids(tokenizer, prompts: Iterable[str | list[dict]]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, p) for p in prompts]


# ---- where a turn ends ------------------------------------------------------------------------------


def _special_ids(tokenizer) -> set[int]:
    ids = {int(i) for i in tokenizer.all_special_ids}
    ids |= {int(i) for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)}
    return ids


def end_of_turn_ids(tokenizer) -> list[int]:
    """The token(s) the chat template writes to end an assistant turn: the first special token after the
    assistant's content (`<|eot_id|>`, `<|im_end|>`, `</s>`, `<eop>`, GLM-4's next `<|user|>`).
    Empty when the template writes none (then EOS ends a turn). Cached per template on the tokenizer."""
    cached = tokenizer.__dict__.get("_batray_end_of_turn")
    if cached is not None and cached[0] == tokenizer.chat_template:
        return list(cached[1])
    found: list[int] = []
    special = _special_ids(tokenizer)
    probes = ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE},
               {"role": "user", "content": "Hi"}],
              [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}])
    for probe in probes:
        try:
            text = render_chat(tokenizer, probe)
        except SampleError:
            continue
        at = text.find(_PROBE)
        if at < 0:
            continue
        after = encode_text(tokenizer, text[at + len(_PROBE):])
        found = [next(t for t in after if t in special)] if any(t in special for t in after) else []
        break
    tokenizer.__dict__["_batray_end_of_turn"] = (tokenizer.chat_template, tuple(found))
    return found


def turn_suffix(tokenizer) -> str:
    """The text the chat template writes between an assistant's content and its end-of-turn token
    (BatGPT's "\n\n" before `<eop>`; "" for Llama 3, ChatML and most others). Cached per template."""
    cached = tokenizer.__dict__.get("_batray_turn_suffix")
    if cached is not None and cached[0] == tokenizer.chat_template:
        return cached[1]
    suffix = ""
    eot = end_of_turn_ids(tokenizer)
    if eot:
        try:
            text = render_chat(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}])
        except SampleError:
            text = ""
        at, mark = text.find(_PROBE), tokenizer.convert_ids_to_tokens(eot[0])
        end = text.find(mark, at + len(_PROBE)) if at >= 0 and isinstance(mark, str) else -1
        suffix = text[at + len(_PROBE):end] if end >= 0 else ""
    tokenizer.__dict__["_batray_turn_suffix"] = (tokenizer.chat_template, suffix)
    return suffix


def turn_content(tokenizer, text: str, finish_reason: str) -> str:
    """A generated assistant turn as message content: the decoded text without the template's own text
    before the end-of-turn token (`turn_suffix`), when the turn ended there.

    Decoded completions keep it ("A.\n\n" from "A.\n\n<eop>"). As content it would be rendered twice
    ("A.\n\n\n\n<eop>"): a response pair would differ in whitespace that no reference answer has, and a
    reward model learns that instead of the answers (it did, in the tiny recipe).
    """
    suffix = turn_suffix(tokenizer) if finish_reason == "stop" else ""
    return text[: -len(suffix)] if suffix and text.endswith(suffix) else text


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Tokens that end generation: the end-of-turn token(s), EOS, and a generation config's EOS ids."""
    out: list[int] = []
    extra = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    extra = [extra] if isinstance(extra, int) else list(extra or [])
    for t in [*(end_of_turn_ids(tokenizer) if tokenizer.chat_template else []), tokenizer.eos_token_id, *extra]:
        if t is not None and int(t) not in out:
            out.append(int(t))
    return out


# ---- SFT samples ------------------------------------------------------------------------------------


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(text of the whole conversation, [(start, end) character span of each assistant turn]).

    start: where the rendering of the messages before the turn (with the generation prompt) ends;
    end: where the rendering up to and including the turn ends. Both must be prefixes of the whole
    rendering, else the template is prefix-unstable and `ChatTemplateError` says so.
    """
    full = render_chat(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:k], add_generation_prompt=True) if k else ""
        upto = render_chat(tokenizer, messages[: k + 1])
        if not (full.startswith(before) and full.startswith(upto) and len(upto) > len(before)):
            raise ChatTemplateError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'this tokenizer'!r} is not "
                f"prefix-stable (the rendering up to message {k} is not the start of the whole conversation's), "
                "so batray cannot mask the assistant turns; set model.chat_template to batgpt or to a .jinja "
                "template that renders earlier turns unchanged")
        spans.append((len(before), len(upto)))
    return full, spans


def chat_sample(tokenizer, messages: list[dict], loss_on: str = "last") -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation: labels are the tokens of the trained assistant turns, from
    the content up to and including the end-of-turn token, IGNORE_INDEX elsewhere (Eq. 2).

    loss_on "last" (the paper: the final assistant turn): the text before that turn is tokenized as one
    generation prompt (exactly `chat_prompt_ids` of the earlier messages), the turn on its own (the
    tokens the model is to generate). loss_on "all": every assistant turn is trained, so every turn's
    text is tokenized on its own and the pieces between them too (a tokenizer that merges across a
    turn's boundary, e.g. a space before the content, sees the history split there). When nothing in
    the rendering ends the final turn, its end-of-turn token (or EOS) is appended and trained.
    """
    if loss_on not in ("last", "all"):
        raise ValueError(f"loss_on must be 'last' or 'all', not {loss_on!r}")
    full, spans = assistant_spans(tokenizer, messages)
    if not spans:
        raise SampleError("the conversation has no assistant turn")
    trained = spans if loss_on == "all" else spans[-1:]
    stops = set(stop_token_ids(tokenizer))
    ids: list[int] = []
    turns: list[tuple[int, int]] = []  # token [first, last) of each trained turn's text
    pos = 0
    for start, end in trained:
        ids += encode_text(tokenizer, full[pos:start]) if start > pos else []
        first = len(ids)
        ids += encode_text(tokenizer, full[start:end])
        turns.append((first, len(ids)))
        pos = end
    ids += encode_text(tokenizer, full[pos:]) if pos < len(full) else []
    labels = [IGNORE_INDEX] * len(ids)
    for k, (first, last) in enumerate(turns):
        stop_at = next((i for i in range(first, last) if ids[i] in stops), None)
        if stop_at is None and last < len(ids) and ids[last] in stops:
            stop_at = last  # the template ends the turn with the next turn's first token (GLM-4's <|user|>)
        if stop_at is None and k == len(turns) - 1 and last == len(ids):
            eot = (end_of_turn_ids(tokenizer) or [tokenizer.eos_token_id])[0]
            if eot is None:
                raise ChatTemplateError("the chat template ends no assistant turn and the tokenizer has no EOS")
            ids.append(eot)  # nothing ends the final turn: teach the model its stop token
            labels.append(IGNORE_INDEX)
            stop_at = last
        if stop_at is None:
            stop_at = last - 1
        labels[first : stop_at + 1] = ids[first : stop_at + 1]
    return ids, labels


def response_ids(tokenizer, context: list[dict], response: str) -> list[int]:
    """Token ids of `context` (ending with the user's turn) followed by the assistant's `response`, up to
    and including its end-of-turn token: the sequence a reward model reads (at its last token)."""
    ids, labels = chat_sample(tokenizer, [*context, {"role": "assistant", "content": response}], "last")
    end = max(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    return ids[: end + 1]
