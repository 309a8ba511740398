"""Folds and hold-outs over items by content: every copy of an item (`prosqa.duplicates`) on one side of a split.

A data set that holds an item twice would otherwise put one copy in training and the other in the test, and a probe
would score the copy it has memorised (on 40 validation items repeated three times, frontier AUROC 0.56-0.62 became
0.97-1.00). Both functions take the content group of each item and split items; a caller with several rows per
item (one per thought) maps the items to their rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit


def content_folds(groups: np.ndarray, folds: int, seed: int = 0,
                  error: type[Exception] = ValueError) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train items, test items), index arrays, of each fold: `GroupKFold(folds, shuffle=True, random_state=seed)`
    over the items' content groups (groups: [n_items] int, `Duplicates.groups`). Without copies (groups 0..n-1) the
    folds are those of `KFold(folds, shuffle=True, random_state=seed)`. Raises `error` unless
    2 <= folds <= the number of distinct items.
    """
    groups = np.asarray(groups)
    check_folds(groups, folds, error)
    return list(GroupKFold(folds, shuffle=True, random_state=seed).split(groups, groups=groups))


def check_folds(groups: np.ndarray, folds: int, error: type[Exception] = ValueError) -> None:
    """Refuse (raise `error`) a fold count outside [2, the number of distinct items] (groups: [n_items] int,
    `Duplicates.groups`): the check `content_folds` makes, for a caller to make before its work."""
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if not 2 <= folds <= n_groups:
        copies = f" ({n_groups} distinct)" if n_groups < len(groups) else ""
        raise error(f"folds must be in [2, {n_groups}] for {len(groups)} items{copies}, got {folds}")


def content_holdout(groups: np.ndarray, fraction: float, seed: int = 0,
                    error: type[Exception] = ValueError) -> np.ndarray:
    """[n_items] bool: the items held out, every copy of max(1, round(fraction * n_distinct)) distinct items drawn by
    `GroupShuffleSplit(1, test_size=..., random_state=seed)` (groups: [n_items] int, `Duplicates.groups`). Raises
    `error` for a fraction outside (0, 1) or fewer than two distinct items (nothing left to train on).
    """
    groups = np.asarray(groups)
    if not 0 < fraction < 1:
        raise error(f"held_out must be in (0, 1), got {fraction}")
    n_groups = len(np.unique(groups))
    n_test = max(1, round(fraction * n_groups))
    if n_test >= n_groups:
        copies = f" ({n_groups} distinct)" if n_groups < len(groups) else ""
        raise error(f"{len(groups)} items{copies} cannot be split into training and {fraction:.0%} held out")
    _, test = next(GroupShuffleSplit(1, test_size=n_test, random_state=seed).split(groups, groups=groups))
    held = np.zeros(len(groups), dtype=bool)
    held[test] = True
    return held
