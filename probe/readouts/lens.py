"""Read thoughts out as token distributions: a Lens maps a layer's residual to next-token logits.

Every lens has one interface, tuned-lens's `Lens`: `lens(h, layer)` -> logits. LogitLens (nostalgebraist 2020)
applies the model's own final norm and readout (CoconutModel.unembed) to the residual stream
(`blocks.{l}.hook_resid_post`); at the last layer that is the model's own logits. A thought vector is
already normalised, so it is never normalised again here. TunedLens (Belrose et al. 2023) puts one
affine translator per layer in front of the same readout, starting at the identity, trained to minimise
KL(final distribution || lens distribution) on captured traces. It is saved with its TunedLensConfig,
which holds a hash of the model's final norm and unembedding, and refuses another model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from probe.artifacts import TUNED_LENS
from probe.atomic import atomic_path
from probe.capture.trace import ThoughtTrace, TraceStore
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_pieces
from probe.data.prosqa import ProsQAItem
from probe.model.finite import NonFiniteActivation, check_finite_tensors
from probe.readouts.fitted import Fitted
from probe.formats import check_version
from probe.model.architecture import architecture
from probe.model.coconut import CoconutModel
from probe.model.hook_names import RESID, act_name, layer_index
from probe.model.identity import readout_hash
from probe.model.rows import rows_are

FORMAT = "coconut-probe tuned lens"
FORMAT_VERSION = 2  # 1: the config's fields as separate header strings; 2: one JSON TunedLensConfig


class LensError(ValueError):
    """A lens file that is missing, corrupt, or made for another model."""


class Lens(nn.Module):
    """Reads a layer's residual as next-token logits: `lens(h, layer)` (tuned-lens's interface).

    The base class is the logit lens: its translate is the identity. A lens is bound to the model whose
    readout it applies (`lens.model`, not a submodule: the lens owns none of the model's weights);
    `check(model)` refuses another model. name: what reports call it ("logit", "tuned").
    """

    name = "logit"

    def __init__(self, model: CoconutModel):
        super().__init__()
        object.__setattr__(self, "model", model)

    def translate(self, resid: Tensor, layer: int) -> Tensor:
        """[..., d_model] residual after `layer` -> the residual the readout reads (here: itself)."""
        return resid

    def forward(self, resid: Tensor, layer: int) -> Tensor:
        """[..., d_model] residual after `layer` -> [..., vocab] float32 logits, on the CPU."""
        norm = architecture(self.model).final_norm
        h = self.translate(resid, layer)
        return self.model.unembed(norm(h.to(next(norm.parameters())))).float().cpu()

    def check(self, model: CoconutModel) -> None:
        """Raise LensError unless this lens reads `model` (the same final norm and unembedding)."""
        if model is not self.model and readout_hash(model) != readout_hash(self.model):
            raise LensError("this lens is bound to another model (its readout differs)")


class LogitLens(Lens):
    """The logit lens: the model's own final norm and readout applied to any layer's residual."""


@dataclass(frozen=True)
class TunedLensConfig:
    """What a saved tuned lens records: its shape and the readout hash of the model it was fit to."""

    n_layers: int
    d_model: int
    model_hash: str

    @classmethod
    def from_header(cls, meta: dict[str, str], source: str) -> "TunedLensConfig":
        """The config in a lens file's safetensors header (format 2, or the separate strings of format 1; a newer
        format is refused by probe.formats.check_version)."""
        if not meta.get("format", "").startswith(FORMAT):
            raise LensError(f"{source}: not a coconut-probe tuned lens")
        version = meta["format"][len(FORMAT):].strip()
        check_version(int(version) if version.isdigit() else version or None, FORMAT_VERSION, source,
                      "tuned lens format", LensError)
        try:
            raw = json.loads(meta["config"]) if "config" in meta else \
                {k: meta[k] for k in ("n_layers", "d_model")} | {"model_hash": meta.get("model_hash", "")}
            return cls(int(raw["n_layers"]), int(raw["d_model"]), str(raw["model_hash"]))
        except (KeyError, ValueError, TypeError) as e:
            raise LensError(f"{source}: a broken tuned lens header ({type(e).__name__}: {e})") from None


class TunedLens(Lens, Fitted):
    """One affine translator per layer (identity at start) before the final norm and unembedding.

    A Fitted reader (probe.readouts.fitted): made for a model (`for_model`), it records that model's `readout_hash` in its
    config (`model_hash_`), and `fit` trains it for that model; `check(model)` and `load(path, model)` refuse
    another model's readout, or a lens that records no hash, with LensError.
    """

    name = "tuned"
    hash_of = staticmethod(readout_hash)
    error = LensError

    def __init__(self, model: CoconutModel, config: TunedLensConfig | None = None):
        """A lens bound to `model`: with config (read from a file), that config, checked (`check(model)`: LensError);
        without, a new one recording the model's shape and readout hash."""
        super().__init__(model)
        self.config = config or TunedLensConfig(architecture(model).n_layers, model.d_model, self.hash_of(model))
        if config is not None:  # read from a file: it must be this model's, refused before its translators are made
            self.check(model)
        self.translators = nn.ModuleList(nn.Linear(self.config.d_model, self.config.d_model)
                                         for _ in range(self.config.n_layers))
        for t in self.translators:
            nn.init.eye_(t.weight)
            nn.init.zeros_(t.bias)

    @classmethod
    def for_model(cls, model: CoconutModel) -> "TunedLens":
        """A new lens (every translator the identity) for the model, recording its readout hash."""
        return cls(model)

    @property
    def model_hash_(self) -> str:
        """The readout hash of the model the lens was made and fit for (its config's; "" when a file records none)."""
        return self.config.model_hash

    def translate(self, resid: Tensor, layer: int) -> Tensor:
        """[..., d_model] residual of a layer -> its translated residual (float32, on the translators' device)."""
        t = self.translators[layer]
        return t(resid.to(t.weight))

    def check(self, model: CoconutModel) -> None:
        """Raise LensError unless the lens was fit to `model`'s readout (and has its shape): one line, when the lens
        records no hash, another readout's, or another number of layers or width."""
        Fitted.check(self, model)
        shape = (architecture(model).n_layers, model.d_model)
        if (self.config.n_layers, self.config.d_model) != shape:
            raise LensError(f"this tuned lens has {self.config.n_layers} layers of width {self.config.d_model}; "
                            f"the model has {shape[0]} of width {shape[1]}")

    def _unhashed(self) -> str:
        return "this tuned lens records no model hash, so nothing ties it to a model; refit it (probe tuned-lens)"

    def _another_model(self, ours: str, theirs: str) -> str:
        return f"this tuned lens was trained for another model (readout hash {ours[:12]} != {theirs[:12]})"

    def fit(self, traces: ThoughtTrace | TraceStore | Iterable[ThoughtTrace], epochs: int = 20, lr: float = 1e-3,
            batch_size: int = 256, seed: int = 0, progress: bool = True) -> "TunedLens":
        """Train every translator but the last layer's on the traces' residuals (scikit-learn style: returns self)
        and record the bound model's readout hash (`model_hash_`) as the one the lens is fit for.

        traces: the bound model's, captured with every `hook_resid_post` ([batch, steps, layers, d_model] residuals,
        [batch, steps, vocab] logits). Raises LensError when the training diverges (a translator not finite).
        """
        resid, target = _training_rows(traces)  # [n, layers, d], final logits [n, vocab]
        n_layers = resid.shape[1]
        self.config = replace(self.config, model_hash=self.hash_of(self.model))
        if n_layers < 2:  # a one-layer model: its only translator is the last layer's, the identity
            return self
        norm, unembed = architecture(self.model).final_norm, self.model.base.get_output_embeddings()
        frozen = list(norm.parameters()) + list(unembed.parameters())
        was = [p.requires_grad for p in frozen]
        for p in frozen:
            p.requires_grad_(False)
        opt = torch.optim.Adam(self.translators.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        log_target = F.log_softmax(target.float(), -1)
        try:
            for _ in tqdm(range(epochs), desc="tuned lens", unit="epoch", disable=not progress):
                order = torch.randperm(len(resid), generator=g)
                for i in range(0, len(order), batch_size):
                    rows = order[i : i + batch_size]
                    loss = sum(_kl(log_target[rows], F.log_softmax(self(resid[rows, l], l), -1)).mean()
                               for l in range(n_layers - 1))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            for p, w in zip(frozen, was):
                p.requires_grad_(w)
        check_finite_tensors(self.translators.named_parameters(), "the tuned lens being fit", LensError,
                             advice="its training diverged (try a lower learning rate); nothing is written")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the translators and the config (safetensors; written beside path, then renamed into place)."""
        path = Path(path)
        tensors = {f"{l}.{k}": v.contiguous() for l, t in enumerate(self.translators) for k, v in t.state_dict().items()}
        meta = {"format": f"{FORMAT} {FORMAT_VERSION}", "config": json.dumps(asdict(self.config))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: CoconutModel) -> "TunedLens":
        """Read a saved lens for `model` (required: a lens applies its model's readout, so it is bound to one; the
        file stays one safetensors file, not a directory). Raises LensError, naming the file, for a missing or corrupt
        file, a lens the tuned-lens library wrote, or one that fails `check(model)`."""
        path = Path(path)
        if (theirs := tuned_lens_library_lens(path)) is not None:
            raise LensError(f"{path}: {theirs}, not read: its unembed_hash (the unembedding as numpy prints it: its "
                            "corners, to one decimal) cannot tell this model from one fine-tuned from it, where "
                            "coconut-probe ties a lens to the exact final norm and unembedding; fit a lens for this "
                            "checkpoint with `probe tuned-lens --ckpt CHECKPOINT --out FILE.safetensors`")
        if path.is_dir():
            inside = f" (a checkpoint's is {path / TUNED_LENS})" if (path / TUNED_LENS).is_file() else ""
            raise LensError(f"{path}: is a directory; give the tuned lens file itself{inside}")
        if not path.is_file():
            raise LensError(f"{path}: no such tuned lens file; fit one with "
                            f"`probe tuned-lens --ckpt CHECKPOINT --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise LensError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        check_finite_tensors(tensors.items(), str(path), LensError)
        config = TunedLensConfig.from_header(meta, str(path))
        try:
            lens = cls(model, config)  # checked against the model before any translator is made
        except LensError as e:
            raise LensError(f"{path}: {e}") from None
        d, n = lens.config.d_model, lens.config.n_layers
        shapes = {f"{l}.{k}": [d, d] if k == "weight" else [d] for l in range(n) for k in ("weight", "bias")}
        if missing := [k for k in shapes if k not in tensors]:
            raise LensError(f"{path}: holds no tensor {missing[0]} ({len(missing)} missing of the {2 * n} its "
                            f"{n} layers need); the file is damaged: fit the lens again")
        if extra := sorted(set(tensors) - set(shapes)):
            raise LensError(f"{path}: holds tensor {extra[0]}, which none of its {n} layers has; the file was "
                            "edited or damaged: fit the lens again")
        if wrong := [k for k, shape in shapes.items() if list(tensors[k].shape) != shape]:
            raise LensError(f"{path}: tensor {wrong[0]} has shape {list(tensors[wrong[0]].shape)}, but the lens's "
                            f"d_model {d} needs {shapes[wrong[0]]}; the file is damaged: fit the lens again")
        for l, t in enumerate(lens.translators):
            t.load_state_dict({"weight": tensors[f"{l}.weight"], "bias": tensors[f"{l}.bias"]})
        return lens


TUNED_LENS_LIBRARY = ("config.json", "params.pt")  # what AlignmentResearch/tuned-lens's TunedLens.save writes


def tuned_lens_library_lens(path: Path) -> str | None:
    """What the tuned-lens library (AlignmentResearch/tuned-lens) wrote at path, when it did: a directory holding
    config.json and params.pt (TunedLens.save), or one of those two files. Its version is told by its config's keys:
    0.0.x (num_layers, include_input; params.pt holds the readout too), 0.1.0 (the key misspelt unemebd_hash) or
    later (unembed_hash). None for anything else."""
    folder = path if path.is_dir() else path.parent
    if not (path.is_dir() or path.name in TUNED_LENS_LIBRARY) or \
            not all((folder / name).is_file() for name in TUNED_LENS_LIBRARY):
        return None
    try:
        config = json.loads((folder / TUNED_LENS_LIBRARY[0]).read_text())
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        return "a directory of config.json and params.pt, as the tuned-lens library writes a lens"
    version = "tuned-lens 0.0.x" if "num_layers" in config or "include_input" in config else \
        "tuned-lens 0.1.0" if "unemebd_hash" in config else "tuned-lens 0.1.1 or later"
    about = ", ".join(f"{k} {config[k]!r}" for k in ("lens_type", "base_model_name_or_path") if k in config)
    return f"a lens written by the tuned-lens library ({version}{', ' + about if about else ''})"


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _training_rows(traces) -> tuple[Tensor, Tensor]:
    if isinstance(traces, ThoughtTrace):
        traces = [traces]
    resid, logits = [], []
    for tr in traces:
        r = tr.stack(RESID).float()  # [batch, steps, layers, d]
        resid.append(r.flatten(0, 1))
        logits.append(tr.logits.float().flatten(0, 1))
    return torch.cat(resid), torch.cat(logits)


# ---------------------------------------------------------------------------- reading a trace


@dataclass(kw_only=True)
class LensReadout:
    """What a lens reads at every layer of every step of a trace.

    Step s < k is the position that emits thought s + 1, read against frontier_{s+1};
    step k is the first answer position, read against frontier_k.
    """

    lens: str  # "logit" or "tuned"
    layers: list[int]
    top_ids: Tensor  # [batch, k + 1, layers, top]
    top_probs: Tensor  # [batch, k + 1, layers, top]
    node_prob: Tensor  # [batch, k + 1, layers, max_nodes] probability of each node's whole name (nan past n_nodes)
    node_rank: Tensor  # [batch, k + 1, layers, max_nodes] the rank of its first piece, 0 = top (-1 past n_nodes)
    frontier: Tensor  # [batch, k + 1, max_nodes] bool: the node is in the step's frontier
    frontier_mass: Tensor  # [batch, k + 1, layers] summed probability of the frontier's names (each written name once)

    def frontier_depth(self, k: int) -> list[int]:
        """The frontier depth each step is read against."""
        return [s + 1 for s in range(k)] + [k]


LENSES = ("logit", "tuned")  # the kinds open_lens names


def open_lens(kind: str, model: CoconutModel, tuned_path: str | os.PathLike | None = None) -> Lens:
    """The lens a kind names, for `model`: "logit" (LogitLens) or "tuned" (TunedLens.load(tuned_path)).

    Raises LensError for another kind, a tuned lens without a path, or as TunedLens.load does.
    """
    if kind == "logit":
        return LogitLens(model)
    if kind == "tuned":
        if tuned_path is None:
            raise LensError("a tuned lens needs the path of its file")
        return TunedLens.load(tuned_path, model)
    raise LensError(f"lens: expected one of {', '.join(LENSES)}, got {kind!r}")


def lens_logits(trace: ThoughtTrace, model: CoconutModel, layers: Sequence[int] | None = None,
                lens: Lens | None = None) -> Tensor:
    """[batch, k + 1, len(layers), vocab] logits of a lens (default: the logit lens) at each step and layer.

    Raises LensError for a lens bound to another model, NonFiniteActivation (naming the item, the step and the
    layer) for a reading that holds NaN or inf."""
    lens = _lens_for(model, lens)
    layers = list(range(trace.n_layers)) if layers is None else list(layers)
    with torch.no_grad():
        logits = torch.stack([lens(trace[act_name(RESID, l)], l) for l in layers], dim=2)
    bad = ~torch.isfinite(logits).all(-1)  # [batch, steps, layers]
    if bool(bad.any()):
        b, s, j = (int(x) for x in torch.nonzero(bad)[0])
        advice = ("its translators overflow on this residual: refit it (probe tuned-lens)" if lens.name == "tuned" else
                  "the model's final norm and unembedding overflow on this residual")
        raise NonFiniteActivation(b, f"thought {s + 1}" if s < trace.k else "the first answer position",
                                  f"the {lens.name} lens's reading of layer {layers[j]}", advice,
                                  item=int(trace.indices[b]))
    return logits


def _lens_for(model: CoconutModel, lens: Lens | None) -> Lens:
    if lens is None:
        return LogitLens(model)
    lens.check(model)
    return lens


def read_lens(
    trace: ThoughtTrace, model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *,
    layers: Sequence[int] | None = None,
    lens: Lens | None = None, top: int = 5,
) -> LensReadout:
    """Top tokens, node probabilities and ranks, and frontier mass at every step and layer of a trace.

    A node's probability is that of its whole name where a step would write it: the lens's probability of
    its first piece at the step's position, times, for a name of several pieces (byte-level BPE), the same
    lens's probability of each later piece at the same layer where the prompt, cut after that step, goes on
    with the pieces before it (capture.continuation_residuals runs those few positions). At the last layer,
    at the position emitting thought k, this is the "emitted" readout of node_values for a one-token name (the
    language readout reads a forced step instead, DESIGN.md "Frontier measures"); names written with the same tokens
    (probe.data.layout.indistinct_names) still get one probability. Raises LensError for items that do not
    match the trace or a layer out of range.
    """
    from probe.capture.trace import continuation_residuals

    lens = _lens_for(model, lens)
    if len(items) != len(trace):
        raise LensError(f"{len(items)} items for a trace of {len(trace)}")
    layers = list(range(trace.n_layers)) if layers is None else [layer_index(l, trace.n_layers, LensError) for l in layers]
    probs = lens_logits(trace, model, layers, lens).softmax(-1)  # [batch, steps, layers, vocab]
    top_probs, top_ids = probs.topk(min(top, probs.shape[-1]), dim=-1)
    batch, steps = probs.shape[:2]
    max_nodes = max(it.n_nodes for it in items)
    node_prob = torch.full((batch, steps, len(layers), max_nodes), float("nan"))
    node_rank = torch.full((batch, steps, len(layers), max_nodes), -1, dtype=torch.long)
    frontier = torch.zeros(batch, steps, max_nodes, dtype=torch.bool)
    mass = torch.zeros(batch, steps, len(layers))
    ranks = probs.argsort(-1, descending=True).argsort(-1)  # rank of every token
    fmt = model.config.data_format
    pieces = [name_pieces(it, tokenizer, fmt) for it in items]
    for b, it in enumerate(items):
        first = torch.tensor([p[0] for p in pieces[b]])
        node_prob[b, :, :, : it.n_nodes] = probs[b][..., first]
        node_rank[b, :, :, : it.n_nodes] = ranks[b][..., first]
    # The later pieces of multi-piece names: one continuation per (item, step, distinct name prefix).
    conts = sorted({(b, s, tuple(p[:-1])) for b in range(batch) for s in range(steps) for p in pieces[b] if len(p) > 1})
    if conts:
        with torch.no_grad():
            resid = continuation_residuals(model, trace, conts, layers)
            later = {c: torch.stack([lens(h[:, j], l) for j, l in enumerate(layers)], dim=1).log_softmax(-1)
                     for c, h in zip(conts, resid)}  # (b, s, prefix) -> [pieces - 1, layers, vocab] log-probabilities
        for b in range(batch):
            for v, p in enumerate(pieces[b]):
                for s in range(steps):
                    if len(p) > 1:
                        logp = later[(b, s, tuple(p[:-1]))][torch.arange(len(p) - 1), :, torch.tensor(p[1:])]
                        node_prob[b, s, :, v] *= logp.sum(0).exp()  # [layers]
    for b, it in enumerate(items):
        g = ProsQAGraph.from_item(it)
        for s, depth in enumerate([s + 1 for s in range(trace.k)] + [trace.k]):
            nodes = sorted(g.frontier(depth))
            frontier[b, s, nodes] = True
            distinct = {tuple(pieces[b][v]): v for v in nodes}.values()  # a name written alike counts once
            if nodes:
                mass[b, s] = node_prob[b, s][:, list(distinct)].sum(-1)
    return LensReadout(lens=lens.name, layers=layers, top_ids=top_ids, top_probs=top_probs, node_prob=node_prob,
                       node_rank=node_rank, frontier=frontier, frontier_mass=mass)


def mean_kl_to_final(trace: ThoughtTrace, model: CoconutModel, lens: Lens | None = None) -> Tensor:
    """[layers] mean KL(final distribution || lens distribution) over a trace's steps."""
    log_q = F.log_softmax(lens_logits(trace, model, lens=lens), -1)  # [batch, steps, layers, vocab]
    log_p = F.log_softmax(trace.logits.float(), -1)[:, :, None]
    return _kl(log_p, log_q).mean(dim=(0, 1))


@dataclass
class TunedLensFit:
    """A tuned lens fit on some items, and how it reads the held-out ones against the logit lens."""

    lens: TunedLens
    n_train: int
    n_held_out: int
    kl_logit: Tensor  # [layers] mean KL(final || logit lens) on the held-out items' steps (nats)
    kl_tuned: Tensor  # [layers] the same for the tuned lens
    duplicates_merged: int = 0  # items that were copies of an earlier item, kept on its side of the split


def fit_tuned_lens(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int | None = None, epochs: int = 20,
    held_out: float = 0.1, lr: float = 1e-3, batch_size: int = 32, seed: int = 0, progress: bool = True,
) -> TunedLensFit:
    """Fit a tuned lens (Belrose et al. 2023) to the model's thoughts: capture every `hook_resid_post` at every
    step of the items with k thoughts, hold out a `held_out` fraction of the distinct items drawn with `seed` (at
    least one; `splits.content_holdout`: every copy of a held-out item is held out too), fit on the rest, and
    measure both lenses' KL to the final distribution on the held-out ones.

    Raises LensError for fewer than two distinct items or a held_out fraction outside (0, 1).
    """
    from probe.capture.trace import capture
    from probe.data.prosqa import duplicates
    from probe.data.splits import content_holdout
    from probe.model.hook_names import select_hooks

    items = list(items)
    if len(items) < 2:
        raise LensError(f"a tuned lens needs at least two items (one held out), got {len(items)}")
    dup = duplicates(items)
    is_held = content_holdout(dup.groups, held_out, seed, LensError)
    names = select_hooks(architecture(model).n_layers, [f"*{RESID}"])
    sides = []
    for side in (is_held, ~is_held):
        where = np.flatnonzero(side)
        with rows_are(where):  # an error names the item of the data set, not of its side of the split
            sides.append(capture(model, tokenizer, [items[i] for i in where], k=k, names=names,
                                 batch_size=batch_size, progress=progress))
    held, train = sides
    lens = TunedLens.for_model(model).fit(train, epochs=epochs, lr=lr, seed=seed, progress=progress)
    with rows_are(np.flatnonzero(is_held)):
        kl = mean_kl_to_final(held, model), mean_kl_to_final(held, model, lens)
    return TunedLensFit(lens, int((~is_held).sum()), int(is_held.sum()), *kl, duplicates_merged=dup.merged)
