"""Errors about one item of a batch, named by the item's index in the caller's terms.

The model sees rows of a batch; the user knows items of a data file. A `RowError` (a prompt past the position
limit, a value that turns NaN or inf) carries the row where it happened; each loop that batches items runs the
model inside `rows_are(indices)`, which translates the row into the item's index (and an inner loop's index into
an outer one's), so the one line the user reads says "item 17", never "batch row 3".
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence


class RowError(ValueError):
    """An input error located at one row of a batch. row: the row; item: the item's index once a caller
    translated it (None before); detail: what is wrong with it, and what to do."""

    def __init__(self, row: int, detail: str, item: int | None = None):
        super().__init__(row, detail)
        self.row, self.detail, self.item = row, detail, item

    def __str__(self) -> str:
        who = f"item {self.item}" if self.item is not None else f"batch row {self.row}"
        return f"{who}: {self.detail}"


@contextmanager
def rows_are(indices: Sequence[int]) -> Iterator[None]:
    """Within the block, a RowError's row (or the item index an inner block gave it: an index into this block's
    list) is translated through `indices` into the caller's item index."""
    try:
        yield
    except RowError as e:
        local = e.row if e.item is None else e.item
        e.item = int(indices[local])
        raise
