"""Config types for data a stage reads: where the rows are (`DataSpec`) and which columns hold what.

A data source is a plain string (a local file or folder, a URI pyarrow opens, or a hub dataset id
`owner/name`) or a mapping: `{path: ..., split: ...}` or `{name: owner/name, config: ..., split: ...}`.
Mappings stay plain dicts after validation, so they print, hash and serialize like the strings do.

The column keys name the columns of a user's own layout when batray's detection by column names is
not enough (OpenRLHF's `--input_key`/`--output_key`, TRL's column names); null means detect.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from batray.config.base import PathField, Schema

SOURCE_KEYS = ("path", "name", "config", "split")


def check_source(value):
    """A string, or a mapping with exactly one of path/name (config only with name), all strings."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty data source; give a path, URI or hub dataset id")
        return value
    if not isinstance(value, dict):  # a ValueError: pydantic reports it with the key path
        raise ValueError("a data source is a path, URI or hub id, or a mapping of path | name, config, split")
    for key, v in value.items():
        if key not in SOURCE_KEYS:
            raise ValueError(f"unknown data source key {key!r}; use path, or name with config and split")
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"data source {key!r} must be a non-empty string (got {v!r})")
    if ("path" in value) == ("name" in value):
        raise ValueError("a data source mapping needs exactly one of path (local or URI) and name (hub id)")
    if "config" in value and "name" not in value:
        raise ValueError("config is a hub dataset's configuration; it goes with name, not path")
    return dict(value)


# A path field (`PathField`): a local path, string or mapping's `path`, is made absolute when the config loads.
DataSpec = Annotated[str | dict[str, str], BeforeValidator(check_source), PathField("input")]


def _key(what: str) -> object:
    return Field(default=None, min_length=1, description=f"column holding {what}; null: detected from the columns")


class SftColumns(Schema):
    """Column names of an SFT layout batray does not recognise by itself."""

    messages_key: str | None = _key("the conversation (a list of role/content or from/value messages)")
    input_key: str | None = _key("the user's turn (a string or a message list)")
    output_key: str | None = _key("the assistant's response (a string or a message list)")


class PreferenceColumns(Schema):
    """Column names of a preference layout (prompt, chosen, rejected) under other names."""

    prompt_key: str | None = _key("the prompt (a string or a message list); null: detected or implicit")
    chosen_key: str | None = _key("the preferred response or conversation")
    rejected_key: str | None = _key("the other response or conversation")


class PromptColumns(Schema):
    """Column names of a prompt set under other names."""

    prompt_key: str | None = _key("the prompt (a string or a message list ending with the user's turn)")
    messages_key: str | None = _key("a conversation whose first user turn is the prompt")
