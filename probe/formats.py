"""What every reader of a file shares (docs/formats.md): its JSON decoded in one place, a version field read by one
rule, and a field checked by one rule, each refusal one line that names the file (and the field) and says what to do.

- `read_json`: the decoded JSON of a file, in UTF-8 with or without a byte-order mark, or UTF-16/32 (JSON's own
  encodings, told apart by `json.detect_encoding` as Python's json does); with `json_lines`, a file of one JSON object
  per line (JSON Lines, as `datasets.Dataset.to_json` writes) reads as the list of its lines' objects.
- `check_version`: an integer version up to the reader's own is read; a larger one was written by a newer
  coconut-probe and is refused as such; a missing or non-integer one is refused.
- `read_field`: one field of a decoded object, of the kind wanted, or a refusal naming the field and what it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

REQUIRED = object()  # `read_field`'s default: the field must be there


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file", *,
              json_lines: bool = False) -> Any:
    """The decoded JSON of a file. Raises `error` naming the file when it is missing, is a directory, cannot be
    decoded as text in a JSON encoding, or is not JSON (with json_lines: neither one JSON value nor one object per
    line)."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory; give the {what} itself")
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    raw = path.read_bytes()
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a valid JSON file (not text in UTF-8, UTF-16 or UTF-32: {e})") from None
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not (json_lines and e.msg == "Extra data"):
            raise error(f"{path}: not a valid JSON file ({e})") from None
    values = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise error(f"{path}: line {n}: not JSON ({e.msg}); the file holds neither one JSON value nor one "
                            "object per line (JSON Lines)") from None
            if not isinstance(values[-1], dict):
                raise error(f"{path}: line {n}: holds a JSON {_json_type(values[-1])}; the file holds neither one "
                            "JSON value nor one object per line (JSON Lines)")
    return values


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file") -> dict:
    """`read_json` of a file that must hold one JSON object (a dict); raises `error` naming the file otherwise."""
    data = read_json(path, error, what)
    if not isinstance(data, dict):
        raise error(f"{path}: holds a JSON {_json_type(data)}, not the object a {what} holds")
    return data


def check_version(found: Any, current: int, source: str, name: str = "format_version",
                  error: type[Exception] = ValueError, written_by: str = "coconut-probe") -> int:
    """The one rule for a version field of our files: an integer 1..current is returned (an older one is read as
    it was written); a larger one is refused as written by a newer coconut-probe; a missing one (None) or one that
    is not a positive integer is refused, since every version of the writer records one."""
    if found is None:
        raise error(f"{source}: no {name}; every {written_by} that writes this file records one, so this one was "
                    f"not written by {written_by} (or was edited)")
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise error(f"{source}: {name} {found!r} is not a version number (1, 2, ...); the file was edited or "
                    "damaged")
    if found > current:
        raise error(f"{source}: {name} {found}: written by a newer {written_by} (this one reads {name} up to "
                    f"{current}); update coconut-probe to read it")
    return found


_KINDS = {int: "an integer", str: "a string", bool: "true or false", float: "a number", list: "a list",
          dict: "an object"}
_PLURAL = {int: "integers", str: "strings", bool: "booleans", float: "numbers", list: "lists", dict: "objects"}


def read_field(d: dict, key: str, kind: type, source: str, error: type[Exception] = ValueError, *,
          default: Any = REQUIRED, minimum: float | None = None, choices: Sequence[Any] | None = None,
          items: type | None = None) -> Any:
    """d[key], checked: of `kind` (int excludes bool; float accepts an int), at least `minimum`, one of `choices`,
    and for a list every element of `items`. A missing key returns `default`, or is refused when there is none.
    Raises `error` naming the source and the field, with what it holds."""
    if key not in d:
        if default is REQUIRED:
            raise error(f"{source}: no field {key!r}")
        return default
    v = d[key]
    ok = isinstance(v, (int, float) if kind is float else kind) and not (isinstance(v, bool) and kind is not bool)
    if ok and items is not None:
        ok = all(isinstance(x, items) and not (isinstance(x, bool) and items is not bool) for x in v)
    if not ok:
        what = _KINDS[kind] + (f" of {_PLURAL[items]}" if items is not None else "")
        raise error(f"{source}: field {key!r} must be {what}, got {short_repr(v)}")
    if minimum is not None and v < minimum:
        raise error(f"{source}: field {key!r} must be at least {minimum}, got {v!r}")
    if choices is not None and v not in choices:
        raise error(f"{source}: field {key!r} is {v!r}; this toolkit knows {', '.join(map(repr, choices))}")
    return v


def _json_type(v: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def short_repr(v: Any) -> str:
    """A value as a refusal quotes it: its repr, cut at 60 characters."""
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:57]}..."
