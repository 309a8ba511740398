"""Linear probes on captured thoughts (scikit-learn), with control tasks, and the halting probe.

A probe reads one activation per item (a layer's residual at the position emitting thought k)
and predicts one target per node *name* of the data set's name vocabulary: frontier or
reachable-within-k membership (classification), the frontier values of `probe analyze`, or
depth (regression). Names absent from an item are left out of every score (`present`).
Control task (Hewitt and Liang 2019): per node name, the labels are reassigned at random among
the items that have that name, so the control keeps each name's label statistics but not the
link between an item and its labels; selectivity = score - control score. Splits are by item content: every copy
of an item (`prosqa.duplicates`) is in one fold, and a copy gets its original's control labels.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from probe.artifacts import PROBE_CONFIG, PROBE_WEIGHTS
from probe.data.graph import ProsQAGraph
from probe.atomic import atomic_directory, atomic_write_text
from probe.data.prosqa import ProsQAItem, duplicates
from probe.data.render import node_names
from probe.data.splits import check_folds, content_folds
from probe.model.finite import check_finite_tensors
from probe.readouts.fitted import Fitted
from probe.formats import check_version, read_field, read_json_object
from probe.model.architecture import architecture
from probe.model.hook_names import RESID, act_name, layer_index
from probe.model.identity import weights_hash

TARGETS = ("frontier", "reachable", "value", "depth")
CLASSIFICATION = ("frontier", "reachable")
KINDS = ("classification", "regression")  # LinearProbe's kinds
PROBE_FORMAT = 1
RIDGE_ALPHAS = tuple(np.logspace(-2, 4, 13))


class ProbeError(ValueError):
    """A probe that cannot be fit, scored or loaded (bad target, shapes, file or model)."""


# ---------------------------------------------------------------------------- targets


def name_vocabulary(items: Sequence[ProsQAItem], fmt: str = "sentences") -> list[str]:
    """Every node name of a data set as the format writes it (`probe.data.render.node_names`: in RbS's layout the
    node's index, which is its token), sorted: the columns of a probe's targets."""
    return sorted({n for it in items for n in node_names(it, fmt)})


def probe_targets(
    items: Sequence[ProsQAItem], k: int, target: str, *, names: Sequence[str], values: np.ndarray | None = None,
    fmt: str = "sentences",
) -> tuple[np.ndarray, np.ndarray]:
    """(Y, present), each [n_items, n_names], for one thought k.

    frontier: depth == k; reachable: depth <= k; depth: BFS depth, capped at (deepest node + 1) for
    nodes the root never reaches; value: the node's value after k thoughts (values: [n_items, max_nodes]).
    """
    if target not in TARGETS:
        raise ProbeError(f"unknown probe target {target!r}; expected one of {TARGETS}")
    if target == "value" and values is None:
        raise ProbeError("the value target needs the node values after k thoughts")
    col = {n: j for j, n in enumerate(names)}
    Y = np.zeros((len(items), len(names)))
    present = np.zeros((len(items), len(names)), dtype=bool)
    cap = 1 + max(int(np.nanmax(np.where(np.isfinite(g.depth), g.depth, np.nan)))
                  for g in (ProsQAGraph.from_item(it) for it in items))
    for b, it in enumerate(items):
        g = ProsQAGraph.from_item(it)
        for v, name in enumerate(node_names(it, fmt)):
            if name not in col:
                raise ProbeError(f"item {b} has the node name {name!r}, which this probe does not know")
            j = col[name]
            present[b, j] = True
            d = g.depth[v]
            Y[b, j] = {"frontier": d == k, "reachable": d <= k, "depth": min(d, cap),
                       "value": values[b, v] if values is not None else 0.0}[target]
    return Y, present


def control_targets(Y: np.ndarray, present: np.ndarray, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """The control task [n_items, n_names]: per node name, its labels reassigned at random among the items that have it.

    Each name keeps its own label distribution (so a probe may still learn base rates), but which
    item gets which label no longer depends on the item. groups [n_items] (`Duplicates.groups`; default: every
    row its own item): the labels are drawn among distinct items and every copy gets its first copy's control
    labels, as Hewitt and Liang give each word type one label.
    """
    groups = np.arange(len(Y)) if groups is None else np.asarray(groups)
    _, first, back = np.unique(groups, return_index=True, return_inverse=True)
    rng = np.random.default_rng(seed)
    out = Y[first].copy()
    for j in range(Y.shape[1]):
        rows = np.flatnonzero(present[first, j])
        out[rows, j] = Y[first[rng.permutation(rows)], j]
    return out[back]


# ---------------------------------------------------------------------------- the probe


class LinearProbe(BaseEstimator):
    """A linear probe per output column: logistic regression (classification) or ridge (regression).

    Regression's ridge penalty is chosen per column by leave-one-out over RIDGE_ALPHAS unless alpha is given.

    fit(X [n, d], Y [n, n_out], present) standardises X and fits each column on the rows that have
    its name; `coef_` [n_out, d] and `intercept_` [n_out] are the
    probe in the original activation space (decision = X @ coef_.T + intercept_), so its rows are
    directions an intervention can add. A classification column with one class only is constant.
    """

    def __init__(self, kind: str = "classification", C: float = 1.0, alpha: float | None = None,
                 max_iter: int = 2000):
        self.kind = kind
        self.C = C
        self.alpha = alpha
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, Y: np.ndarray, present: np.ndarray | None = None) -> "LinearProbe":
        """Fit each column on the rows where it is present (default: all rows)."""
        X, Y = _check_xy(X, Y)
        if self.kind not in KINDS:
            raise ProbeError(f"kind must be 'classification' or 'regression', got {self.kind!r}")
        present = np.ones(Y.shape, bool) if present is None else np.asarray(present, bool)
        if present.shape != Y.shape:
            raise ProbeError(f"present must have Y's shape {list(Y.shape)}, got {list(present.shape)}")
        scaler = StandardScaler().fit(X)
        # A column that varies only by float rounding is constant: standardising it would turn that rounding into
        # z-scores of millions on held-out rows (StandardScaler leaves only exactly constant columns unscaled).
        tiny = scaler.scale_ < 1e-5 * np.sqrt(np.mean(np.square(X)))
        scaler.scale_ = np.where(tiny, 1.0, scaler.scale_)
        Z = scaler.transform(X)
        W = np.zeros((Y.shape[1], X.shape[1]))
        b = np.zeros(Y.shape[1])
        for j in range(Y.shape[1]):
            rows = present[:, j]
            if not rows.any():
                continue  # a name never seen in training: no direction, decision 0
            if self.kind == "regression":
                # alpha None: chosen per name by efficient leave-one-out over a grid (RidgeCV)
                reg = (RidgeCV(alphas=RIDGE_ALPHAS) if self.alpha is None else Ridge(alpha=self.alpha))
                reg.fit(Z[rows], Y[rows, j])
                W[j], b[j] = reg.coef_, reg.intercept_
                continue
            y = Y[rows, j] > 0.5
            if y.all() or not y.any():
                b[j] = 30.0 if y.all() else -30.0  # a constant column: certain, and no direction
                continue
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(Z[rows], y)
            W[j], b[j] = clf.coef_[0], clf.intercept_[0]
        self.coef_ = W / scaler.scale_
        self.intercept_ = b - self.coef_ @ scaler.mean_
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """[n, n_out] logits (classification) or predictions (regression)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ProbeError(f"X must be [n, {self.n_features_in_}], got {list(X.shape)}")
        return X @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        s = self.decision_function(X)
        return (s > 0).astype(float) if self.kind == "classification" else s

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """[n, n_out] probability of each label (classification)."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(X)))

    def score(self, X: np.ndarray, Y: np.ndarray, present: np.ndarray | None = None) -> float:
        """AUROC (classification) or R² (regression) over the present (item, name) pairs."""
        s = self.decision_function(X)
        return float(pooled_score(self.kind, Y, s, np.ones_like(Y, bool) if present is None else present))


def _check_xy(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ProbeError(f"X must be [n, d] and Y [n, n_out] with the same n, got {list(X.shape)} and {list(Y.shape)}")
    if len(X) < 2:
        raise ProbeError("a probe needs at least two rows")
    return X, Y


def pooled_score(kind: str, Y: np.ndarray, S: np.ndarray, present: np.ndarray) -> float:
    """AUROC or R² of scores S against targets Y, pooled over the present entries (nan if undefined)."""
    y, s = Y[present], S[present]
    if kind == "classification":
        return float(roc_auc_score(y > 0.5, s)) if 0 < (y > 0.5).sum() < len(y) else float("nan")
    return float(r2_score(y, s)) if len(y) > 1 and np.var(y) > 0 else float("nan")


def mean_spearman(Y: np.ndarray, S: np.ndarray, present: np.ndarray) -> float:
    """Rank correlation of predicted and true targets within each item's nodes, averaged over items."""
    rs = []
    for b in range(len(Y)):
        y, s = Y[b, present[b]], S[b, present[b]]
        if len(y) > 2 and np.ptp(y) > 0 and np.ptp(s) > 0:
            rs.append(spearmanr(y, s).statistic)
    return _nanmean(rs)


# ---------------------------------------------------------------------------- cross-validation


def _nanmean(xs: Sequence[float]) -> float:
    """Mean of the defined scores (nan when a fold had one class only); nan, silently, when none is."""
    x = np.asarray(xs, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _nanstd(xs: Sequence[float]) -> float:
    x = np.asarray(xs, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.std()) if len(x) else float("nan")


@dataclass(kw_only=True, frozen=True)
class ProbeScores:
    """Cross-validated scores of one probe on one step, beside its control task."""

    k: int
    kind: str
    score: float  # AUROC (classification) or R² (regression), mean over folds
    score_std: float
    control: float  # the same probe on the control task
    spearman: float  # regression only: within-item rank correlation (nan for classification)
    n_items: int
    duplicates_merged: int = 0  # items that were copies of an earlier item, kept in its fold (prosqa.Duplicates.merged)

    @property
    def selectivity(self) -> float:
        return self.score - self.control

    def as_dict(self) -> dict[str, float]:
        """The report's form: auroc/control_auroc (classification) or r2/control_r2 (regression)."""
        key = "auroc" if self.kind == "classification" else "r2"
        out = {key: self.score, f"{key}_std": self.score_std, f"control_{key}": self.control,
               "selectivity": self.selectivity, "n_items": self.n_items, "duplicates_merged": self.duplicates_merged}
        if self.kind == "regression":
            out["spearman"] = self.spearman
        return out


def items_for_folds(folds: int, rows_per_item: int = 1, fewer_folds: bool = False) -> int:
    """The fewest items n that cross-validation with `folds` folds over items runs on (with fewer_folds, min(folds,
    n) folds, as the halting probe takes): every fold's probe is fit on the other folds' items (KFold holds out up
    to ceil(n / folds) of n), at least two rows (a probe's minimum) with `rows_per_item` rows per item."""
    n = 2 if fewer_folds else max(folds, 2)
    while (n - -(-n // min(folds, n))) * rows_per_item < 2:
        n += 1
    return n


def cross_validate(
    X: np.ndarray, Y: np.ndarray, present: np.ndarray, kind: str, *, k: int = 0, folds: int = 5, seed: int = 0,
    groups: np.ndarray | None = None, **probe_kw,
) -> ProbeScores:
    """Fit and score a probe with folds over items, on the task and on its control task.

    X [n_items, d], Y and present [n_items, n_out]; groups [n_items] the items' content groups
    (`prosqa.duplicates(items).groups`; default: all distinct): copies of an item share a fold and their control
    labels. Raises ProbeError for bad shapes or folds outside [2, distinct items].
    """
    X, Y = _check_xy(X, Y)
    groups = np.arange(len(X)) if groups is None else np.asarray(groups)
    if groups.shape != (len(X),):
        raise ProbeError(f"groups must be [{len(X)}], one per item, got {list(groups.shape)}")
    if folds < 2:
        raise ProbeError(f"folds must be at least 2, got {folds}")
    if len(X) < (need := items_for_folds(folds)):
        raise ProbeError(f"{len(X)} items are too few for {folds} folds: each fold's probe is fit on the other folds' "
                         f"items, at least 2 of them (give at least {need} items or fewer folds)")
    Yc = control_targets(Y, present, seed, groups)
    scores, controls, spear = [], [], []
    for train, test in content_folds(groups, folds, seed, ProbeError):
        for y, out in ((Y, scores), (Yc, controls)):
            p = LinearProbe(kind, **probe_kw).fit(X[train], y[train], present[train])
            s = p.decision_function(X[test])
            out.append(pooled_score(kind, y[test], s, present[test]))
            if y is Y and kind == "regression":
                spear.append(mean_spearman(y[test], s, present[test]))
    return ProbeScores(k=k, kind=kind, score=_nanmean(scores), score_std=_nanstd(scores), control=_nanmean(controls),
                       spearman=_nanmean(spear), n_items=len(X), duplicates_merged=len(X) - len(np.unique(groups)))


# ---------------------------------------------------------------------------- saved probes


@dataclass(kw_only=True)
class SavedProbe(Fitted):
    """Probes of one target at one layer, one per thought k, with what they were fit on.

    A Fitted reader (probe.readouts.fitted): `fit_probes` and `fit_halting_probe` fit it from a model and record that
    model's `weights_hash` (`model_hash`, also `model_hash_`); `check(model)` and `load(path, model)` refuse a
    probe of another model, or one recording no hash, with ProbeError.
    """

    hash_of = staticmethod(weights_hash)
    error = ProbeError

    target: str
    kind: str
    hook: str  # e.g. "blocks.3.hook_resid_post"
    steps: list[int]  # the k of each probe
    names: list[str]  # output columns (node names), or ["correct"] for the halting probe
    coef: np.ndarray  # [n_steps, n_out, d_model]
    intercept: np.ndarray  # [n_steps, n_out]
    model_hash: str  # weights_hash of the model whose activations it was fit on
    metrics: dict = field(default_factory=dict)

    @property
    def model_hash_(self) -> str:
        """The recorded hash (`model_hash`), under the name of the contract every fitted reader shares."""
        return self.model_hash

    def probe(self, k: int) -> LinearProbe:
        """The fitted probe of thought k."""
        if k not in self.steps:
            raise ProbeError(f"no probe for thought {k}; this file has {self.steps}")
        p = LinearProbe(self.kind)
        i = self.steps.index(k)
        p.coef_, p.intercept_, p.n_features_in_ = self.coef[i], self.intercept[i], self.coef.shape[-1]
        return p

    def directions(self, k: int) -> dict[str, np.ndarray]:
        """Unit probe direction [d_model] per name at thought k (for steering)."""
        if k not in self.steps:
            raise ProbeError(f"no probe for thought {k}; this file has {self.steps}")
        W = self.coef[self.steps.index(k)]
        return {n: w / np.linalg.norm(w) for n, w in zip(self.names, W) if np.linalg.norm(w) > 0}

    def read(self, X: np.ndarray, k: int, names: Sequence[str]) -> np.ndarray:
        """[n, len(names)] the probe's output at thought k on activations X [n, d] (a probability for a
        classification probe), for each name; nan for a name it was not fit on."""
        p = self.probe(k)
        out = p.predict_proba(X) if self.kind == "classification" else p.predict(X)
        col = {n: j for j, n in enumerate(self.names)}
        return np.stack([out[:, col[n]] if n in col else np.full(len(out), np.nan) for n in names], axis=1)

    def save(self, path: str | os.PathLike) -> Path:
        """probe.safetensors (coef, intercept) and probe.json (everything else) in a directory written atomically."""
        with atomic_directory(path, replace=True) as tmp:
            self.write_into(tmp)
        return Path(path)

    def write_into(self, directory: Path) -> None:
        """The probe's two files, into an existing directory."""
        save_file({"coef": np.ascontiguousarray(self.coef, dtype=np.float32),
                   "intercept": np.ascontiguousarray(self.intercept, dtype=np.float32)},
                  str(directory / PROBE_WEIGHTS))
        meta = {k: v for k, v in asdict(self).items() if k not in ("coef", "intercept")}
        atomic_write_text(directory / PROBE_CONFIG, json.dumps({"format": PROBE_FORMAT, **meta}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, target: str | None = None) -> "SavedProbe":
        """Read a saved probe (probe.json: format by probe.formats.check_version, every field checked; the tensors'
        shapes against it: coef [steps, names, d_model], intercept [steps, names]); with model, refuse one that
        `check(model)` refuses; with target, one of another target (the halting probe's is "halt"). Raises
        ProbeError in one line naming the file."""
        path = Path(path)
        return cls._read(path, target)._checked(path, model)

    @classmethod
    def _read(cls, path: Path, target: str | None = None) -> "SavedProbe":
        meta_file, weights = path / PROBE_CONFIG, path / PROBE_WEIGHTS
        if not meta_file.is_file() or not weights.is_file():
            raise ProbeError(f"{path}: not a saved probe (needs probe.json and probe.safetensors)")
        meta = read_json_object(meta_file, ProbeError, PROBE_CONFIG)
        check_version(meta.get("format"), PROBE_FORMAT, str(meta_file), "format", ProbeError)
        src = str(meta_file)
        fields = {"target": read_field(meta, "target", str, src, ProbeError, choices=(*TARGETS, "halt")),
                  "kind": read_field(meta, "kind", str, src, ProbeError, choices=KINDS),
                  "hook": read_field(meta, "hook", str, src, ProbeError),
                  "steps": read_field(meta, "steps", list, src, ProbeError, items=int),
                  "names": read_field(meta, "names", list, src, ProbeError, items=str),
                  "model_hash": read_field(meta, "model_hash", str, src, ProbeError),
                  "metrics": read_field(meta, "metrics", dict, src, ProbeError, default={})}
        try:
            tensors = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise ProbeError(f"{path}: cannot read the probe ({type(e).__name__}: {e})") from None
        if missing := [k for k in ("coef", "intercept") if k not in tensors]:
            raise ProbeError(f"{weights}: holds no tensor {missing[0]!r}; the file is damaged: fit the probe again")
        if target is not None and fields["target"] != target:
            wrote = "`probe probes halt`" if target == "halt" else f"`probe probes fit --target {target}`"
            raise ProbeError(f"{meta_file}: a {fields['target']!r} probe, not the {target!r} probe asked for; give "
                             f"one that {wrote} wrote")
        check_finite_tensors(tensors.items(), str(weights), ProbeError)
        probe = cls(coef=tensors["coef"].astype(np.float64), intercept=tensors["intercept"].astype(np.float64),
                    **fields)
        shape = [len(probe.steps), len(probe.names)]
        if probe.coef.ndim != 3 or list(probe.coef.shape[:2]) != shape:
            raise ProbeError(f"{weights}: coef has shape {list(probe.coef.shape)}, expected [{shape[0]}, {shape[1]}, "
                             "d_model] (one row per thought and name of probe.json)")
        if list(probe.intercept.shape) != shape:
            raise ProbeError(f"{weights}: intercept has shape {list(probe.intercept.shape)}, expected {shape} (one "
                             "per thought and name of probe.json)")
        return probe

    def _unhashed(self) -> str:
        return "this probe records no model hash, so nothing ties it to a model; fit it again"

    def _another_model(self, ours: str, theirs: str) -> str:
        return f"this probe was fit on another model (weights hash {ours[:12]}..., this model {theirs[:12]}...)"


def activations_at(trace, hook: str, k: int) -> np.ndarray:
    """[n_items, d] the hook's activation at the position emitting thought k (step k - 1 of the trace)."""
    return trace[hook][:, k - 1].float().numpy()


def halt_points(p_correct: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """[n_items] thoughts to use: the first k (1-based column) whose P(correct) >= threshold, else the last + 1.

    p_correct: [n_items, K - 1] the halting probe's probability after thoughts 1..K-1.
    """
    fires = p_correct >= threshold
    first = np.argmax(fires, axis=1) + 1
    return np.where(fires.any(axis=1), first, p_correct.shape[1] + 1)


# ---------------------------------------------------------------------------- on a model


@dataclass(frozen=True)
class ProbeReport:
    """Probes of one target at one layer for thoughts 1..k_max: cross-validated scores and the fitted probes."""

    target: str
    hook: str
    scores: dict[int, ProbeScores]
    probe: SavedProbe

    @property
    def duplicates_merged(self) -> int:
        """Items that were copies of an earlier item, kept in its fold (the same at every k)."""
        return next(iter(self.scores.values())).duplicates_merged

    def as_dict(self) -> dict:
        return {"target": self.target, "hook": self.hook, "kind": self.probe.kind,
                "duplicates_merged": self.duplicates_merged,
                "steps": {str(k): s.as_dict() for k, s in self.scores.items()}}


def resid_hook(model, layer: int) -> str:
    """The residual-stream hook name of a layer (negative layers count from the end)."""
    return act_name(RESID, layer_index(layer, architecture(model).n_layers, ProbeError))


def fit_probes(
    model, tokenizer, items: Sequence[ProsQAItem], target: str, *, layer: int = -1, k_max: int | None = None,
    folds: int = 5, seed: int = 0, batch_size: int = 32, progress: bool = True, **probe_kw,
) -> ProbeReport:
    """Capture the layer's residual at every thought, then cross-validate (folds over items by content: copies of an
    item share a fold) and fit one probe per thought k on every item; its SavedProbe records the model's
    weights_hash. Raises ProbeError for a bad target, layer, k_max or folds (more than the distinct items)."""
    from probe.capture.trace import capture
    from probe.readouts.values import values_by_k

    if target not in TARGETS:
        raise ProbeError(f"unknown probe target {target!r}; expected one of {TARGETS}")
    items = list(items)
    hook = resid_hook(model, layer)
    k_max = model.config.thought_count(k_max, 1, "k_max", ProbeError, "probes need a thought")
    groups = duplicates(items).groups
    check_folds(groups, folds, ProbeError)  # folds past the distinct items: refused before the capture
    trace = capture(model, tokenizer, items, k=k_max, names=[hook], batch_size=batch_size, progress=progress)
    fmt = model.config.data_format
    names = name_vocabulary(items, fmt)
    kind = "classification" if target in CLASSIFICATION else "regression"
    scores, coefs, biases = {}, [], []
    values = None
    if target == "value":
        values = values_by_k(model, tokenizer, items, k_max, batch_size=batch_size, progress=False)
    for k in range(1, k_max + 1):
        Y, present = probe_targets(items, k, target, names=names, values=None if values is None else values[:, k - 1],
                                   fmt=fmt)
        X = activations_at(trace, hook, k)
        scores[k] = cross_validate(X, Y, present, kind, k=k, folds=folds, seed=seed, groups=groups, **probe_kw)
        p = LinearProbe(kind, **probe_kw).fit(X, Y, present)
        coefs.append(p.coef_)
        biases.append(p.intercept_)
    saved = SavedProbe(target=target, kind=kind, hook=hook, steps=list(scores), names=names, coef=np.stack(coefs),
                       intercept=np.stack(biases), model_hash=SavedProbe.hash_of(model),
                       metrics={str(k): s.as_dict() for k, s in scores.items()})
    return ProbeReport(target, hook, scores, saved)


@dataclass(frozen=True)
class HaltResult:
    """Accuracy when a halting probe ends each item's thoughts, beside every fixed k."""

    accuracy: float
    mean_thoughts: float
    thoughts: np.ndarray  # [n_items] thoughts each item used
    correct: np.ndarray  # [n_items] bool
    fixed: dict[int, float]  # accuracy at fixed k = 0..k_max

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "mean_thoughts": self.mean_thoughts,
                "fixed": {str(k): a for k, a in self.fixed.items()},
                "thoughts_histogram": {str(int(k)): int((self.thoughts == k).sum()) for k in np.unique(self.thoughts)}}


def _correct_by_k(model, tokenizer, items, k_max: int, batch_size: int) -> np.ndarray:
    from probe.model.evaluate import evaluate

    return np.stack([[r.correct for r in evaluate(model, tokenizer, items, k=k, batch_size=batch_size,
                                                  progress=False).items] for k in range(k_max + 1)], axis=1)


def _halt_features(model, tokenizer, items, hook: str, k_max: int, batch_size: int, progress: bool) -> np.ndarray:
    """[n_items, k_max - 1, d]: the activation at the position holding thought k (k = 1..k_max-1)."""
    from probe.capture.trace import capture

    trace = capture(model, tokenizer, items, k=k_max, names=[hook], batch_size=batch_size, progress=progress)
    return trace[hook][:, 1:k_max].float().numpy()  # step s (0-based) holds thought s as its input


def fit_halting_probe(
    model, tokenizer, items: Sequence[ProsQAItem], *, layer: int = -1, k_max: int | None = None, folds: int = 5,
    seed: int = 0, batch_size: int = 32, progress: bool = True,
) -> tuple[SavedProbe, ProbeScores]:
    """A probe that reads, after thought k, whether forcing <|end-latent|> now already gives the right answer.

    Cross-validated with min(folds, distinct items) folds over items by content (every thought of an item, and every
    copy of it, in one fold) against labels shuffled over (item, k) rows; the SavedProbe records the model's
    weights_hash. Raises ProbeError for a bad layer or k_max, or fewer than two distinct items."""
    items = list(items)
    hook = resid_hook(model, layer)
    k_max = model.config.thought_count(k_max, 2, "k_max", ProbeError, "a halting probe needs a choice to stop early")
    if len(items) < (need := items_for_folds(folds, k_max - 1, fewer_folds=True)):
        raise ProbeError(f"{len(items)} item(s) are too few for the halting probe with k_max={k_max}: its folds over "
                         f"items leave a fold's probe fewer than 2 rows ({k_max - 1} per item); give at least {need} "
                         "items")
    dup = duplicates(items)
    if dup.n_distinct < 2:
        raise ProbeError(f"a halting probe needs at least two distinct items for its folds, got {len(items)} items "
                         f"({dup.n_distinct} distinct)")
    feats = _halt_features(model, tokenizer, items, hook, k_max, batch_size, progress)  # [n, K-1, d]
    correct = _correct_by_k(model, tokenizer, items, k_max, batch_size)[:, 1:k_max]  # [n, K-1]
    n, steps, d = feats.shape
    X, y = feats.reshape(n * steps, d), correct.reshape(n * steps, 1).astype(float)
    # Folds over items by content: every step of an item, and of its copies, on one side.
    item_of = np.repeat(np.arange(n), steps)
    shuffled = np.random.default_rng(seed).permutation(y[:, 0])[:, None]  # control: labels shuffled over rows
    aucs, ctrl = [], []
    for train_items, test_items in content_folds(dup.groups, min(folds, dup.n_distinct), seed, ProbeError):
        tr, te = np.isin(item_of, train_items), np.isin(item_of, test_items)
        for labels, out in ((y, aucs), (shuffled, ctrl)):
            p = LinearProbe("classification").fit(X[tr], labels[tr])
            out.append(pooled_score("classification", labels[te], p.decision_function(X[te]),
                                    np.ones_like(labels[te], bool)))
    scores = ProbeScores(k=0, kind="classification", score=_nanmean(aucs), score_std=_nanstd(aucs),
                         control=_nanmean(ctrl), spearman=float("nan"), n_items=n,
                         duplicates_merged=dup.merged)
    p = LinearProbe("classification").fit(X, y)
    saved = SavedProbe(target="halt", kind="classification", hook=hook, steps=[k_max], names=["correct"],
                       coef=p.coef_[None], intercept=p.intercept_[None], model_hash=SavedProbe.hash_of(model),
                       metrics={"cv": scores.as_dict(), "k_max": k_max, "positive_rate": float(y.mean())})
    return saved, scores


def halting_eval(
    model, tokenizer, items: Sequence[ProsQAItem], saved: SavedProbe, *, threshold: float = 0.5, batch_size: int = 32,
    progress: bool = True,
) -> HaltResult:
    """Stop each item's thoughts when the halting probe fires (at most its trained maximum) and score the answers."""
    from probe.data.render import render_prompt, tokenize_item
    from probe.model.evaluate import evaluate

    if saved.target != "halt":
        raise ProbeError(f"a {saved.target!r} probe is not a halting probe")
    items = list(items)
    k_max = saved.steps[0]
    feats = _halt_features(model, tokenizer, items, saved.hook, k_max, batch_size, progress)
    p = saved.probe(k_max)
    p_correct = p.predict_proba(feats.reshape(-1, feats.shape[-1]))[:, 0].reshape(len(items), k_max - 1)
    ks = halt_points(p_correct, threshold)
    cfg = model.config
    prompts = [render_prompt(tokenize_item(it, tokenizer, cfg.data_format), int(k), cfg.stage_spec, cfg.special)
               for it, k in zip(items, ks)]
    res = evaluate(model, tokenizer, items, prompts=prompts, batch_size=batch_size, progress=False)
    correct = np.array([r.correct for r in res.items])
    fixed = _correct_by_k(model, tokenizer, items, k_max, batch_size).mean(axis=0)
    return HaltResult(float(correct.mean()), float(ks.mean()), ks, correct, {k: float(a) for k, a in enumerate(fixed)})
