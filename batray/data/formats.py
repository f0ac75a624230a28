"""Data layouts recognised by their columns, and their normalisation to batray's canonical rows.

Three kinds of data, each with a registry of layouts tried in order (the first whose columns are all
present and non-null wins), one small function per layout:

- `sft` -> `{"messages": [...]}`: an optional system message, then user/assistant turns ending with
  the assistant's response (roles system/user/assistant).
- `preferences` -> `{"pair_id", "context", "response_a", "response_b", "d"}`: the fields of
  `batray.reward.data.Triple`; y = response_a, y' = response_b, d = -1 when a is preferred, +1 when
  b is, 0 for a tie (Eq. 3's convention).
- `prompts` -> `{"messages": [... user], "prompt": the last user turn's text, "id": the row's id}`.

Explicit column keys (`sft.input_key=question` ...) rename a user's columns to the canonical ones
before detection and restrict it to the layouts that use them. `batray.data.load` reads sources
through these functions and counts what they reject.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")
# ShareGPT's `from` values and Gemma's `model` name the same three roles
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                "model": "assistant"}
KINDS = ("sft", "preferences", "prompts")


class FormatError(ValueError):
    """A row no layout accepts, or a recognised row with bad values; the message is the reason."""


# ---- explicit column keys -----------------------------------------------------------------------------

# config key stem -> the canonical column it names
CANONICAL = {"messages": "messages", "input": "prompt", "output": "response", "prompt": "prompt",
             "chosen": "chosen", "rejected": "rejected"}
KIND_KEYS = {"sft": ("messages", "input", "output"), "preferences": ("prompt", "chosen", "rejected"),
             "prompts": ("prompt", "messages")}


@dataclass(frozen=True)
class Keys:
    """Column names a stage's config gives (`sft.input_key: question`); None: detect by column names."""

    section: str = ""
    messages: str | None = None
    input: str | None = None
    output: str | None = None
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    @classmethod
    def of(cls, section: str, cfg) -> "Keys":
        """The `*_key` fields of a config section (fields it lacks are None)."""
        return cls(section, **{stem: getattr(cfg, f"{stem}_key", None) for stem in CANONICAL})

    def explicit(self) -> list[tuple[str, str, str]]:
        """(config key, the user's column, canonical column) for every key that is set."""
        prefix = f"{self.section}." if self.section else ""
        return [(f"{prefix}{stem}_key", col, canon) for stem, canon in CANONICAL.items()
                if (col := getattr(self, stem)) is not None]


def apply_keys(row: dict, keys: Keys | None) -> tuple[dict, frozenset[str]]:
    """The row with the user's columns renamed to canonical ones, and the canonical columns so named."""
    explicit = keys.explicit() if keys is not None else []
    if not explicit:
        return row, frozenset()
    for key, col, _ in explicit:
        if row.get(col) is None:
            raise FormatError(f"no column {col!r} ({key}); the row has {_columns(row)}")
    named = {canon: row[col] for _, col, canon in explicit}
    used = {col for _, col, _ in explicit} | set(named)
    return {**{k: v for k, v in row.items() if k not in used}, **named}, frozenset(named)


# ---- the registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    kind: str
    name: str
    columns: tuple[str, ...]  # all present and non-null
    optional: tuple[str, ...]
    convert: Callable[[dict], list[dict] | tuple[list[dict], list[str]]]
    makes: str  # what batray makes of it (for errors and the README's table)
    when: Callable[[dict], bool] | None = None  # a further test on the values

    def matches(self, row: dict, named: frozenset[str]) -> bool:
        if named and not named <= set(self.columns + self.optional):
            return False
        return all(row.get(c) is not None for c in self.columns) and (self.when is None or self.when(row))


LAYOUTS: dict[str, list[Layout]] = {kind: [] for kind in KINDS}


def layout(kind: str, name: str, columns: tuple[str, ...], makes: str, optional: tuple[str, ...] = (),
           when: Callable[[dict], bool] | None = None):
    """Register a layout's normaliser (tried in registration order)."""
    def register(fn):
        LAYOUTS[kind].append(Layout(kind, name, columns, optional, fn, makes, when))
        return fn
    return register


@dataclass
class Normalized:
    layout: str
    rows: list[dict]
    errors: list[str] = field(default_factory=list)  # bad examples of a row that yields several


def _columns(row: dict) -> str:
    cols = [k for k, v in row.items() if v is not None]
    return "[" + ", ".join(cols) + "]" if cols else "no columns"


def unrecognised(kind: str, row: dict, keys: Keys | None) -> FormatError:
    known = "; ".join(f"{lay.name} ({'+'.join(lay.columns)})" for lay in LAYOUTS[kind])
    section = (keys.section if keys is not None and keys.section else kind)
    key_names = ", ".join(f"{section}.{stem}_key" for stem in KIND_KEYS[kind])
    named = [f"{k}={c}" for k, c, _ in keys.explicit()] if keys is not None else []
    given = f" with {', '.join(named)}" if named else ""
    return FormatError(f"unrecognised {kind} row (columns {_columns(row)}{given}); batray reads {known}; "
                       f"or name the columns with {key_names}")


def detect(kind: str, row: dict, keys: Keys | None = None) -> Layout:
    renamed, named = apply_keys(row, keys)
    for lay in LAYOUTS[kind]:
        if lay.matches(renamed, named):
            return lay
    raise unrecognised(kind, row, keys)


def normalize(kind: str, row: dict, keys: Keys | None = None) -> Normalized:
    """One source row as canonical rows of `kind`; raises `FormatError` (the reason) for a bad row."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown data kind {kind!r}; one of {KINDS}")
    if not isinstance(row, dict):
        raise FormatError("not a JSON object")
    renamed, named = apply_keys(row, keys)
    for lay in LAYOUTS[kind]:
        if lay.matches(renamed, named):
            try:
                out = lay.convert(renamed)
            except (FormatError, KeyError, TypeError, AttributeError) as e:
                raise FormatError(f"{lay.name}: {e}") from None
            rows, errors = out if isinstance(out, tuple) else (out, [])
            return Normalized(lay.name, rows, [f"{lay.name}: {e}" for e in errors])
    raise unrecognised(kind, row, keys)


# ---- messages -----------------------------------------------------------------------------------------


def text_of(value, what: str) -> str:
    """A string, or OpenAI/TRL content parts that are all text (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
        raise FormatError(f"{what} has parts that are not text")
    raise FormatError(f"{what} is not a string (got {type(value).__name__})")


def _get(m: dict, *names: str):
    for n in names:
        if m.get(n) is not None:
            return m[n]
    return None


def message(m, what: str) -> dict:
    """`{role, content}` or ShareGPT's `{from, value}` as `{role, content}` with batray's role names."""
    if not isinstance(m, dict):
        raise FormatError(f"{what} is not a message object")
    role, content = _get(m, "role", "from"), _get(m, "content", "value")
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise FormatError(f"{what}.role {role!r} not in {ROLES} (or human/gpt)")
    if content is None:
        raise FormatError(f"{what} has no content")
    return {"role": ROLE_ALIASES[role.lower()], "content": text_of(content, f"{what}.content")}


def as_messages(value, what: str, default_role: str | None = None) -> list[dict]:
    """A message list; a string becomes one message of `default_role` (when given)."""
    if isinstance(value, str) and default_role is not None:
        return [{"role": default_role, "content": value}]
    if isinstance(value, (list, tuple)):
        return [message(m, f"{what}[{i}]") for i, m in enumerate(value)]
    expected = "a string or a list of messages" if default_role else "a list of messages"
    raise FormatError(f"{what} must be {expected} (got {type(value).__name__})")


def check_turns(messages: list[dict], ends_with: str) -> list[dict]:
    """An optional system message first, then user/assistant alternating from the user, ending with
    `ends_with`'s turn."""
    if not messages:
        raise FormatError("empty messages")
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise FormatError("a system message may only come first")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise FormatError(f"turns must alternate user/assistant; turn {i} is {m['role']!r}")
    if not body or body[-1]["role"] != ends_with:
        raise FormatError("the last message must be the assistant's response" if ends_with == "assistant"
                          else "the prompt must end with the user's turn")
    return messages


def _string(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise FormatError(f"{key} is not a string (got {type(value).__name__})")
    return value


def _user_turn(instruction: str, extra: str | None) -> str:
    """Alpaca's instruction and optional input as one user turn (a blank line between them)."""
    return f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction


def _system(row: dict) -> list[dict]:
    system = row.get("system")
    return [{"role": "system", "content": _string(row, "system")}] if system else []


def _row_id(row: dict) -> str | None:
    value = _get(row, "id", "prompt_id")
    return None if value is None else str(value)


# ---- SFT ----------------------------------------------------------------------------------------------


@layout("sft", "messages", ("messages",), "the conversation as is (role/content or from/value messages)")
def sft_messages(row: dict) -> list[dict]:
    return [{"messages": check_turns(as_messages(row["messages"], "messages"), "assistant")}]


@layout("sft", "sharegpt", ("conversations",), "the conversation; human/gpt/system become user/assistant/system")
def sft_sharegpt(row: dict) -> list[dict]:
    return [{"messages": check_turns(as_messages(row["conversations"], "conversations"), "assistant")}]


def _prompt_and(row: dict, answer: str) -> list[dict]:
    messages = as_messages(row["prompt"], "prompt", "user") + as_messages(row[answer], answer, "assistant")
    return [{"messages": check_turns(_system(row) + messages, "assistant")}]


@layout("sft", "prompt_response", ("prompt", "response"), "user turn(s) from prompt, the response as the answer",
        optional=("system",))
def sft_prompt_response(row: dict) -> list[dict]:
    return _prompt_and(row, "response")


@layout("sft", "prompt_completion", ("prompt", "completion"),
        "TRL's prompt/completion, strings or message lists, as user and assistant turns", optional=("system",))
def sft_prompt_completion(row: dict) -> list[dict]:
    return _prompt_and(row, "completion")


@layout("sft", "self_instruct", ("instruction", "instances"),
        "one example per instance: instruction + the instance's input as the user turn, its output the answer")
def sft_self_instruct(row: dict) -> tuple[list[dict], list[str]]:
    instruction = _string(row, "instruction")
    instances = row["instances"]
    if not isinstance(instances, list) or not instances:
        raise FormatError("instances must be a non-empty list of {input, output}")
    rows, errors = [], []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or not isinstance(inst.get("output"), str) or not isinstance(
                inst.get("input", ""), (str, type(None))):
            errors.append(f"instances[{i}] needs a string output (and an optional string input)")
            continue
        rows.append({"messages": [{"role": "user", "content": _user_turn(instruction, inst.get("input"))},
                                  {"role": "assistant", "content": inst["output"]}]})
    return rows, errors


@layout("sft", "alpaca", ("instruction", "output"), "instruction + input (if any) as the user turn, output the answer",
        optional=("input", "system"))
def sft_alpaca(row: dict) -> list[dict]:
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatError("input is not a string")
    user = _user_turn(_string(row, "instruction"), extra)
    return [{"messages": _system(row) + [{"role": "user", "content": user},
                                         {"role": "assistant", "content": _string(row, "output")}]}]


# ---- preferences --------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_dialogue(text: str) -> list[dict]:
    """`\\n\\nHuman: q\\n\\nAssistant: a ...` -> messages; consecutive turns of one role are merged."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise FormatError("not a `\\n\\nHuman: ...\\n\\nAssistant: ...` dialogue")
    messages: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = _HH_ROLE[speaker]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def split_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """(context, chosen response, rejected response) of two whole conversations: the context is their
    common prefix (TRL's implicit prompt), and each must continue it with one assistant turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    context, rest_c, rest_r = chosen[:n], chosen[n:], rejected[n:]
    if len(rest_c) != 1 or len(rest_r) != 1 or rest_c[0]["role"] != "assistant" or rest_r[0]["role"] != "assistant":
        raise FormatError("chosen and rejected differ before their last assistant turn")
    if not context:
        raise FormatError("no shared prompt before the two responses")
    check_turns(context, "user")
    return context, rest_c[0]["content"], rest_r[0]["content"]


def _preference(row: dict, context: list[dict], a: str, b: str, d: int) -> dict:
    """A canonical preference row; without an id of its own, the pair is named by its content (the same
    in every reading, whatever the row order, so held-out splits by pair id stay put)."""
    pair_id = _get(row, "pair_id", "id", "prompt_id")
    if pair_id is None:
        blob = json.dumps([context, a, b], ensure_ascii=False, sort_keys=True).encode()
        pair_id = "pair-" + hashlib.sha1(blob).hexdigest()[:12]
    return {"pair_id": str(pair_id), "context": context, "response_a": a, "response_b": b, "d": d}


def _chosen_rejected(row: dict) -> tuple[list[dict], str, str]:
    """TRL's preference layouts: explicit prompt (string or messages) or implicit, strings or messages."""
    prompt = row.get("prompt")
    if prompt is None:  # implicit prompt: two whole conversations
        return split_pair(as_messages(row["chosen"], "chosen"), as_messages(row["rejected"], "rejected"))
    chosen = as_messages(row["chosen"], "chosen", "assistant")
    rejected = as_messages(row["rejected"], "rejected", "assistant")
    if _whole(chosen) and _whole(rejected):  # UltraFeedback: the prompt is repeated inside both conversations
        return split_pair(chosen, rejected)
    context = as_messages(prompt, "prompt", "user")
    return split_pair(context + chosen, context + rejected)


def _whole(messages: list[dict]) -> bool:
    """A whole conversation (it starts before the assistant's answer), not just the answer."""
    return bool(messages) and messages[0]["role"] != "assistant"


@layout("preferences", "preferences", ("response_a", "response_b", "d"),
        "batray's schema as is (pair_id, prompt or messages, response_a, response_b, d)",
        optional=("pair_id", "prompt", "messages"))
def pref_batray(row: dict) -> list[dict]:
    from batray.data.schemas import check_preferences

    if (reason := check_preferences(row)) is not None:
        raise FormatError(reason)
    if row.get("messages"):
        context = check_turns(as_messages(row["messages"], "messages"), "user")
    else:
        context = [{"role": "user", "content": row["prompt"]}]
    return [_preference(row, context, row["response_a"], row["response_b"], int(row["d"]))]


@layout("preferences", "ultrafeedback", ("chosen", "rejected", "score_chosen", "score_rejected"),
        "UltraFeedback binarized: as chosen/rejected; d = -1, or 0 (a tie) when the scores are equal",
        optional=("prompt",))
def pref_ultrafeedback(row: dict) -> list[dict]:
    sc, sr = row["score_chosen"], row["score_rejected"]
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in (sc, sr)):
        raise FormatError("score_chosen and score_rejected must be numbers")
    if sc < sr:
        raise FormatError(f"score_chosen {sc} is below score_rejected {sr}")
    context, a, b = _chosen_rejected(row)
    return [_preference(row, context, a, b, 0 if sc == sr else -1)]


def _hh_text(row: dict) -> bool:
    return row.get("prompt") is None and isinstance(row.get("chosen"), str) and isinstance(row.get("rejected"), str)


@layout("preferences", "hh_rlhf", ("chosen", "rejected"),
        "HH-RLHF dialogues (\\n\\nHuman: ... \\n\\nAssistant: ...): shared turns the context, last answers y and y', d = -1",
        when=_hh_text)
def pref_hh(row: dict) -> list[dict]:
    chosen, rejected = parse_hh_dialogue(row["chosen"]), parse_hh_dialogue(row["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise FormatError("the dialogue does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise FormatError("chosen and rejected differ before their last assistant turn")
    context = chosen[:-1]
    if not context or context[0]["role"] != "user":
        raise FormatError("the dialogue does not start with a human turn")
    return [_preference(row, context, chosen[-1]["content"], rejected[-1]["content"], -1)]


@layout("preferences", "chosen_rejected", ("chosen", "rejected"),
        "TRL's layouts: prompt (string or messages) with chosen/rejected answers, or two whole conversations "
        "(the common prefix is the prompt); y = chosen, y' = rejected, d = -1", optional=("prompt",))
def pref_chosen_rejected(row: dict) -> list[dict]:
    context, a, b = _chosen_rejected(row)
    return [_preference(row, context, a, b, -1)]


# ---- prompts ------------------------------------------------------------------------------------------


def _prompt_row(row: dict, messages: list[dict], suffix: str = "") -> dict:
    check_turns(messages, "user")
    if not messages[-1]["content"].strip():
        raise FormatError("the prompt is empty")
    rid = _row_id(row)
    return {"messages": messages, "prompt": messages[-1]["content"], "id": rid + suffix if rid and suffix else rid}


def _first_user_turn(messages: list[dict]) -> list[dict]:
    for i, m in enumerate(messages):
        if m["role"] == "user":
            return messages[: i + 1]
    raise FormatError("no user turn")


@layout("prompts", "prompt", ("prompt",), "the prompt: a string (one user turn) or messages ending with a user turn",
        optional=("system",))
def prompts_prompt(row: dict) -> list[dict]:
    return [_prompt_row(row, _system(row) + as_messages(row["prompt"], "prompt", "user"))]


@layout("prompts", "messages", ("messages",), "the conversation's system message and first user turn")
def prompts_messages(row: dict) -> list[dict]:
    return [_prompt_row(row, _first_user_turn(as_messages(row["messages"], "messages")))]


@layout("prompts", "sharegpt", ("conversations",), "the conversation's system message and first user turn")
def prompts_sharegpt(row: dict) -> list[dict]:
    return [_prompt_row(row, _first_user_turn(as_messages(row["conversations"], "conversations")))]


@layout("prompts", "self_instruct", ("instruction", "instances"), "one prompt per instance: instruction + its input")
def prompts_self_instruct(row: dict) -> tuple[list[dict], list[str]]:
    instruction = _string(row, "instruction")
    instances = row["instances"]
    if not isinstance(instances, list) or not instances:
        raise FormatError("instances must be a non-empty list of {input, output}")
    rows, errors = [], []
    for i, inst in enumerate(instances):
        extra = inst.get("input") if isinstance(inst, dict) else None
        try:
            if extra is not None and not isinstance(extra, str):
                raise FormatError("input is not a string")
            user = {"role": "user", "content": _user_turn(instruction, extra)}
            rows.append(_prompt_row(row, [user], f"#{i}" if len(instances) > 1 else ""))
        except FormatError as e:
            errors.append(f"instances[{i}]: {e}")
    return rows, errors


@layout("prompts", "alpaca", ("instruction",), "instruction + input (if any) as the user turn",
        optional=("input", "system"))
def prompts_alpaca(row: dict) -> list[dict]:
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatError("input is not a string")
    return [_prompt_row(row, _system(row) + [{"role": "user", "content": _user_turn(_string(row, "instruction"), extra)}])]
