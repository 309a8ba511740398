"""The superposition decomposition: each thought as a non-negative combination of its item's node names.

"A continuous thought is a superposition of the frontier nodes" (Hao et al. 2024; Zhu, Hao et al. 2025)
is a claim about a vector; this measures it on the vector. Thought k of an item is fit by non-negative
least squares over the readout rows of the item's node names (the unembedding rows `u_v` of each node's
name token, what a logit lens reads as that node):

    thought_k ~ sum_v c_v u_v,   c_v >= 0   (scipy.optimize.nnls)

and the fit reports every node's coefficient c_v, the uncentred R^2 of a fit without intercept,
1 - |thought - fit|^2 / |thought|^2, and the share of the coefficients' sum that lands on each node
group at step k (frontier.GROUPS: optimal, the rest of frontier_k, reachable (depth < k), unreachable).
Pure functions of captured thoughts; `probe.analyses.analyze` runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import nnls
from torch import Tensor

from probe.data.graph import ProsQAGraph
from probe.analyses.frontier import FRONTIER, GROUPS, OPTIMAL, nanmean_items, node_groups


@dataclass
class Decomposition:
    """Thoughts 1..k of n items, each decomposed over its item's node-name rows."""

    coef: np.ndarray  # [n_items, n_steps, max_nodes] c_v >= 0, nan past each item's nodes
    r2: np.ndarray  # [n_items, n_steps] uncentred R^2 of each fit
    share: np.ndarray  # [n_items, n_steps, 4] share of sum(c) on each node group at step k, nan where sum(c) = 0
    steps: list[int]  # the k of each step

    @property
    def frontier_share(self) -> np.ndarray:
        """[n_items, n_steps] share of the coefficients on frontier_k (optimal and the rest of the frontier)."""
        return self.share[..., OPTIMAL] + self.share[..., FRONTIER]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """{"k": {"r2": mean, "frontier_share": mean, "share": {group: mean}}} over items, the report's form."""
        r2, front, share = (nanmean_items(x) for x in (self.r2, self.frontier_share, self.share))
        return {str(k): {"r2": float(r2[i]), "frontier_share": float(front[i]),
                         "share": {g: float(share[i, j]) for j, g in enumerate(GROUPS)}}
                for i, k in enumerate(self.steps)}


def decompose(thought: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares of one vector over some rows: (coefficients [n_rows], uncentred R^2).

    thought: [d_model]; rows: [n_rows, d_model]. R^2 = 1 - |thought - c @ rows|^2 / |thought|^2 (nan for a zero
    thought). Equal rows (names that share their token: `layout.indistinct_names(first_token=True)`) split their
    weight arbitrarily between them.
    """
    thought = np.asarray(thought, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64)
    coef, residual = nnls(rows.T, thought)
    total = float(thought @ thought)
    return coef, (1.0 - residual ** 2 / total) if total > 0 else float("nan")


def superposition(thoughts: Tensor, readout: Tensor, name_ids: Sequence[Sequence[int]],
                  graphs: Sequence[ProsQAGraph]) -> Decomposition:
    """Decompose every thought over its item's node names (module docstring).

    thoughts: [n_items, k, d_model] (ThoughtTrace.thoughts: thought k as fed back, final-normalised);
    readout: [vocab, d_model] the unembedding (`model.base.get_output_embeddings().weight`); name_ids: per
    item, the token of each node's name (`layout.name_tokens`); graphs: the items' graphs. Step s is
    thought s + 1, grouped at step s + 1.
    """
    n, k, _ = thoughts.shape
    max_nodes = max(g.n_nodes for g in graphs)
    coef = np.full((n, k, max_nodes), np.nan)
    r2 = np.full((n, k), np.nan)
    share = np.full((n, k, len(GROUPS)), np.nan)
    t = thoughts.detach().double().cpu().numpy()
    u = readout.detach().double().cpu()
    for b, (ids, g) in enumerate(zip(name_ids, graphs)):
        rows = u[list(ids)].numpy()  # [n_nodes, d]
        for s in range(k):
            c, r2[b, s] = decompose(t[b, s], rows)
            coef[b, s, : len(c)] = c
            if c.sum() > 0:
                groups = node_groups(g, s + 1)
                share[b, s] = [c[groups == j].sum() / c.sum() for j in range(len(GROUPS))]
    return Decomposition(coef, r2, share, list(range(1, k + 1)))
