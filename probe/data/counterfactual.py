"""Counterfactual ProsQA items: the same graph asked about another root, so a patch's expected effect is known.

Item A asks "Is Tom a T or N?" (Tom reaches T). Its counterfactual B keeps every fact and both
options but asks about another person who reaches N and not T, so B's answer is N. A thought
of A patched into B should move B's answer to T if the model reads its answer off the thoughts.
Both items share node indices, so their frontiers can be compared node by node.
"""

from __future__ import annotations

import re
from typing import Sequence

import networkx as nx

from probe.data.graph import ProsQAGraph
from probe.data.prosqa import ProsQAItem, _check_item, parse_question


def _fact(item: ProsQAItem, is_person: Sequence[bool], parent: int, child: int) -> str:
    subject = item.name(parent) if is_person[parent] else f"Every {item.name(parent)}"
    return f"{subject} is a {item.name(child)}."


def reroot(item: ProsQAItem, root: int) -> ProsQAItem:
    """The same facts and options asked about another person, who must reach exactly one option."""
    g = ProsQAGraph.from_item(item).nx
    if not 0 <= root < item.n_nodes:
        raise ValueError(f"root {root} is out of range for {item.n_nodes} nodes")
    if g.in_degree(root):
        raise ValueError(f"{item.name(root)!r} is a concept, not a person: a root has no parents")
    reach = [nx.has_path(g, root, v) for v in (item.target, item.neg_target)]
    if sum(reach) != 1:
        raise ValueError(f"{item.name(root)!r} reaches {'both' if all(reach) else 'neither'} of the options")
    target, neg = (item.target, item.neg_target) if reach[0] else (item.neg_target, item.target)
    is_person = [g.in_degree(v) == 0 for v in range(item.n_nodes)]
    path = min(nx.all_shortest_paths(g, root, target))  # the lexicographically first shortest path
    _, (old, a, b) = parse_question(item.question)
    question = re.sub(rf"Is {re.escape(old)} a (\S+) or (\S+)\?$", f"Is {item.name(root)} a {a} or {b}?",
                      item.question.strip())
    raw = {
        "question": question,
        "steps": [_fact(item, is_person, p, c) for p, c in zip(path, path[1:])],
        "answer": f"{item.name(root)} is a {item.name(target)}.",
        "idx_to_symbol": list(item.idx_to_symbol),
        "edges": [list(e) for e in item.edges],
        "root": root, "target": target, "neg_target": neg,
    }
    return _check_item(raw)


def counterfactual(item: ProsQAItem) -> ProsQAItem | None:
    """The item asked about the first other person who reaches the wrong option and not the right one."""
    g = ProsQAGraph.from_item(item).nx
    for v in range(item.n_nodes):
        if (v != item.root and g.in_degree(v) == 0 and nx.has_path(g, v, item.neg_target)
                and not nx.has_path(g, v, item.target)):
            return reroot(item, v)
    return None


def counterfactual_pairs(items: Sequence[ProsQAItem]) -> tuple[list[int], list[ProsQAItem]]:
    """(indices of the items that have a counterfactual, those counterfactuals)."""
    index, pairs = [], []
    for i, it in enumerate(items):
        if (cf := counterfactual(it)) is not None:
            index.append(i)
            pairs.append(cf)
    return index, pairs
