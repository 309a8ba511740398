"""Read thoughts out as token distributions: the logit lens and a tuned lens (Belrose et al. 2023).

The logit lens applies the final layer norm and the unembedding to the residual stream
(`blocks.{l}.hook_resid_post`) at each step position. At the last layer that is the model's
own logits. A thought vector is already normalised, so it is never normalised again here.

The tuned lens puts one affine translator per layer in front of the same readout, starting
at the identity, trained to minimise KL(final distribution || lens distribution) on captured
traces. It is saved with a hash of the model's final norm and unembedding and refuses
another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from probe.capture import ThoughtTrace, TraceStore, architecture
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_pieces
from probe.data.prosqa import ProsQAItem
from probe.model.hook_names import RESID, act_name, layer_index
from probe.model.coconut import CoconutModel
from probe.model.identity import readout_hash



class LensError(ValueError):
    """A lens file that is missing, corrupt, or made for another model."""


def _readout(model: CoconutModel) -> tuple[nn.Module, nn.Module]:
    return architecture(model).final_norm, model.base.get_output_embeddings()


class TunedLens(nn.Module):
    """One affine translator per layer (identity at start) before the final norm and unembedding."""

    def __init__(self, n_layers: int, d_model: int, model_hash: str = ""):
        super().__init__()
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        for t in self.translators:
            nn.init.eye_(t.weight)
            nn.init.zeros_(t.bias)
        self.model_hash = model_hash

    @classmethod
    def for_model(cls, model: CoconutModel) -> "TunedLens":
        return cls(architecture(model).n_layers, model.d_model, readout_hash(model))

    def translate(self, resid: Tensor, layer: int) -> Tensor:
        """[..., d_model] residual of a layer -> its translated residual."""
        return self.translators[layer](resid)

    def fit(self, traces: ThoughtTrace | TraceStore | Iterable[ThoughtTrace], model: CoconutModel,
            epochs: int = 20, lr: float = 1e-3, batch_size: int = 256, seed: int = 0, progress: bool = True) -> "TunedLens":
        """Train every translator but the last layer's on the traces' residuals (scikit-learn style: returns self)."""
        self._check(model)
        resid, target = _training_rows(traces)  # [n, layers, d], final logits [n, vocab]
        n_layers = resid.shape[1]
        norm, unembed = _readout(model)
        ref = next(norm.parameters())
        frozen = list(norm.parameters()) + list(unembed.parameters())
        was = [p.requires_grad for p in frozen]
        for p in frozen:
            p.requires_grad_(False)
        opt = torch.optim.Adam(self.translators.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        log_target = F.log_softmax(target.float(), -1)
        for _ in tqdm(range(epochs), desc="tuned lens", unit="epoch", disable=not progress):
            order = torch.randperm(len(resid), generator=g)
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                # the translators train in float32; the model's readout runs in its own dtype and device
                loss = sum(
                    _kl(log_target[rows], F.log_softmax(unembed(norm(self.translate(resid[rows, l], l).to(ref)))
                                                        .float().to(log_target.device), -1)).mean()
                    for l in range(n_layers - 1)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        for p, w in zip(frozen, was):
            p.requires_grad_(w)
        return self

    def _check(self, model: CoconutModel) -> None:
        if not self.model_hash:
            raise LensError("this tuned lens records no model hash, so nothing ties it to a model; refit it "
                            "(probe tuned-lens)")
        if self.model_hash != readout_hash(model):
            raise LensError(
                f"this tuned lens was trained for another model (readout hash {self.model_hash[:12]} "
                f"!= {readout_hash(model)[:12]})"
            )

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tensors = {f"{l}.{k}": v.contiguous() for l, t in enumerate(self.translators) for k, v in t.state_dict().items()}
        meta = {"format": "coconut-probe tuned lens 1", "model_hash": self.model_hash,
                "n_layers": str(len(self.translators)), "d_model": str(self.translators[0].weight.shape[0])}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model: CoconutModel) -> "TunedLens":
        """Read a saved lens; refuse one trained for another model."""
        path = Path(path)
        if not path.is_file():
            raise LensError(f"{path}: no such tuned lens file; fit one with "
                            f"`probe tuned-lens --ckpt CHECKPOINT --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise LensError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        if not meta.get("format", "").startswith("coconut-probe tuned lens"):
            raise LensError(f"{path}: not a coconut-probe tuned lens")
        lens = cls(int(meta["n_layers"]), int(meta["d_model"]), meta.get("model_hash", ""))
        try:
            lens._check(model)
        except LensError as e:
            raise LensError(f"{path}: {e}") from None
        for l, t in enumerate(lens.translators):
            t.load_state_dict({"weight": tensors[f"{l}.weight"], "bias": tensors[f"{l}.bias"]})
        return lens


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


@dataclass
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


def _read(h: Tensor, layer: int, model: CoconutModel, lens: TunedLens | None) -> Tensor:
    """[..., d_model] residual after `layer` -> [..., vocab] float32 logits of the logit (or tuned) lens."""
    norm, _ = _readout(model)
    h = h.to(model.device, torch.float32)
    if lens is not None:
        h = lens.translate(h, layer)
    return model.unembed(norm(h.to(next(norm.parameters()).dtype))).float().cpu()


def lens_logits(trace: ThoughtTrace, model: CoconutModel, layers: Sequence[int] | None = None,
                lens: TunedLens | None = None) -> Tensor:
    """[batch, k + 1, len(layers), vocab] logits of the logit (or tuned) lens at each step and layer."""
    if lens is not None:
        lens._check(model)
    layers = list(range(trace.n_layers)) if layers is None else list(layers)
    with torch.no_grad():
        return torch.stack([_read(trace[act_name(RESID, l)], l, model, lens) for l in layers], dim=2)


def read_lens(
    trace: ThoughtTrace, model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], layers: Sequence[int] | None = None,
    lens: TunedLens | None = None, top: int = 5,
) -> LensReadout:
    """Top tokens, node probabilities and ranks, and frontier mass at every step and layer of a trace.

    A node's probability is that of its whole name where a step would write it: the lens's probability of
    its first piece at the step's position, times, for a name of several pieces (byte-level BPE), the same
    lens's probability of each later piece at the same layer where the prompt, cut after that step, goes on
    with the pieces before it (capture.continuation_residuals runs those few positions). This is what
    node_values computes from the model's output, read at every layer; names written with the same tokens
    (probe.data.layout.indistinct_names) still get one probability. Raises LensError for items that do not
    match the trace or a layer out of range.
    """
    from probe.capture import continuation_residuals

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
            later = {c: torch.stack([_read(h[:, j], l, model, lens) for j, l in enumerate(layers)], dim=1).log_softmax(-1)
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
    return LensReadout("tuned" if lens is not None else "logit", layers, top_ids, top_probs, node_prob, node_rank,
                       frontier, mass)


def mean_kl_to_final(trace: ThoughtTrace, model: CoconutModel, lens: TunedLens | None = None) -> Tensor:
    """[layers] mean KL(final distribution || lens distribution) over a trace's steps."""
    log_q = F.log_softmax(lens_logits(trace, model, lens=lens), -1)  # [batch, steps, layers, vocab]
    log_p = F.log_softmax(trace.logits.float(), -1)[:, :, None]
    return _kl(log_p, log_q).mean(dim=(0, 1))
