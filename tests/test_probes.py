"""Linear probes: planted features recovered, controls at chance, targets by hand, files, the halting probe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import hashed_as
from probe.data.prosqa import ProsQAItem
from probe.readouts.probes import (LinearProbe, ProbeError, SavedProbe, control_targets, cross_validate, fit_halting_probe,
                          fit_probes, halt_points, halting_eval, probe_targets)
from probe.model.identity import weights_hash

# Tom -> wumpus -> yumpus (target); Tom -> zumpus -> rompus (neg_target); lempus -> rompus (unreached).
ITEM = ProsQAItem(
    question="", steps=("a", "b"), answer="Tom is a yumpus.",
    idx_to_symbol=("Tom", "wumpus", "zumpus", "yumpus", "rompus", "lempus"),
    edges=((0, 1), (0, 2), (1, 3), (2, 4), (5, 4)), root=0, target=3, neg_target=4,
)
NAMES = ["Tom", "extra", "lempus", "rompus", "wumpus", "yumpus", "zumpus"]


def test_targets_by_hand():
    col = {n: j for j, n in enumerate(NAMES)}
    Y, present = probe_targets([ITEM], 1, "frontier", names=NAMES)
    assert present[0].tolist() == [n != "extra" for n in NAMES]
    assert {n for n in NAMES if Y[0, col[n]]} == {"wumpus", "zumpus"}
    Y, _ = probe_targets([ITEM], 1, "reachable", names=NAMES)
    assert {n for n in NAMES if Y[0, col[n]]} == {"Tom", "wumpus", "zumpus"}
    Y, _ = probe_targets([ITEM], 1, "depth", names=NAMES)
    # depths 0, 1, 1, 2, 2; lempus is never reached: capped at the deepest depth + 1 = 3.
    assert [Y[0, col[n]] for n in ("Tom", "wumpus", "zumpus", "yumpus", "rompus", "lempus")] == [0, 1, 1, 2, 2, 3]
    values = np.array([[0.0, 0.5, 0.25, 0.0, 0.0, 0.1]])
    Y, _ = probe_targets([ITEM], 1, "value", names=NAMES, values=values)
    assert Y[0, col["wumpus"]] == 0.5 and Y[0, col["lempus"]] == 0.1
    with pytest.raises(ProbeError, match="unknown probe target 'height'"):
        probe_targets([ITEM], 1, "height", names=NAMES)
    with pytest.raises(ProbeError, match="does not know"):
        probe_targets([ITEM], 1, "frontier", names=["Tom"])


def test_control_task_reassigns_each_names_labels_among_its_items():
    rng = np.random.default_rng(0)
    present = rng.random((50, 12)) < 0.6
    Y = (rng.random((50, 12)) < 0.3) & present
    C = control_targets(Y.astype(float), present, seed=1)
    for j in range(12):  # the same labels per name, only among the items that have the name
        assert sorted(C[present[:, j], j]) == sorted(Y[present[:, j], j].astype(float))
        assert not C[~present[:, j], j].any()
    assert (C != Y).any()


def planted(n=400, d=32, n_out=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(n_out, d))
    return X, X @ W.T, W


def test_a_probe_recovers_a_planted_feature_while_its_control_stays_at_chance():
    X, logits, _ = planted()
    Y = (logits + np.random.default_rng(1).normal(scale=0.5, size=logits.shape) > 0).astype(float)
    present = np.ones_like(Y, bool)
    s = cross_validate(X, Y, present, "classification", folds=5)
    assert s.score > 0.95 and abs(s.control - 0.5) < 0.05 and s.selectivity > 0.4
    probe = LinearProbe("classification").fit(X, Y)
    assert probe.score(X, Y) > 0.95 and probe.predict(X).shape == Y.shape
    assert s.as_dict()["auroc"] == s.score and "control_auroc" in s.as_dict()


def test_a_regression_probe_recovers_planted_values_and_their_ranks():
    X, values, W = planted(d=16, n_out=8)
    present = np.ones_like(values, bool)
    s = cross_validate(X, values, present, "regression", folds=4, alpha=1.0)
    assert s.score > 0.95 and s.spearman > 0.95 and s.control < 0.1
    probe = LinearProbe("regression", alpha=1e-6).fit(X, values)
    np.testing.assert_allclose(probe.coef_, W, atol=1e-3)  # the probe's rows are the planted directions


def test_halt_points_by_hand():
    p = np.array([[0.1, 0.7, 0.9], [0.6, 0.1, 0.1], [0.2, 0.3, 0.4]])
    assert halt_points(p).tolist() == [2, 1, 4]  # never fires: the maximum, 3 + 1 thoughts
    assert halt_points(p, threshold=0.95).tolist() == [4, 4, 4]


def test_saved_probe_round_trip_and_errors(tmp_path):
    X, logits, _ = planted(n=100, d=8, n_out=3)
    p = LinearProbe("classification").fit(X, (logits > 0).astype(float))
    saved = SavedProbe(target="frontier", kind="classification", hook="blocks.1.hook_resid_post", steps=[1],
                       names=["a", "b", "c"], coef=p.coef_[None], intercept=p.intercept_[None], model_hash="h" * 64,
                       metrics={"1": {"auroc": 1.0}})
    saved.save(tmp_path / "pr")
    back = SavedProbe.load(tmp_path / "pr", hashed_as("h" * 64))
    np.testing.assert_allclose(back.probe(1).decision_function(X), p.decision_function(X), rtol=1e-4, atol=1e-4)
    dirs = back.directions(1)
    assert set(dirs) == {"a", "b", "c"} and all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in dirs.values())
    read = back.read(X[:5], 1, ["c", "zz", "a"])  # columns by name; a name it never saw is nan
    p_all = p.predict_proba(X[:5])
    np.testing.assert_allclose(read[:, 0], p_all[:, 2], rtol=1e-4)
    np.testing.assert_allclose(read[:, 2], p_all[:, 0], rtol=1e-4)
    assert np.isnan(read[:, 1]).all() and ((read[:, [0, 2]] > 0) & (read[:, [0, 2]] < 1)).all()
    with pytest.raises(ProbeError, match="fit on another model"):
        SavedProbe.load(tmp_path / "pr", hashed_as("x" * 64))
    with pytest.raises(ProbeError, match="no probe for thought 2"):
        back.probe(2)
    with pytest.raises(ProbeError, match="not a saved probe"):
        SavedProbe.load(tmp_path)
    (tmp_path / "pr" / "probe.safetensors").write_bytes(b"garbage")
    with pytest.raises(ProbeError, match="cannot read the probe"):
        SavedProbe.load(tmp_path / "pr")


@pytest.fixture(scope="module")
def tiny(word_tokenizer):
    from conftest import tiny_base
    from probe.model.coconut import CoconutConfig, CoconutModel
    from probe.model.tokenizer import special_tokens

    sp = special_tokens(word_tokenizer)
    return CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id),
                        CoconutConfig.from_special(sp, max_latent_stage=3)), word_tokenizer


def test_probes_on_a_model_read_its_own_residuals(tiny, official_items):
    from probe.capture.trace import capture

    model, tok = tiny
    items = official_items[:20]
    rep = fit_probes(model, tok, items, "frontier", layer=-1, k_max=2, folds=4, progress=False)
    assert rep.hook == "blocks.1.hook_resid_post" and sorted(rep.scores) == [1, 2]
    assert rep.probe.coef.shape == (2, len(rep.probe.names), model.d_model)
    assert rep.probe.model_hash == weights_hash(model)
    # Refit independently: thought 2's residuals from a capture of our own, each name's frontier_2 labels from
    # the graphs, a StandardScaler over every row and one scikit-learn logistic regression per name on the
    # items that have it. Its logits equal the saved probe's on every item.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from probe.data.graph import ProsQAGraph

    trace = capture(model, tok, items, k=2, names=[rep.hook], progress=False)
    X = trace[rep.hook][:, 1].double().numpy()
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    saved = rep.probe.probe(2).decision_function(X)
    checked = 0
    for j, name in enumerate(rep.probe.names):
        rows = [b for b, it in enumerate(items) if name in it.idx_to_symbol]
        y = [items[b].index(name) in ProsQAGraph.from_item(items[b]).frontier(2) for b in rows]
        if len(set(y)) < 2:
            continue
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(Z[rows], y)
        np.testing.assert_allclose(saved[:, j], clf.decision_function(Z), rtol=1e-4, atol=1e-4, err_msg=name)
        checked += 1
    assert checked >= 5
    with pytest.raises(ProbeError, match="layer 5 is out of range"):
        fit_probes(model, tok, items, "frontier", layer=5, k_max=2)


def test_halting_eval_with_a_probe_that_always_or_never_fires(answering, official_items):
    """On a model that answers some items right and some wrong at every k, so that each item's correctness,
    not just a 0 == 0 accuracy, is compared."""
    from probe.model.evaluate import evaluate

    model, tok = answering
    items = official_items[:12]
    correct = {k: [r.correct for r in evaluate(model, tok, items, k=k, progress=False).items] for k in (0, 1, 3)}
    assert all(0 < sum(c) < len(items) for c in correct.values()), correct  # mixed: the comparison can fail
    saved, scores = fit_halting_probe(model, tok, items, k_max=3, folds=3, progress=False)
    assert saved.target == "halt" and saved.coef.shape == (1, 1, model.d_model) and scores.n_items == 12
    always = SavedProbe(**{**saved.__dict__, "intercept": np.full((1, 1), 50.0), "coef": np.zeros_like(saved.coef)})
    never = SavedProbe(**{**saved.__dict__, "intercept": np.full((1, 1), -50.0), "coef": np.zeros_like(saved.coef)})
    res = halting_eval(model, tok, items, always, progress=False)
    assert res.mean_thoughts == 1 and res.correct.tolist() == correct[1]
    res = halting_eval(model, tok, items, never, progress=False)
    assert res.mean_thoughts == 3 and res.correct.tolist() == correct[3]
    assert res.fixed[3] == pytest.approx(sum(correct[3]) / 12) and res.fixed[0] == pytest.approx(sum(correct[0]) / 12)
    assert json.loads(json.dumps(res.as_dict()))["thoughts_histogram"] == {"3": 12}


def test_absent_names_are_left_out_of_the_fit_and_the_score():
    # Values of 5 + <x, w> where the name is present; absent entries hold 0 and must not pull the fit.
    X, values, _ = planted(n=300, d=12, n_out=4)
    present = np.random.default_rng(3).random(values.shape) < 0.5
    Y = np.where(present, 5.0 + values, 0.0)
    s = cross_validate(X, Y, present, "regression", folds=4, alpha=1.0)
    assert s.score > 0.95
    # Without a penalty the fit is least squares on the present rows alone (the scaling does not matter).
    masked = LinearProbe("regression", alpha=1e-9).fit(X, Y, present)
    alone = LinearProbe("regression", alpha=1e-9).fit(X[present[:, 0]], Y[present[:, 0], :1])
    np.testing.assert_allclose(masked.coef_[0], alone.coef_[0], rtol=1e-6)
    np.testing.assert_allclose(masked.intercept_[0], alone.intercept_[0], rtol=1e-6)
    with pytest.raises(ProbeError, match="present must have Y's shape"):
        LinearProbe().fit(X, Y, present[:, :2])


def test_copies_of_an_item_share_a_fold_and_their_control_labels():
    """The issue's leak on planted data: labels that are noise (nothing to learn), 40 items three times over. Folds
    over rows put copies on both sides and the probe scores what it memorised; folds by content do not."""
    from sklearn.model_selection import KFold

    from probe.data.splits import content_folds

    rng = np.random.default_rng(0)
    X1, Y1 = rng.normal(size=(40, 64)), (rng.random((40, 2)) < 0.5).astype(float)
    X, Y, present = np.tile(X1, (3, 1)), np.tile(Y1, (3, 1)), np.ones((120, 2), bool)
    groups = np.tile(np.arange(40), 3)
    leaked = cross_validate(X, Y, present, "classification", folds=5, C=0.1)
    honest = cross_validate(X, Y, present, "classification", folds=5, groups=groups, C=0.1)
    assert leaked.score > 0.9 and leaked.duplicates_merged == 0  # what every fit did before
    assert honest.score < 0.7 and honest.duplicates_merged == 80
    assert honest.as_dict()["duplicates_merged"] == 80
    for train, test in content_folds(groups, 5, seed=3):
        assert not set(groups[train]) & set(groups[test]) and len(train) + len(test) == 120
    # Without copies the folds are KFold's, so scores of distinct items do not move.
    for (a_tr, a_te), (b_tr, b_te) in zip(content_folds(np.arange(30), 4, seed=2),
                                          KFold(4, shuffle=True, random_state=2).split(np.arange(30))):
        assert a_te.tolist() == b_te.tolist() and a_tr.tolist() == b_tr.tolist()
    # Control labels are drawn among distinct items: every copy gets its first copy's; distinct items as before.
    C = control_targets(Y, present, seed=1, groups=groups)
    np.testing.assert_array_equal(C[:40], C[40:80])
    np.testing.assert_array_equal(C[:40], C[80:])
    np.testing.assert_array_equal(control_targets(Y1, present[:40], seed=1, groups=np.arange(40)),
                                  control_targets(Y1, present[:40], seed=1))
    with pytest.raises(ProbeError, match=r"folds must be in \[2, 40\] for 120 items \(40 distinct\), got 41"):
        cross_validate(X, Y, present, "classification", folds=41, groups=groups)
    with pytest.raises(ProbeError, match=r"groups must be \[120\]"):
        cross_validate(X, Y, present, "classification", groups=groups[:5])


def _spy_folds(monkeypatch) -> list:
    """Record the folds every fit of probe.readouts.probes draws (the real content_folds)."""
    import probe.readouts.probes as probes_module

    seen, real = [], probes_module.content_folds

    def spy(groups, folds, seed=0, error=ValueError):
        out = real(groups, folds, seed, error)
        seen.extend(out)
        return out

    monkeypatch.setattr(probes_module, "content_folds", spy)
    return seen


def test_probes_and_the_halting_probe_keep_an_items_copies_in_one_fold(tiny, answering, official_items, monkeypatch):
    from probe.data.prosqa import item_key

    seen = _spy_folds(monkeypatch)
    items = official_items[:5] + official_items[:3]  # 8 items, 5 distinct: 3 copies
    model, tok = tiny
    rep = fit_probes(model, tok, items, "frontier", k_max=1, folds=2, progress=False)
    model, tok = answering
    halt_items = official_items[:3] * 2  # 6 items, 3 distinct
    _, scores = fit_halting_probe(model, tok, halt_items, k_max=2, folds=2, progress=False)
    assert (rep.duplicates_merged, rep.as_dict()["duplicates_merged"], scores.duplicates_merged) == (3, 3, 3)
    assert len(seen) == 4  # two folds of the frontier probe, two of the halting probe
    for split, (train, test) in zip([items] * 2 + [halt_items] * 2, seen):
        assert not {item_key(split[i]) for i in train} & {item_key(split[i]) for i in test}
    with pytest.raises(ProbeError, match=r"at least two distinct items for its folds, got 3 items \(1 distinct\)"):
        fit_halting_probe(model, tok, [items[0]] * 3, progress=False)
