"""Tests of the ProsQA generator against its own contract and against the official validation split."""

from __future__ import annotations

import math
from collections import Counter

import networkx as nx
import numpy as np
import pytest

from probe.data.generate import (
    CONCEPT_NAMES,
    MAX_STEPS,
    MIN_STEPS,
    PERSON_NAMES,
    dataset_stats,
    generate_item,
    generate_items,
)
from probe.data.graph import ProsQAGraph
from probe.data.prosqa import items_from_json, parse_question, persons_and_concepts

N_STATS = 2000


@pytest.fixture(scope="module")
def official(official_items):
    return official_items


@pytest.fixture(scope="module")
def items():
    return generate_items(N_STATS, seed=0)


@pytest.fixture(scope="module")
def sample(items):
    """The first 300 generated items, for the per-item structural checks."""
    return items[:300]


def test_name_constants_are_the_official_names(official):
    persons, concepts = persons_and_concepts(official)
    assert list(PERSON_NAMES) == persons
    assert list(CONCEPT_NAMES) == concepts


def test_items_pass_the_project_validator(items):
    assert items_from_json([it.to_json() for it in items], "<generated>") == items


def test_generation_is_deterministic_for_a_seed_and_varies_across_seeds():
    assert generate_items(20, seed=7) == generate_items(20, seed=7)
    assert generate_items(20, seed=7) != generate_items(20, seed=8)
    assert generate_item(np.random.default_rng(3)) == generate_items(1, seed=3)[0]


def _is_person(item):
    has_parent = {c for _, c in item.edges}
    return [v not in has_parent for v in range(item.n_nodes)]


def _sentence(item, parent, child):
    subject = item.name(parent) if _is_person(item)[parent] else f"Every {item.name(parent)}"
    return f"{subject} is a {item.name(child)}."


def test_steps_are_a_shortest_root_to_target_path(sample):
    for item in sample:
        g = ProsQAGraph.from_item(item)
        path = [item.root]
        for step in item.steps:
            parent, child = next((p, c) for p, c in item.edges if _sentence(item, p, c) == step)
            assert parent == path[-1], f"step {step!r} does not continue the path {path}"
            path.append(child)
        assert path[-1] == item.target
        assert len(item.steps) == g.target_depth
        assert path in g.shortest_paths()
        assert MIN_STEPS <= len(item.steps) <= MAX_STEPS
        assert item.answer == f"{item.name(item.root)} is a {item.name(item.target)}."


def test_target_and_neg_target_are_leaves_on_opposite_sides(sample):
    for item in sample:
        g = ProsQAGraph.from_item(item).nx
        assert item.root in (0, 1)
        other = 1 - item.root
        assert g.out_degree(item.target) == 0 and g.out_degree(item.neg_target) == 0
        target_ancestors = nx.ancestors(g, item.target)
        assert item.root in target_ancestors and other not in target_ancestors
        neg_ancestors = nx.ancestors(g, item.neg_target)
        assert other in neg_ancestors and item.root not in neg_ancestors
        # The target is a deepest leaf of the root's side (the official split's rule).
        depth = nx.single_source_shortest_path_length(g, item.root)
        leaves = [v for v in nx.descendants(g, item.root) if g.out_degree(v) == 0]
        root_side = [v for v in leaves if other not in nx.ancestors(g, v)]
        assert depth[item.target] == max(depth[v] for v in root_side)


def test_persons_are_exactly_the_parentless_nodes(sample):
    for item in sample:
        g = ProsQAGraph.from_item(item).nx
        assert not any(g.degree(v) == 0 for v in range(item.n_nodes)), "isolated node"
        for v, person in enumerate(_is_person(item)):
            assert item.name(v) in (PERSON_NAMES if person else CONCEPT_NAMES)


def test_question_states_every_edge_exactly_once(sample):
    for item in sample:
        facts, (root, a, b) = parse_question(item.question)
        stated = Counter((item.index(p), item.index(c)) for p, c in facts)
        assert stated == Counter(item.edges) and max(stated.values()) == 1
        sentences = item.question.split("? ")[0].rsplit(" Is ", 1)[0]
        assert sentences == " ".join(_sentence(item, item.index(p), item.index(c)) for p, c in facts)
        assert root == item.name(item.root)
        assert {a, b} == {item.name(item.target), item.name(item.neg_target)}
        assert item.question.endswith(f" Is {root} a {a} or {b}?")


def test_question_order_and_options_are_shuffled(sample):
    assert any(item.question_facts() != list(item.edges) for item in sample)
    first = Counter(item.options()[0] == item.target for item in sample)
    assert first[True] > 0 and first[False] > 0


def test_dataset_stats_are_consistent(sample):
    stats = dataset_stats(sample)
    assert stats.n_items == len(sample)
    assert sum(stats.step_counts.values()) == len(sample)
    assert stats.mean_steps == pytest.approx(sum(k * n for k, n in stats.step_counts.items()) / len(sample))
    assert stats.mean_nodes == pytest.approx(np.mean([it.n_nodes for it in sample]))
    assert stats.se("edges") == pytest.approx(stats.std_edges / math.sqrt(len(sample)))


@pytest.mark.parametrize("name", ["nodes", "edges", "steps", "shortest_paths"])
def test_statistics_match_the_official_split(official, items, name):
    # Rule: the two means may differ by at most 3 standard errors of their difference,
    # 3 * sqrt(se_official^2 + se_generated^2), with se = sample sd (ddof=1) / sqrt(n).
    off, gen = dataset_stats(official), dataset_stats(items)
    tolerance = 3 * math.hypot(off.se(name), gen.se(name))
    diff = getattr(gen, f"mean_{name}") - getattr(off, f"mean_{name}")
    assert abs(diff) <= tolerance, f"mean {name}: generated - official = {diff:+.3f}, tolerance {tolerance:.3f}"


def test_step_counts_cover_the_official_range(official, items):
    assert set(dataset_stats(official).step_counts) == set(range(MIN_STEPS, MAX_STEPS + 1))
    assert set(dataset_stats(items).step_counts) == set(range(MIN_STEPS, MAX_STEPS + 1))
