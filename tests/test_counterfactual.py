"""Counterfactual items: the same graph asked about another root, checked by hand on the first official item."""

from __future__ import annotations

import pytest

from probe.data.counterfactual import counterfactual, counterfactual_pairs, reroot
from probe.data.graph import ProsQAGraph


def test_the_first_official_item_rerooted_at_davis(official_items):
    a = official_items[0]
    b = counterfactual(a)
    assert a.answer == "Tom is a lempus." and b.answer == "Davis is a scrompus."
    assert b.question.endswith("Is Davis a lempus or scrompus?")
    assert b.question.rsplit(" Is ", 1)[0] == a.question.rsplit(" Is ", 1)[0]  # every fact as it was
    assert b.steps == ("Davis is a shumpus.", "Every shumpus is a rorpus.", "Every rorpus is a scrompus.")
    assert (b.root, b.target, b.neg_target) == (0, a.neg_target, a.target)
    assert b.idx_to_symbol == a.idx_to_symbol and b.edges == a.edges
    assert b.options() == a.options()  # the question asks the options in the same order


def test_reroot_rejects_concepts_and_persons_that_reach_both_or_neither(official_items):
    a = official_items[0]
    with pytest.raises(ValueError, match="'shumpus' is a concept, not a person"):
        reroot(a, a.index("shumpus"))
    with pytest.raises(ValueError, match="'Bob' reaches neither of the options"):
        reroot(official_items[1], official_items[1].index("Bob"))
    assert reroot(a, a.root) == a.__class__(**{**a.__dict__, "question": a.question.strip()})
    with pytest.raises(ValueError, match="root 99 is out of range"):
        reroot(a, 99)


def test_every_counterfactual_of_the_validation_split_is_a_valid_item(official_items):
    index, pairs = counterfactual_pairs(official_items)
    assert len(index) == len(pairs) > 250
    for i, b in zip(index, pairs):
        a, g = official_items[i], ProsQAGraph.from_item(b)
        assert b.target == a.neg_target and b.root != a.root
        assert g.depth[b.target] == len(b.steps)  # a shortest path
