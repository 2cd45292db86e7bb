"""Reading text from local files: JSON lines and plain text, with one-line errors.

Every command that reads user text files (training documents, prompts, robustness
texts, local evaluation sets) goes through these two functions.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from dsl_jax.errors import UserError, require


def iter_jsonl(path: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON-lines file."""
    require(os.path.isfile(path), f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_texts(path: str, field: str = "text") -> list[str]:
    """The non-blank texts of a ``.jsonl`` file (each line a JSON string, or an object
    with a string ``field``) or of any other file read as text (one per non-blank line)."""
    texts = []
    if path.endswith(".jsonl"):
        for lineno, obj in iter_jsonl(path):
            text = obj.get(field) if isinstance(obj, dict) else obj
            require(isinstance(text, str),
                    f"{path}:{lineno}: expected a JSON string or an object with a string "
                    f"{field!r} field")
            texts.append(text)
    else:
        require(os.path.isfile(path), f"{path}: no such file")
        with open(path, encoding="utf-8") as f:
            texts = [line.strip() for line in f]
    return [t for t in texts if t.strip()]
