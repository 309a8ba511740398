"""The layered drawing of one item's graph, checked by hand on the first official item."""

from __future__ import annotations

import numpy as np

from probe.data.graph import ProsQAGraph
from probe.viz import graph_figure, graph_positions


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
