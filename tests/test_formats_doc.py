"""docs/formats.md: every table row names a test, and that test exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows() -> list[str]:
    """The body rows of every table (a table's header is the line above its |---| line)."""
    lines = (ROOT / "docs" / "formats.md").read_text().splitlines()
    rule = [bool(re.match(r"^\|[\s|:-]+\|$", line.strip())) for line in lines]
    return [line for i, line in enumerate(lines) if line.startswith("|") and not rule[i]
            and not (i + 1 < len(lines) and rule[i + 1])]


def _tests_in(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            out.add(node.name)
    return out


def test_every_row_names_an_existing_test():
    rows = _rows()
    assert rows, "docs/formats.md holds no table rows"
    cache: dict[str, set[str]] = {}
    for row in rows:
        named = NAMED.findall(row)
        assert named, f"docs/formats.md row names no test: {row[:120]}"
        for file, test in named:
            if file not in cache:
                path = ROOT / file
                assert path.is_file(), f"docs/formats.md names {file}, which does not exist: {row[:120]}"
                cache[file] = _tests_in(path)
            assert test in cache[file], f"docs/formats.md names {file}::{test}, which does not exist: {row[:120]}"
