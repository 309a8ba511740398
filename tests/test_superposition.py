"""The superposition decomposition on planted thoughts with known coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.analyses.frontier import FRONTIER, OPTIMAL, REACHABLE, UNREACHABLE
from probe.analyses.superposition import decompose, superposition
from tests.test_frontier import G, H


def test_planted_thoughts_give_back_their_coefficients_r2_and_group_shares():
    d, vocab = 24, 40
    gen = torch.Generator().manual_seed(0)
    readout = torch.randn(vocab, d, generator=gen, dtype=torch.float64)
    names = [[3, 5, 7, 11, 13, 17, 19], [20, 21, 22, 23, 24]]  # G's and H's node-name tokens
    u = lambda b, v: readout[names[b][v]]  # noqa: E731
    # A vector orthogonal to every row of G's names: what no combination of them can explain.
    rows = readout[names[0]]
    e = torch.randn(d, generator=gen, dtype=torch.float64)
    e = e - rows.T @ torch.linalg.lstsq(rows.T, e).solution
    t = torch.zeros(2, 2, d, dtype=torch.float64)
    t[0, 0] = 2 * u(0, 1) + u(0, 2)  # G step 1: optimal node 1 (2), frontier node 2 (1)
    t[0, 1] = 0.5 * u(0, 3) + 0.5 * u(0, 0) + e  # G step 2: optimal node 3, reachable root, plus e
    t[1, 0] = 3 * u(1, 4)  # H step 1: node 4, frontier and not optimal
    t[1, 1] = -u(1, 1)  # no non-negative combination makes a negative of a row
    dec = superposition(t.float(), readout.float(), names, [G, H])
    np.testing.assert_allclose(dec.coef[0, 0], [0, 2, 1, 0, 0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(dec.coef[0, 1], [0.5, 0, 0, 0.5, 0, 0, 0], atol=1e-4)
    np.testing.assert_allclose(dec.coef[1, 0, :5], [0, 0, 0, 0, 3], atol=1e-4)
    assert np.isnan(dec.coef[1, :, 5:]).all()  # H has 5 nodes
    np.testing.assert_allclose(dec.r2[0, 0], 1.0, atol=1e-6)
    want = 1 - float(e @ e) / float(t[0, 1] @ t[0, 1])
    np.testing.assert_allclose(dec.r2[0, 1], want, atol=1e-5)
    assert 0 < want < 1
    np.testing.assert_allclose(dec.share[0, 0], [2 / 3, 1 / 3, 0, 0], atol=1e-5)
    np.testing.assert_allclose(dec.share[0, 1], [0.5, 0, 0.5, 0], atol=1e-5)  # node 3 optimal_2, root reachable
    np.testing.assert_allclose(dec.share[1, 0, [OPTIMAL, FRONTIER, REACHABLE, UNREACHABLE]], [0, 1, 0, 0], atol=1e-5)
    np.testing.assert_allclose(dec.frontier_share[0], [1.0, 0.5], atol=1e-5)
    assert (dec.coef[1, 1, :5] >= 0).all() and dec.r2[1, 1] < 0.99
    report = dec.as_dict()
    assert report["1"]["share"]["optimal"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-5)
    assert report["1"]["r2"] == pytest.approx(1.0, abs=1e-5)


def test_a_zero_thought_has_no_fit():
    coef, r2 = decompose(np.zeros(4), np.eye(4)[:2])
    assert coef.tolist() == [0.0, 0.0] and np.isnan(r2)
    dec = superposition(torch.zeros(1, 1, 8), torch.eye(8), [[0, 1, 2, 3, 4, 5, 6]], [G])
    assert np.isnan(dec.share[0, 0]).all() and np.isnan(dec.r2[0, 0])
