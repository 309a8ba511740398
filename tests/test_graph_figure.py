"""One item's figures (the layered graph, node heatmaps, SAE features, an edit's effect), checked by hand."""

from __future__ import annotations

import numpy as np

from probe.data.graph import ProsQAGraph
from probe.viz.figures import (graph_figure, graph_positions, intervention_effect_figure, item_features_figure,
                       node_heatmap_figure, node_order)


def test_layers_and_positions_of_the_first_official_item(official_items):
    it = official_items[0]
    g = ProsQAGraph.from_item(it)
    layer = {it.name(v): int(g.layer[v]) for v in range(it.n_nodes)}
    # Reached from Tom: their depth. Davis and Alex have no parents (layer 0), shumpus is Davis's child,
    # rempus is a child of shumpus and of Alex, so its longest distance from a source is 2.
    assert (layer["Tom"], layer["terpus"], layer["dumpus"], layer["brimpus"], layer["lempus"]) == (0, 1, 1, 2, 3)
    assert (layer["Davis"], layer["Alex"], layer["shumpus"], layer["rempus"]) == (0, 0, 1, 2)
    pos = graph_positions(g)
    reach = np.isfinite(g.depth)
    assert (pos[reach, 1] > 0).all() and (pos[~reach, 1] < 0).all()
    np.testing.assert_array_equal(pos[:, 0], g.layer)
    assert len({tuple(p) for p in pos}) == it.n_nodes  # no two nodes on one spot


def test_the_graph_figure_colours_outlines_and_draws_the_path(official_items):
    it = official_items[0]
    values = np.linspace(0, 1, it.n_nodes)
    fig = graph_figure(it, 1, values=values)
    nodes = fig.data[-1]
    np.testing.assert_allclose(nodes.marker.color, values)
    big = {it.name(v) for v, s in enumerate(nodes.marker.size) if s > 14}
    assert big == {"terpus", "dumpus"}  # frontier_1 of Tom
    path = fig.data[1]
    pos = graph_positions(ProsQAGraph.from_item(it))
    drawn = {(x, y) for x, y in zip(path.x, path.y) if x is not None}
    assert drawn == {tuple(pos[it.index(n)]) for n in ("Tom", "terpus", "brimpus", "lempus")}
    assert "value 0.000" in nodes.hovertext[0] and "unreachable" in nodes.hovertext[it.index("Davis")]
    # coloured by the superposition coefficients: the scale runs to the largest coefficient
    coef = np.zeros(it.n_nodes)
    coef[it.index("terpus")] = 2.5
    nodes = graph_figure(it, 1, coefficients=coef).data[-1]
    np.testing.assert_allclose(nodes.marker.color, coef)
    assert nodes.marker.cmax == 2.5 and nodes.marker.colorbar.title.text == "coefficient"
    assert "coefficient 2.500" in nodes.hovertext[it.index("terpus")]


def test_node_heatmap_marks_each_thoughts_frontier_and_orders_nodes_root_first(official_items):
    it = official_items[0]
    z = np.arange(3 * it.n_nodes, dtype=float).reshape(3, it.n_nodes) / (3 * it.n_nodes)
    fig = node_heatmap_figure(it, z, title="t", colorbar="p")
    heat, marks = fig.data
    g = ProsQAGraph.from_item(it)
    order = node_order(g)
    assert heat.y[0] == "Tom" and list(heat.y) == [it.name(v) for v in order]
    np.testing.assert_allclose(np.asarray(heat.z)[:, 1], z[1, order])  # column = thought 2
    assert set(zip(marks.x, marks.y)) == {(f"thought {k}", it.name(v)) for k in (1, 2, 3) for v in g.frontier(k)}
    assert ("thought 1", "terpus") in set(zip(marks.x, marks.y))


def test_item_features_and_intervention_effect_by_hand(official_items):
    acts = np.zeros((2, 10))
    acts[0, 7], acts[1, 3], acts[1, 7] = 2.0, 1.0, 0.5
    fig = item_features_figure(acts, {7: "terpus (AUROC 0.90)"})
    assert list(fig.data[0].y) == ["7 · terpus (AUROC 0.90)", "3"]  # only the features that fire, strongest first
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[2.0, 0.5], [0.0, 1.0]])
    it = official_items[0]
    g = ProsQAGraph.from_item(it)
    before = np.zeros((2, it.n_nodes))
    before[0, g.frontier(1)] = 0.5  # all value on frontier_1 after one thought
    after = before * 0
    fig = intervention_effect_figure(it, before, after, node=it.index("terpus"))
    assert [tr.name for tr in fig.data] == ["frontier mass, unedited", "value of terpus, unedited",
                                            "frontier mass, edited", "value of terpus, edited"]
    np.testing.assert_allclose(fig.data[0].y, [0.5 * len(g.frontier(1)), 0.0])
    np.testing.assert_allclose(fig.data[1].y, [0.5, 0.0])
    np.testing.assert_allclose(fig.data[2].y, [0.0, 0.0])
