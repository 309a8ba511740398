"""Sparse autoencoders on continuous thoughts: a TopK SAE (Gao et al. 2024; ReLU + L1 optional) in torch.

Follows scikit-learn's contract (fit / transform / score, hyper-parameters in __init__, learned
state in attributes ending in `_`) and trains on any [n, d_in] activations, so where the
activations come from stays outside. Files use SAELens's format without importing SAELens:
cfg.json (architecture, d_in, d_sae, k, a `metadata` block with the hook name and
sae_lens_version) and sae_weights.safetensors (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc,
b_dec); what SAELens has no field for (our training record, the model hash) goes in
coconut_probe.json beside them. As in SAELens, encode(x) = act((x - b_dec) @ W_enc + b_enc)
and decode(f) = f @ W_dec + b_dec.

`load` reads any SAE directory SAELens's load_from_disk reads, in each of its layouts, the way SAELens reads it
(probe.readouts.saelens_files, docs/formats.md): standard, topk, jumprelu and gated SAEs, with their dtype,
apply_b_dec_to_input, normalize_activations, rescale_acts_by_decoder_norm and finetuning scaling factor; what it
cannot read faithfully it refuses in one line naming the field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import rankdata
from torch import Tensor
from tqdm.auto import tqdm

from probe.artifacts import SAE_CFG, SAE_EXTRA, SAE_WEIGHTS
from probe.atomic import atomic_directory, atomic_write_text
from probe.model.finite import check_finite_tensors
from probe.readouts.fitted import Fitted
from probe.model.identity import weights_hash
from probe.readouts.saelens_files import TENSORS, SAEError, read_cfg, read_weights

SAE_LENS_VERSION = "6.5.0"  # the SAELens file format these files follow
RESCALE_VERSION = "6.14.0"  # the first SAELens with rescale_acts_by_decoder_norm (topk)
ACTIVATIONS = ("topk", "relu")  # what fit trains
# activation (our name) -> SAELens architecture; jumprelu and gated SAEs are read from SAELens files, not trained
ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "gated": "gated"}
LN_EPS = 1e-5  # SAELens's layer_norm normalisation: (x - mean) / (std + 1e-5)
Undo = Callable[[Tensor], Tensor] | None  # what undoes the input's normalisation on the reconstruction


# Encoders, as SAELens's SAE classes compute them from sae_in (the input, normalised, less b_dec when
# apply_b_dec_to_input): [n, d_in] -> [n, d_sae].
def _encode_relu(sae: "SparseAutoencoder", x: Tensor, p: dict[str, Tensor]) -> Tensor:
    return torch.relu(x @ p["W_enc"] + p["b_enc"])


def _encode_topk(sae: "SparseAutoencoder", x: Tensor, p: dict[str, Tensor]) -> Tensor:
    pre = x @ p["W_enc"] + p["b_enc"]
    if sae.rescale_acts_by_decoder_norm:
        pre = pre * p["W_dec"].norm(dim=-1)
    top = pre.topk(sae.k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))


def _encode_jumprelu(sae: "SparseAutoencoder", x: Tensor, p: dict[str, Tensor]) -> Tensor:
    pre = x @ p["W_enc"] + p["b_enc"]
    return torch.relu(pre) * (pre > p["threshold"]).to(pre.dtype)


def _encode_gated(sae: "SparseAutoencoder", x: Tensor, p: dict[str, Tensor]) -> Tensor:
    active = (x @ p["W_enc"] + p["b_gate"] > 0).to(x.dtype)
    return active * torch.relu(x @ (p["W_enc"] * p["r_mag"].exp()) + p["b_mag"])


ENCODERS: dict[str, Callable[["SparseAutoencoder", Tensor, dict[str, Tensor]], Tensor]] = {
    "relu": _encode_relu, "topk": _encode_topk, "jumprelu": _encode_jumprelu, "gated": _encode_gated}


@dataclass(frozen=True)
class SAEMetrics:
    """Reconstruction and sparsity of an SAE on a set of activations."""

    fvu: float  # fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean|^2
    l0: float  # mean number of active features per row
    dead_fraction: float  # features that never fire on these rows

    def as_dict(self) -> dict[str, float]:
        return {"fvu": self.fvu, "l0": self.l0, "dead_fraction": self.dead_fraction}


class SparseAutoencoder(Fitted):
    """A TopK (or ReLU + L1) sparse autoencoder trained with Adam on [n, d_in] activations.

    The settings after apply_b_dec_to_input are SAELens's, for SAEs read from SAELens files (fit trains
    topk or relu SAEs in float32 without them): activation "jumprelu" or "gated", normalize_activations
    "constant_norm_rescale" or "layer_norm", rescale_acts_by_decoder_norm (topk), dtype (the weights and the
    arithmetic, as SAELens casts both to its cfg dtype).

    A Fitted reader (probe.readouts.fitted): `fit(X, model=model, hook_name=hook)` records the `weights_hash` of the model
    whose activations X are (`model_hash_`, None when fit without one) and their hook (`hook_name_`), both saved
    with it; `check(model)` and `load(path, model)` refuse an SAE of another model, or one recording no hash (an
    SAE from SAELens itself: load it without a model), with SAEError.
    """

    hash_of = staticmethod(weights_hash)
    error = SAEError

    def __init__(self, d_sae: int = 512, k: int = 8, activation: str = "topk", l1_coeff: float = 0.0,
                 lr: float = 1e-3, epochs: int = 50, batch_size: int = 256, seed: int = 0, device: str = "cpu",
                 progress: bool = True, apply_b_dec_to_input: bool = True, normalize_activations: str = "none",
                 rescale_acts_by_decoder_norm: bool = False, dtype: str = "float32"):
        self.d_sae, self.k, self.activation, self.l1_coeff = d_sae, k, activation, l1_coeff
        self.lr, self.epochs, self.batch_size, self.seed, self.device, self.progress = \
            lr, epochs, batch_size, seed, device, progress
        self.apply_b_dec_to_input = apply_b_dec_to_input  # SAELens's field: encode x - b_dec (True) or x
        self.normalize_activations, self.rescale_acts_by_decoder_norm, self.dtype = \
            normalize_activations, rescale_acts_by_decoder_norm, dtype

    def _check(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise SAEError(f"activation must be one of {ACTIVATIONS} to train, got {self.activation!r}")
        if self.activation == "topk" and not 0 < self.k <= self.d_sae:
            raise SAEError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.d_sae < 1 or self.epochs < 1 or self.batch_size < 1:
            raise SAEError("d_sae, epochs and batch_size must be >= 1")
        if (self.normalize_activations, self.rescale_acts_by_decoder_norm, self.dtype) != ("none", False, "float32"):
            raise SAEError("fit trains float32 SAEs with normalize_activations 'none' and no "
                           "rescale_acts_by_decoder_norm; those settings are for SAEs read from SAELens files")

    @property
    def architecture(self) -> str:
        """SAELens's name for this SAE's architecture (standard, topk, jumprelu, gated)."""
        return ARCHITECTURE[self.activation]

    def _rows(self, X) -> Tensor:
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X)
        X = X if X.is_floating_point() else X.float()  # cast once to the SAE's dtype, as SAELens does
        if X.ndim != 2:
            raise SAEError(f"activations must be [n, d_in], got {list(X.shape)}")
        if hasattr(self, "W_enc_") and X.shape[1] != self.W_enc_.shape[0]:
            raise SAEError(f"activations have d_in={X.shape[1]}, this SAE was trained on {self.W_enc_.shape[0]}")
        return X

    def fit(self, X, y=None, *, model=None, hook_name: str | None = None) -> "SparseAutoencoder":
        """Train on activations X [n, d_in]: MSE (+ L1 for ReLU), decoder rows kept at unit norm (scikit-learn
        style: y is ignored, returns self). model: the model X was read from, whose weights_hash the SAE records
        (`model_hash_`; None without one); hook_name: the hook X was read at (`hook_name_`, what `save` writes).
        Raises SAEError for settings it cannot train, rows that are all equal, or a training that diverges."""
        self._check()
        X = self._rows(X).float().to(self.device)
        n, d = X.shape
        g = torch.Generator().manual_seed(self.seed)
        W_dec = torch.randn(self.d_sae, d, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        params = {
            "W_enc": W_dec.T.clone(), "W_dec": W_dec, "b_enc": torch.zeros(self.d_sae),
            "b_dec": X.mean(0).cpu(),  # centre the input at the data mean
        }
        params = {k: v.to(self.device).requires_grad_(True) for k, v in params.items()}
        opt = torch.optim.Adam(params.values(), lr=self.lr)
        var = (X - X.mean(0)).pow(2).sum(-1).mean()
        if not var > 0:
            raise SAEError(f"the {n} activation rows are all equal (variance 0): an SAE has nothing to reconstruct; "
                           "train it on more items")
        bar = tqdm(range(self.epochs), desc="sae", unit="epoch", disable=not self.progress)
        for _ in bar:
            perm = torch.randperm(n, generator=g).to(self.device)
            total = 0.0
            for i in range(0, n, self.batch_size):
                x = X[perm[i : i + self.batch_size]]
                f = self._encode(x, params)
                x_hat = f @ params["W_dec"] + params["b_dec"]
                loss = (x - x_hat).pow(2).sum(-1).mean() / var
                if self.activation == "relu" and self.l1_coeff:
                    loss = loss + self.l1_coeff * f.abs().sum(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    params["W_dec"] /= params["W_dec"].norm(dim=1, keepdim=True).clamp_min(1e-8)
                total += float(loss.detach()) * len(x)
            bar.set_postfix(loss=f"{total / n:.4f}")
        check_finite_tensors(params.items(), "the SAE being trained", SAEError,
                             advice="its training diverged (try a lower learning rate); nothing is written")
        for k, v in params.items():
            setattr(self, f"{k}_", v.detach().cpu())
        self.model_hash_ = None if model is None else self.hash_of(model)
        self.hook_name_, self.no_hook_ = hook_name, ""
        return self

    def _encode(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        """sae_in -> features, for input already normalised (SAELens's process_sae_in, then the encoder)."""
        return ENCODERS[self.activation](self, (x - p["b_dec"]) if self.apply_b_dec_to_input else x, p)

    def _normalize_in(self, x: Tensor) -> tuple[Tensor, Undo]:
        """SAELens's run_time_activation_norm_fn_in: the input normalised, and its norm_fn_out for the output."""
        if self.normalize_activations == "constant_norm_rescale":
            coeff = (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, lambda out: out / coeff
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + LN_EPS), lambda out: out * std + mu
        return x, None

    def _params(self) -> dict[str, Tensor]:
        if not hasattr(self, "W_enc_"):
            raise SAEError("this SAE is not fitted; call fit first")
        return {name: getattr(self, f"{name}_") for name in TENSORS[self.architecture]}

    def _out(self, t: Tensor) -> Tensor:
        return t.to(torch.promote_types(t.dtype, torch.float32))

    def _encode_rows(self, X) -> tuple[Tensor, Undo]:
        p = self._params()
        x, undo = self._normalize_in(self._rows(X).to(p["W_enc"].dtype))
        return self._encode(x, p), undo

    def _decode(self, F: Tensor, undo: Undo) -> Tensor:
        p = self._params()
        f = F.to(p["W_dec"].dtype)
        if self.rescale_acts_by_decoder_norm:
            f = f * (1 / p["W_dec"].norm(dim=-1))  # SAELens 6.54 multiplies by the reciprocal
        if getattr(self, "finetuning_scaling_factor_", None) is not None:
            f = f * self.finetuning_scaling_factor_
        out = f @ p["W_dec"] + p["b_dec"]
        return self._out(out if undo is None else undo(out))

    @torch.no_grad()
    def encode(self, X) -> Tensor:
        """[n, d_in] -> [n, d_sae] feature activations (float32; float64 for a float64 SAE)."""
        return self._out(self._encode_rows(X)[0])

    transform = encode

    @torch.no_grad()
    def decode(self, F: Tensor) -> Tensor:
        """[n, d_sae] -> [n, d_in] reconstruction. An SAE that normalises its input needs that input's norm:
        use reconstruct(X) (SAELens keeps it from the last encode)."""
        if self.normalize_activations != "none":
            raise SAEError(f"this SAE's normalize_activations={self.normalize_activations!r} undoes the input's "
                           "normalisation in decode, so decode needs the input: use reconstruct(X)")
        return self._decode(torch.as_tensor(F), None)

    @torch.no_grad()
    def reconstruct(self, X) -> Tensor:
        """[n, d_in] -> [n, d_in]: decode(encode(X)), with the input's normalisation undone as SAELens does."""
        F, undo = self._encode_rows(X)
        return self._decode(F, undo)

    def metrics(self, X) -> SAEMetrics:
        """FVU, L0 and the fraction of dead features on X."""
        X = self._rows(X)
        F = self.encode(X)
        resid = (X - self.reconstruct(X)).pow(2).sum()
        total = (X - X.mean(0)).pow(2).sum()
        fired = (F > 0).any(0)
        return SAEMetrics(float(resid / total), float((F > 0).sum(-1).float().mean()), float(1 - fired.float().mean()))

    def score(self, X, y=None) -> float:
        """1 - FVU (higher is better, as scikit-learn expects)."""
        return 1.0 - self.metrics(X).fvu

    def hook_point(self) -> str:
        """The hook whose activations this SAE reads (its cfg.json's hook name). Raises SAEError in one line when
        the file names none (or the SAE was fitted here and never saved or loaded)."""
        hook = getattr(self, "hook_name_", None)
        if hook:
            return hook
        raise SAEError(getattr(self, "no_hook_", "") or "this SAE names no hook point (it was fit without "
                       "hook_name and not loaded from files); pass the hook its activations came from")

    # ------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike, hook_name: str | None = None, model_name: str = "",
             extra: dict | None = None) -> Path:
        """SAELens-format cfg.json and sae_weights.safetensors (plus coconut_probe.json), written atomically: see
        write_into."""
        with atomic_directory(path, replace=True) as tmp:
            self.write_into(tmp, hook_name, model_name, extra)
        return Path(path)

    def write_into(self, directory: Path, hook_name: str | None = None, model_name: str = "",
                   extra: dict | None = None) -> None:
        """The SAE's files, into an existing directory (SAELens 6's layout). hook_name: the hook written in cfg.json
        (default: the one it was fit at or read with, `hook_point()`); model_name: cfg.json's metadata.model_name;
        coconut_probe.json holds the training settings, the recorded `model_hash_` (when there is one) and `extra`
        (more of the run's record, e.g. k_max; never a model hash: SAEError). Raises SAEError for an SAE not fitted,
        naming no hook, or decoding with a finetuning scaling factor."""
        p = self._params()
        if extra and "model_hash" in extra:
            raise SAEError("extra holds a model_hash: an SAE records the hash of the model it is fit on "
                           "(fit(X, model=...)), never one given beside it")
        hook_name = hook_name or self.hook_point()
        if getattr(self, "finetuning_scaling_factor_", None) is not None:
            raise SAEError("this SAE decodes with a finetuning scaling factor, which SAELens 6 files cannot hold; "
                           "fold it into W_dec first")
        d_in = p["W_enc"].shape[0]
        cfg = {
            "architecture": self.architecture, "d_in": d_in, "d_sae": self.d_sae, "dtype": self.dtype,
            "device": "cpu", "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations, "reshape_activations": "none",
            "metadata": {"model_name": model_name, "hook_name": hook_name, "sae_lens_version": SAE_LENS_VERSION,
                         "sae_lens_training_version": SAE_LENS_VERSION, "prepend_bos": False},
        }
        if self.activation == "topk":
            cfg["k"] = self.k
        if self.rescale_acts_by_decoder_norm:  # a SAELens 6.14 field: older SAELens would drop it and misread
            cfg["rescale_acts_by_decoder_norm"] = True
            cfg["metadata"]["sae_lens_version"] = RESCALE_VERSION
        hashed = {"model_hash": self.model_hash_} if getattr(self, "model_hash_", None) else {}
        ours = {"activation": self.activation, "k": self.k, "l1_coeff": self.l1_coeff, "lr": self.lr,
                "epochs": self.epochs, "batch_size": self.batch_size, "seed": self.seed, **hashed, **(extra or {})}
        save_file({k: v.contiguous() for k, v in p.items()}, str(directory / SAE_WEIGHTS))
        atomic_write_text(directory / SAE_CFG, json.dumps(cfg, indent=1))
        atomic_write_text(directory / SAE_EXTRA, json.dumps(ours, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "SparseAutoencoder":
        """Read an SAE directory (ours, or any SAELens one) the way SAELens's load_from_disk reads it.

        Sets the weights (W_enc_ [d_in, d_sae], W_dec_ [d_sae, d_in], b_dec_ [d_in] and the architecture's
        others, [d_sae]), hook_name_ (None when the file names none: hook_point() then refuses, naming why),
        model_hash_ (coconut_probe.json's; None when there is none), metadata_ (model_name, prepend_bos, ...: kept,
        not applied) and notes_ (one line per default taken, old field renamed or dtype cast). With model (the model
        whose activations it will read), refuse one that `check(model)` refuses: trained on another model or
        recording no model (an SAE from SAELens itself: load it without a model). Raises SAEError in one line naming
        the file and field for anything it cannot read faithfully (docs/formats.md).
        """
        return super().load(path, model)

    @classmethod
    def _read(cls, path: Path) -> "SparseAutoencoder":
        cfg_file, weights = path / SAE_CFG, path / SAE_WEIGHTS
        if not cfg_file.is_file() or not weights.is_file():
            raise SAEError(f"{path}: not an SAE directory (needs cfg.json and sae_weights.safetensors; SAELens "
                           "before 0.2 saved a .pt file, which this toolkit does not read)")
        try:
            cfg = json.loads(cfg_file.read_text())
            raw = load_file(str(weights))
            ours = json.loads((path / SAE_EXTRA).read_text()) if (path / SAE_EXTRA).is_file() else {}
        except Exception as e:  # json or safetensors errors
            raise SAEError(f"{path}: cannot read the SAE ({type(e).__name__}: {e})") from None
        c = read_cfg(cfg, str(cfg_file))
        check_finite_tensors(raw.items(), str(weights), SAEError)
        tensors, notes = read_weights(raw, c, str(weights), str(cfg_file))
        activation = next(a for a, arch in ARCHITECTURE.items() if arch == c.architecture)
        k = c.k if c.k is not None else ours.get("k", 8)
        sae = cls(d_sae=c.d_sae, k=k, activation=activation, apply_b_dec_to_input=c.apply_b_dec_to_input,
                  normalize_activations=c.normalize_activations,
                  rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm, dtype=c.dtype,
                  **{key: ours[key] for key in ("l1_coeff", "lr", "epochs", "batch_size", "seed") if key in ours})
        for name, t in tensors.items():
            setattr(sae, f"{name}_", t)
        sae.hook_name_, sae.no_hook_ = c.hook_name, c.no_hook
        sae.metadata_, sae.layout_, sae.notes_ = c.metadata, c.layout, [*c.notes, *notes]
        sae.model_hash_ = ours.get("model_hash") if isinstance(ours, dict) else None
        return sae

    def _unhashed(self) -> str:
        return "this SAE records no model hash; refit it (probe sae train)"

    def _another_model(self, ours: str, theirs: str) -> str:
        return "this SAE was trained on another model's activations; refit it (probe sae train)"


# ---------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureReport:
    """What one SAE feature fires for: the node name whose frontier membership it tracks best, and groups."""

    feature: int
    frequency: float  # fraction of rows where it fires
    best_name: str | None
    best_auroc: float  # AUROC of its activation for "best_name is in the frontier", over rows that have the name
    top_names: list[tuple[str, float]]  # the 3 best (name, AUROC)
    groups: dict[str, float]  # where it fires: share of rows in which best_name is optimal / frontier / ...


def auroc_table(acts: np.ndarray, labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[n_features, n_names] AUROC of each feature's activation for each name's label, over rows with the name.

    acts: [n_rows, n_features]; labels, present: [n_rows, n_names]. nan where a name has one class only.
    """
    out = np.full((acts.shape[1], labels.shape[1]), np.nan)
    for j in range(labels.shape[1]):
        rows = present[:, j]
        y = labels[rows, j] > 0.5
        if 0 < y.sum() < len(y):
            a = acts[rows]
            r = rankdata(a, axis=0)  # Mann-Whitney U per feature, ties at their average rank
            n_pos, n_neg = y.sum(), (~y).sum()
            out[:, j] = (r[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def feature_reports(
    acts: np.ndarray, labels: np.ndarray, present: np.ndarray, names: Sequence[str], groups: np.ndarray,
    group_names: Sequence[str],
) -> list[FeatureReport]:
    """Per feature: how often it fires, the names whose frontier membership it tracks, and the groups it fires in.

    groups: [n_rows, n_names] group index of each name in each row (-1 where the name is absent).
    """
    table = auroc_table(acts, labels, present)
    out = []
    for f in range(acts.shape[1]):
        fires = acts[:, f] > 0
        row = np.where(np.isfinite(table[f]), table[f], -np.inf)
        order = np.argsort(-row)[:3]
        top = [(names[j], float(table[f, j])) for j in order if np.isfinite(table[f, j])]
        best = top[0] if top else (None, float("nan"))
        shares = {}
        if best[0] is not None and fires.any():
            g = groups[fires, list(names).index(best[0])]
            shares = {name: float((g == i).mean()) for i, name in enumerate(group_names)}
            shares["absent"] = float((g < 0).mean())
        out.append(FeatureReport(f, float(fires.mean()), best[0], best[1], top, shares))
    return out


# ---------------------------------------------------------------------------- on a model


@dataclass(kw_only=True, frozen=True)
class ThoughtRows:
    """Activations at the thought positions of a data set, one row per (item, thought k), with node labels."""

    X: np.ndarray  # [n_items * k_max, d] row b * k_max + (k - 1)
    frontier: np.ndarray  # [rows, n_names] 1 where the name is in frontier_k of the row's item
    present: np.ndarray  # [rows, n_names] the name is a node of the row's item
    groups: np.ndarray  # [rows, n_names] node group at step k (frontier.GROUPS index), -1 where absent
    names: list[str]
    hook: str
    k_max: int


def thought_rows(model, tokenizer, items, *, hook: str | None = None, k_max: int | None = None, batch_size: int = 32,
                 progress: bool = True) -> ThoughtRows:
    """Capture every thought (hook None: the thought fed back, ln_final.hook_normalized) of a data set as rows."""
    from probe.capture.trace import capture
    from probe.model.hook_names import FINAL
    from probe.data.graph import ProsQAGraph
    from probe.data.graph import node_groups
    from probe.data.render import node_names
    from probe.readouts.probes import name_vocabulary, probe_targets

    items = list(items)
    hook = hook or FINAL
    k_max = model.config.thought_count(k_max, 1, "k_max", SAEError, "an SAE on thoughts needs a thought")
    trace = capture(model, tokenizer, items, k=k_max, names=[hook], batch_size=batch_size, progress=progress)
    X = trace[hook][:, :k_max].float().reshape(len(items) * k_max, -1).numpy()
    fmt = model.config.data_format
    names = name_vocabulary(items, fmt)
    col = {n: j for j, n in enumerate(names)}
    frontier = np.zeros((len(items), k_max, len(names)))
    present = np.zeros((len(items), k_max, len(names)), dtype=bool)
    groups = np.full((len(items), k_max, len(names)), -1)
    for k in range(1, k_max + 1):
        frontier[:, k - 1], present[:, k - 1] = probe_targets(items, k, "frontier", names=names, fmt=fmt)
        for b, it in enumerate(items):
            g = node_groups(ProsQAGraph.from_item(it), k)
            groups[b, k - 1, [col[n] for n in node_names(it, fmt)]] = g
    flat = lambda a: a.reshape(len(items) * k_max, len(names))  # noqa: E731
    return ThoughtRows(X=X, frontier=flat(frontier), present=flat(present), groups=flat(groups), names=names, hook=hook,
                       k_max=k_max)


def rank_features(features: Sequence[FeatureReport]) -> list[FeatureReport]:
    """The features that track some name's frontier membership (a finite best AUROC), best first."""
    return sorted((f for f in features if f.best_name is not None and np.isfinite(f.best_auroc)),
                  key=lambda f: -f.best_auroc)


@dataclass(kw_only=True)
class SAETraining:
    """An SAE trained on a data set's thoughts, with its fit on the training and held-out rows and its features."""

    sae: SparseAutoencoder
    rows: ThoughtRows
    n_items: int
    held_out: np.ndarray  # [rows] bool: the row belongs to a held-out item
    duplicates_merged: int  # items that were copies of an earlier item, kept on its side of the split
    train_metrics: SAEMetrics
    held_out_metrics: SAEMetrics
    features: list[FeatureReport]  # every feature, in feature order

    @property
    def ranked(self) -> list[FeatureReport]:
        """rank_features(features): the features tracking a name's frontier membership, best first."""
        return rank_features(self.features)

    def report(self, top: int = 50) -> dict[str, Any]:
        """Plain data for report.json: the fit, and the `top` best-ranked features."""
        held_items = np.flatnonzero(self.held_out[::self.rows.k_max]).tolist()
        return {"hook": self.rows.hook, "n_items": self.n_items, "rows": len(self.rows.X),
                "duplicates_merged": self.duplicates_merged, "held_out_items": held_items,
                **self.train_metrics.as_dict(), "held_out": self.held_out_metrics.as_dict(),
                "features": [vars(f) for f in self.ranked[:top]]}


def train_sae(
    model, tokenizer, items: Sequence, *, hook: str | None = None, k_max: int | None = None, held_out: float = 0.1,
    d_sae: int = 512, k: int = 8, activation: str = "topk", l1_coeff: float = 0.0, epochs: int = 50,
    device: str = "cpu", seed: int = 0, batch_size: int = 32, progress: bool = True,
) -> SAETraining:
    """Train a sparse autoencoder on every thought of the items (thought_rows) and read what its features fire for.

    A `held_out` fraction of the distinct items, drawn with `seed` (`splits.content_holdout`: every thought of
    each, and every copy of it), is held out of training and measured apart; features are described on all rows
    (feature_reports, groups of probe.analyses.frontier). The SAE records the model's weights_hash and the hook (`fit`), so
    `sae.save(path)` writes both. Raises SAEError for settings the SAE refuses, a held_out fraction
    outside (0, 1), or too few distinct items to train and hold out.
    """
    from probe.data.prosqa import duplicates
    from probe.data.splits import content_holdout
    from probe.data.graph import GROUPS

    if not 0 < held_out < 1:
        raise SAEError(f"held_out must be in (0, 1), got {held_out}")
    items = list(items)
    dup = duplicates(items)
    held_items = content_holdout(dup.groups, held_out, seed, SAEError)
    rows = thought_rows(model, tokenizer, items, hook=hook, k_max=k_max, batch_size=batch_size, progress=progress)
    held = np.repeat(held_items, rows.k_max)
    sae = SparseAutoencoder(d_sae=d_sae, k=k, activation=activation, l1_coeff=l1_coeff, epochs=epochs, seed=seed,
                            device=device, progress=progress)
    sae.fit(rows.X[~held], model=model, hook_name=rows.hook)
    feats = feature_reports(sae.encode(rows.X).numpy(), rows.frontier, rows.present, rows.names, rows.groups, GROUPS)
    return SAETraining(sae=sae, rows=rows, n_items=len(items), held_out=held, duplicates_merged=dup.merged,
                       train_metrics=sae.metrics(rows.X[~held]),
                       held_out_metrics=sae.metrics(rows.X[held]), features=feats)
