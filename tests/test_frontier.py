"""Latent-search measures on hand-built graphs and planted vectors, with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.data.graph import ProsQAGraph
from probe.frontier import (FRONTIER, OPTIMAL, REACHABLE, UNREACHABLE, frontier_mass, inner_products, node_groups,
                            parallelism, value_by_height)

# root 0 -> 1, 2; 1 -> 3 (target); 2 -> 4 (neg_target), 2 -> 5; 6 -> 4 (never reached from the root)
G = ProsQAGraph(n_nodes=7, edges=((0, 1), (0, 2), (1, 3), (2, 4), (2, 5), (6, 4)), root=0, target=3, neg_target=4)
# root 0 -> 1 -> 2 (target), 0 -> 3 -> 2, 0 -> 4 (neg): two shortest paths
H = ProsQAGraph(n_nodes=5, edges=((0, 1), (1, 2), (0, 3), (3, 2), (0, 4)), root=0, target=2, neg_target=4)


def test_node_groups_by_hand():
    assert node_groups(G, 1).tolist() == [REACHABLE, OPTIMAL, FRONTIER, UNREACHABLE, UNREACHABLE, UNREACHABLE, UNREACHABLE]
    assert node_groups(G, 2).tolist() == [REACHABLE, REACHABLE, REACHABLE, OPTIMAL, FRONTIER, FRONTIER, UNREACHABLE]
    assert node_groups(H, 1).tolist() == [REACHABLE, OPTIMAL, UNREACHABLE, OPTIMAL, FRONTIER]


def test_a_thought_made_of_the_frontier_ranks_the_frontier_first():
    d = 16
    emb = torch.eye(d)  # orthonormal name embeddings: token i is e_i
    names = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    # thought 1 = normalised sum of frontier_1 embeddings; thought 2 likewise for frontier_2.
    t = torch.zeros(2, 2, d)
    for b, (g, ids) in enumerate(zip((G, H), names)):
        for k in (1, 2):
            f = g.frontier(k)
            t[b, k - 1] = emb[[ids[v] for v in f]].sum(0) / len(f) ** 0.5
    ip = inner_products(t, emb, names, [G, H])
    # G step 1: frontier {1, 2}, each at 1/sqrt(2); step 2: {3, 4, 5} at 1/sqrt(3); others 0.
    assert ip.per_item[0, 0].tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5, 0.0, 0.0])
    assert ip.per_item[0, 1].tolist() == pytest.approx([3 ** -0.5, 3 ** -0.5, 0.0, 0.0])
    # H step 2: frontier_2 = {2}, the target, alone and optimal: no non-optimal frontier node.
    assert ip.per_item[1, 1, OPTIMAL] == pytest.approx(1.0) and np.isnan(ip.per_item[1, 1, FRONTIER])
    report = ip.as_dict()
    assert report["2"]["frontier"] == pytest.approx(3 ** -0.5)  # only G has the group at step 2
    # Step 1: G's optimal node 1 at 1/sqrt(2); H's optimal nodes 1 and 3 at 1/sqrt(3) (frontier_1 = {1, 3, 4}).
    assert report["1"]["optimal"] == pytest.approx((2 ** -0.5 + 3 ** -0.5) / 2)
    for k in ("1", "2"):
        r = report[k]
        assert r["optimal"] > r["reachable"] and r["frontier"] > r["unreachable"]


def test_parallelism_mass_and_height():
    values = np.zeros((2, 7))
    values[0, [1, 2]] = [0.3, 0.6]  # G: frontier_1 = {1, 2}
    values[1, [1, 3, 4]] = [0.5, 0.2, 0.1]  # H: frontier_1 = {1, 3, 4}
    par = parallelism(values, [G, H], k=1)
    np.testing.assert_allclose(par.cumulative, [[0.6, 0.9, 0.9], [0.5, 0.7, 0.8]])
    assert par.mean == pytest.approx({"top1": 0.55, "top2": 0.8, "top3": 0.85})
    assert par.percentiles([0, 100])[:, 0].tolist() == pytest.approx([0.5, 0.6])
    assert frontier_mass(values, [G, H], 1).tolist() == pytest.approx([0.9, 0.8])
    vh = value_by_height(values, [G, H], k=1)
    # G: node 1 (height 1, reaches the target 3), node 2 (height 1, cannot); H: 1 and 3 (height 1, reach), 4 (leaf).
    assert vh.height.tolist() == [1, 1, 1, 1, 0]
    assert vh.reaches_target.tolist() == [True, False, True, True, False]
    assert vh.means() == {True: {1: pytest.approx((0.3 + 0.5 + 0.2) / 3)}, False: {0: 0.1, 1: 0.6}}
    with pytest.raises(ValueError, match="height must be"):
        value_by_height(values, [G], 1, height="middle")
