"""Telling a Hugging Face hub id (`org/name`) from a local path, without importing torch or transformers:
the stage registry checks its inputs with it before any model code is loaded."""

from __future__ import annotations

import os
import re

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # `org/name`; a model or a dataset


def is_hub_id(value: str) -> bool:
    """`org/name` that is not a local path: a Hugging Face hub id (tried on machines that reach the hub)."""
    return bool(HUB_ID.fullmatch(value)) and not os.path.exists(value) and not value.startswith((".", "/", "~"))
