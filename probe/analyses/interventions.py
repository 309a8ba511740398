"""Causal tests of the thoughts: ablate, patch and steer them, and measure what the answer and the frontier do.

Edits are built by pure functions from captured thoughts (`ablation_edit`, `patch_edit`,
`steer_edit`) as a `ThoughtEdit`, which `CoconutModel` applies inside its latent loop: an edited
thought is what the next position receives, so later thoughts follow from it. `intervene` runs
the data set with and without an edit and reports the accuracy, the answers that changed, and
(optionally) the frontier values after k thoughts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from tqdm.auto import tqdm

from probe.data.counterfactual import counterfactual_pairs
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_pieces
from probe.data.prosqa import ProsQAItem, duplicates
from probe.data.render import node_names, tokenize_item
from probe.model.evaluate import MAX_NEW_TOKENS, EvalResult, evaluate
from probe.analyses.frontier import frontier_mass
from probe.model.architecture import architecture
from probe.model.hook_names import RESID, act_name, layer_index
from probe.model.hooks import read_at
from probe.model.rows import rows_are
from probe.model.coconut import FEEDBACK_MODES, CoconutModel, ThoughtEdit
from probe.readouts.probes import LinearProbe, SavedProbe, name_vocabulary, probe_targets

ABLATIONS = ("zero", "mean", "random", "other")
PARTS = ("k", "ablate", "patch", "steer")  # what run_interventions runs: fewer thoughts, ablation, patching, steering


class InterventionError(ValueError):
    """An intervention that cannot be built (bad kind, step, shapes)."""


def _steps_mask(n: int, k: int, steps: Sequence[int] | None) -> Tensor:
    """[n, k] bool: the 1-based thoughts to edit (None: all)."""
    steps = list(range(1, k + 1)) if steps is None else list(steps)
    bad = [s for s in steps if not 1 <= s <= k]
    if bad:
        raise InterventionError(f"thought(s) {bad} out of range: there are {k} thoughts (1..{k})")
    mask = torch.zeros(n, k, dtype=torch.bool)
    mask[:, [s - 1 for s in steps]] = True
    return mask


def ablation_edit(thoughts: Tensor, kind: str, steps: Sequence[int] | None = None, *, seed: int = 0,
                  layer: int | None = None, valid: Tensor | None = None, positions: Tensor | None = None,
                  reference: Tensor | None = None, reference_valid: Tensor | None = None,
                  groups: Sequence[int] | None = None) -> ThoughtEdit:
    """Replace thoughts [n, k, d] at the given steps (default all) by zero, the data-set mean of that step,
    a random vector with the thought's own norm, or the same step's thought of another item (a derangement).

    thoughts are what the edit's site holds (the thoughts fed back, or one layer's residual there);
    valid [n, k] marks the thoughts an item has (default all). reference [m, k, d] (with reference_valid)
    is the data set that the mean and the other items come from, when it is not the edited items
    themselves; it must not hold them (an 'other' item is then any reference row). groups [n]: the edited items'
    content groups (`prosqa.duplicates(items).groups`): an 'other' item is never a copy of the item (an item whose
    cyclic-shift partner is its copy gets a random item of another group instead). Raises InterventionError for an
    unknown kind, bad steps or reference, or an 'other' ablation without two distinct items.
    """
    if kind not in ABLATIONS:
        raise InterventionError(f"unknown ablation {kind!r}; expected one of {ABLATIONS}")
    n, k, d = thoughts.shape
    valid = torch.ones(n, k, dtype=torch.bool) if valid is None else valid.bool()
    mask = _steps_mask(n, k, steps) & valid
    g = torch.Generator().manual_seed(seed)
    ref, ref_valid = (thoughts, valid) if reference is None else (reference.to(thoughts), reference_valid)
    if ref_valid is None:
        ref_valid = torch.ones(ref.shape[:2], dtype=torch.bool)
    if ref.shape[1:] != (k, d):
        raise InterventionError(f"the reference has shape {list(ref.shape)}, expected [m, {k}, {d}]")
    if kind == "zero":
        replace = torch.zeros_like(thoughts)
    elif kind == "mean":
        w = ref_valid.bool()[..., None].to(thoughts)
        replace = ((ref * w).sum(0, keepdim=True) / w.sum(0, keepdim=True).clamp(min=1)).expand(n, k, d).clone()
    elif kind == "random":
        r = torch.randn(n, k, d, generator=g)
        replace = r / r.norm(dim=-1, keepdim=True) * thoughts.norm(dim=-1, keepdim=True)
    elif reference is None:
        if n < 2:
            raise InterventionError("the 'other' ablation needs at least two items")
        shift = int(torch.randint(1, n, (1,), generator=g))
        other = (torch.arange(n) + shift) % n  # a cyclic shift: no item keeps its own
        if groups is not None:  # nor gets a copy of its own
            content = torch.as_tensor(np.asarray(groups))
            for b in torch.nonzero(content[other] == content).flatten().tolist():
                elsewhere = torch.nonzero(content != content[b]).flatten()
                if not len(elsewhere):
                    raise InterventionError("the 'other' ablation needs at least two distinct items; these are "
                                            "copies of one")
                other[b] = elsewhere[int(torch.randint(len(elsewhere), (1,), generator=g))]
        replace, mask = thoughts[other], mask & valid[other]
    else:
        if len(ref) == 0:
            raise InterventionError("the 'other' ablation needs at least one reference item")
        other = torch.randint(0, len(ref), (n,), generator=g)
        replace, mask = ref[other], mask & ref_valid.bool()[other]
    return ThoughtEdit(mask, replace, layer=layer, positions=positions)


def patch_edit(source: Tensor, steps: Sequence[int] | None = None, *, layer: int | None = None,
               valid: Tensor | None = None, positions: Tensor | None = None) -> ThoughtEdit:
    """Put the source items' thoughts [n, k, d] into the targets (row b gets source row b) at the given steps."""
    n, k, _ = source.shape
    mask = _steps_mask(n, k, steps)
    return ThoughtEdit(mask if valid is None else mask & valid.bool(), source, layer=layer, positions=positions)


def steer_edit(direction: Tensor, alpha: float, step: int, *, n: int, k: int, layer: int | None = None,
               positions: Tensor | None = None) -> ThoughtEdit:
    """Add alpha times a direction [d] (or per item [n, d]) to thought `step` of every item."""
    direction = direction.float()
    if direction.ndim == 1:
        direction = direction.expand(n, -1)
    if direction.shape[0] != n:
        raise InterventionError(f"got {direction.shape[0]} directions for {n} items")
    if not 1 <= step <= k:
        raise InterventionError(f"thought {step} out of range: there are {k} thoughts (1..{k})")
    add = torch.zeros(n, k, direction.shape[-1])
    add[:, step - 1] = alpha * direction
    return ThoughtEdit(add=add, layer=layer, positions=positions)


@dataclass(kw_only=True, frozen=True)
class InterventionResult:
    """One intervention beside the unedited run, on the same items and thoughts."""

    name: str
    k: int
    accuracy: float
    baseline_accuracy: float
    predictions: list[str]
    baseline_predictions: list[str]
    frontier_mass: np.ndarray | None  # [n] value mass on frontier_{values_at} with the edit (None: not measured)
    baseline_frontier_mass: np.ndarray | None
    values_at: int | None

    @property
    def changed(self) -> float:
        """Fraction of items whose answer changed."""
        return float(np.mean([a != b for a, b in zip(self.predictions, self.baseline_predictions)]))

    def as_dict(self) -> dict:
        out = {"name": self.name, "k": self.k, "accuracy": self.accuracy, "baseline_accuracy": self.baseline_accuracy,
               "accuracy_change": self.accuracy - self.baseline_accuracy, "answers_changed": self.changed}
        if self.frontier_mass is not None:
            out.update({"values_at": self.values_at, "frontier_mass": float(np.nanmean(self.frontier_mass)),
                        "baseline_frontier_mass": float(np.nanmean(self.baseline_frontier_mass))})
        return out


def answer_concept(prediction: str) -> str:
    """The concept an answer names: 'Tom is a lempus.' -> 'lempus'."""
    words = prediction.strip().rstrip(".").split()
    return words[-1] if words else ""


def intervene(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], edit: ThoughtEdit | None, *, k: int, name: str = "",
    values_at: int | None = None, batch_size: int = 32, prompts: Sequence[Sequence[int]] | None = None,
    baseline: EvalResult | None = None, baseline_values: np.ndarray | None = None,
) -> InterventionResult:
    """Answer every item after k thoughts (or the given prompts) with and without the edit; with values_at,
    also the frontier mass after that many thoughts (edits past it have no effect there).

    baseline and baseline_values (node values after values_at thoughts) skip recomputing the unedited run.
    """
    from probe.readouts.values import node_values

    items = list(items)
    base = baseline or evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, prompts=prompts)
    res = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, edit=edit, prompts=prompts)
    mass = base_mass = None
    if values_at is not None:
        graphs = [ProsQAGraph.from_item(it) for it in items]
        v0 = baseline_values
        if v0 is None:
            v0 = node_values(model, tokenizer, items, values_at, batch_size=batch_size, progress=False).numpy()
        v1 = node_values(model, tokenizer, items, values_at, batch_size=batch_size, progress=False, edit=edit).numpy()
        base_mass, mass = frontier_mass(v0, graphs, values_at), frontier_mass(v1, graphs, values_at)
    return InterventionResult(name=name, k=k, accuracy=res.accuracy, baseline_accuracy=base.accuracy,
                              predictions=[r.prediction for r in res.items],
                              baseline_predictions=[r.prediction for r in base.items], frontier_mass=mass,
                              baseline_frontier_mass=base_mass, values_at=values_at)


# ---------------------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """Where an edit acts on a data set: what it replaces there, which thoughts exist, and the prompts.

    layer None: the thoughts fed back (a pause model: its pause inputs, all the same embedding, so a
    'mean' or 'other' ablation there is the identity). A layer: its residual stream at the positions
    that emit each thought; for a CoT control, at the end of each step of its own chain.
    """

    layer: int | None
    source: Tensor  # [n, k, d] what the site holds, unedited
    valid: Tensor  # [n, k] bool: the thoughts an item has
    positions: Tensor | None  # [n, k] prompt positions (CoT control), else None: the latents define them
    prompts: list[list[int]] | None  # the prompts (CoT control: question + its own chain), else None: k thoughts

    @property
    def label(self) -> str:
        return "thought" if self.layer is None else f"layer {self.layer}"

    @property
    def norm(self) -> Tensor:
        """[k] mean norm of what the site holds, per thought."""
        n = self.source.norm(dim=-1) * self.valid
        return n.sum(0) / self.valid.sum(0).clamp(min=1)


def own_chains(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int, batch_size: int = 32,
               ) -> tuple[list[list[int]], Tensor, Tensor]:
    """A model without latent mode (CoT): each item's question plus the chain it writes itself, up to '###';
    with [n, k] the prompt positions ending its first k steps (the newline after each) and their validity."""
    cfg = model.config
    newline = tokenizer.encode("\n", add_special_tokens=False)
    marker = tokenizer.encode("###", add_special_tokens=False)
    if len(newline) != 1 or not marker:
        raise InterventionError("the tokenizer has no single newline token to end a step with")
    questions = [list(tokenize_item(it, tokenizer, cfg.data_format).question) for it in items]
    model.eval()
    prompts, pos = [], torch.full((len(items), k), -1, dtype=torch.long)
    for i in range(0, len(items), batch_size):
        with rows_are(range(i, min(i + batch_size, len(items)))):
            gen = model.generate(questions[i : i + batch_size], max_new_tokens=MAX_NEW_TOKENS)
        for b, (q, new) in enumerate(zip(questions[i : i + batch_size], gen.tokens), start=i):
            cut = next((j for j in range(len(new)) if new[j : j + len(marker)] == marker), len(new))
            prompts.append(q + new[:cut])
            ends = [len(q) + j for j in range(cut) if new[j] == newline[0]][:k]
            pos[b, : len(ends)] = torch.tensor(ends, dtype=torch.long)
    return prompts, pos, pos >= 0


def site(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int, layer: int | None = None,
         batch_size: int = 32) -> Site:
    """Capture what an edit at this site (the thoughts, or one layer's residual) would replace."""
    from probe.capture.trace import capture

    items = list(items)
    cfg = model.config
    n_layers = architecture(model).n_layers
    if layer is not None:
        layer_index(layer, n_layers, InterventionError)
    if not cfg.stage_spec.markers:
        if layer is None:
            raise InterventionError(f"a {cfg.mode} model feeds no thought back; edit one layer's residual instead")
        prompts, positions, valid = own_chains(model, tokenizer, items, k=k, batch_size=batch_size)
        source = torch.zeros(len(items), k, model.d_model)
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                rows = list(range(i, min(i + batch_size, len(items))))
                with rows_are(rows):
                    source[rows] = _residuals_at(model, [prompts[r] for r in rows], positions[rows], layer % n_layers)
        return Site(layer, source, valid, positions, prompts)
    if layer is None:
        if cfg.mode in FEEDBACK_MODES:
            source = capture(model, tokenizer, items, k=k, names=[], batch_size=batch_size, progress=False).thoughts
        else:
            pause = model.embed(torch.tensor([cfg.latent_id], device=model.device))[0].detach().float().cpu()
            source = pause.expand(len(items), k, -1).clone()
    else:
        name = act_name(RESID, layer, n_layers)
        source = capture(model, tokenizer, items, k=k, names=[name], batch_size=batch_size, progress=False)[name]
        source = source[:, :k].float()
    return Site(layer, source.float(), torch.ones(len(items), k, dtype=torch.bool), None, None)


def _residuals_at(model: CoconutModel, prompts: list[list[int]], positions: Tensor, layer: int) -> Tensor:
    """[n, k, d] a layer's residual output at prompt positions (-1: zeros) of left-padded prompts."""
    ids, mask = model.left_padded(prompts)
    name = act_name(RESID, layer)
    with read_at(model, [name], positions, mask, dtype=torch.float32) as acts:
        model(ids, mask, logits_at=torch.tensor([ids.shape[1] - 1]))  # the logits are not needed
    return acts[name].cpu()


# ---------------------------------------------------------------------------- the data-set runs


@dataclass(kw_only=True, frozen=True)
class PatchResult:
    """Counterfactual patching: item A's thoughts put into B, the same graph asked about another root.

    B's right answer is A's wrong option; if the model reads its answer off the thoughts, B's answer
    follows A's. follows_a: B's patched answers naming the concept A itself answered; names_a_root: B's
    patched answers whose subject is A's root (the person the question is about).
    """

    site: str
    steps: str
    n: int
    follows_a: float
    baseline_follows_a: float
    names_a_root: float
    baseline_names_a_root: float
    accuracy: float  # of B, by B's own answer
    baseline_accuracy: float
    changed: float
    values_at: int | None
    a_frontier_mass: float | None  # B's value mass on A's frontier after values_at thoughts, patched
    baseline_a_frontier_mass: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True, frozen=True)
class SteerPoint:
    """Steering at one dose: alpha (in mean norms of the site at that thought) times a unit direction per
    item toward node v, a parent of the wrong option; value(v) after the steered thought and the answers."""

    direction: str
    alpha: float
    n: int
    value: float  # mean value(v) where the steered thought is first read (values.read_after), nan where none
    to_option: float  # answers naming the option v leads to (the wrong one)
    accuracy: float
    changed: float

    def as_dict(self) -> dict:
        return asdict(self)


def steer_target(item: ProsQAItem) -> int:
    """Node v to steer toward: the first parent of the wrong option (the root never reaches it)."""
    parents = sorted(p for p, c in item.edges if c == item.neg_target)
    if not parents:
        raise InterventionError(f"the wrong option {item.name(item.neg_target)!r} has no parent")
    return parents[0]


def _each_step(k: int, which: Sequence[int | None] | None) -> list[list[int] | None]:
    """The edits of a run, in order: all thoughts (None), then thought j alone for each j in 1..k; or those named
    in `which` (None for all, j for thought j alone)."""
    return [None, *[[j] for j in range(1, k + 1)]] if which is None else [None if j is None else [j] for j in which]


def ablation_runs(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int, s: Site,
                  kinds: Sequence[str] = ABLATIONS, values: bool = True, batch_size: int = 32, seed: int = 0,
                  progress: bool = True, which: Sequence[int | None] | None = None) -> list[InterventionResult]:
    """Each ablation of all thoughts, then of each thought alone (or those named in `which`: None for all, j for
    thought j), beside one shared unedited run; the frontier mass at the first read of what the ablated thought
    became (`values.read_after`; with all thoughts ablated, after thought 1), where the model has latents."""
    from probe.readouts.values import node_values, read_after

    items = list(items)
    groups = duplicates(items).groups  # another item's thought is never a copy's
    values = values and model.config.stage_spec.markers
    n_layers = architecture(model).n_layers
    base = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, prompts=s.prompts)
    base_values = {}
    plan = [(kind, step) for step in _each_step(k, which) for kind in kinds]
    out = []
    for kind, steps in tqdm(plan, desc=f"ablate ({s.label})", unit="run", disable=not progress):
        at = read_after(model.config, steps[0] if steps else None, k, layer=s.layer, n_layers=n_layers,
                        all_at=1) if values else None
        if at is not None and at not in base_values:
            base_values[at] = node_values(model, tokenizer, items, at, batch_size=batch_size, progress=False).numpy()
        edit = ablation_edit(s.source, kind, steps, seed=seed, layer=s.layer, valid=s.valid, positions=s.positions,
                             groups=groups)
        name = f"{kind} {'all' if steps is None else steps[0]}"
        out.append(intervene(model, tokenizer, items, edit, k=k, name=name, values_at=at, batch_size=batch_size,
                             prompts=s.prompts, baseline=base, baseline_values=base_values.get(at)))
    return out


def patch_runs(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int, layer: int | None = None,
               batch_size: int = 32, progress: bool = True,
               which: Sequence[int | None] | None = None) -> list[PatchResult]:
    """Counterfactual pairs (A, B = A asked about another root): A's thoughts into B, all at once and one
    thought at a time (or those named in `which`: None for all, j for thought j); does B's answer (and frontier)
    follow A's? The frontier is read where the patched thoughts are first read (`values.read_after`; with all
    thoughts patched, after k)."""
    from probe.readouts.values import node_values, read_after

    items = list(items)
    index, b_items = counterfactual_pairs(items)
    if not index:
        raise InterventionError("no item has a counterfactual (another person who reaches the other option)")
    a_items = [items[i] for i in index]
    with rows_are(index):  # an error names the item of the data set, not of its counterfactual pairs
        sa = site(model, tokenizer, a_items, k=k, layer=layer, batch_size=batch_size)
        sb = site(model, tokenizer, b_items, k=k, layer=layer, batch_size=batch_size)
        a_answers = [answer_concept(r.prediction) for r in
                     evaluate(model, tokenizer, a_items, k=k, batch_size=batch_size, progress=False,
                              prompts=sa.prompts).items]
        base = evaluate(model, tokenizer, b_items, k=k, batch_size=batch_size, progress=False, prompts=sb.prompts)
        markers = model.config.stage_spec.markers
        n_layers = architecture(model).n_layers
        graphs_a = [ProsQAGraph.from_item(it) for it in a_items]
        follows = lambda preds: float(np.mean([answer_concept(p) == a for p, a in zip(preds, a_answers)]))  # noqa: E731
        a_roots = [node_names(it, model.config.data_format)[it.root] for it in a_items]
        rooted = lambda preds: float(np.mean([p.split()[:1] == [r] for p, r in zip(preds, a_roots)]))  # noqa: E731
        out = []
        for steps in tqdm(_each_step(k, which), desc=f"patch ({sa.label})", unit="run", disable=not progress):
            edit = patch_edit(sa.source, steps, layer=layer, valid=sa.valid & sb.valid, positions=sb.positions)
            res = evaluate(model, tokenizer, b_items, k=k, batch_size=batch_size, progress=False, edit=edit,
                           prompts=sb.prompts)
            at = read_after(model.config, steps[0] if steps else None, k, layer=layer, n_layers=n_layers,
                            all_at=k) if markers else None
            mass = base_mass = None
            if at is not None:
                v0 = node_values(model, tokenizer, b_items, at, batch_size=batch_size, progress=False).numpy()
                v1 = node_values(model, tokenizer, b_items, at, batch_size=batch_size, progress=False,
                                 edit=edit).numpy()
                base_mass = float(np.nanmean(frontier_mass(v0, graphs_a, at)))
                mass = float(np.nanmean(frontier_mass(v1, graphs_a, at)))
            preds, base_preds = [r.prediction for r in res.items], [r.prediction for r in base.items]
            out.append(PatchResult(
                site=sa.label, steps="all" if steps is None else str(steps[0]), n=len(b_items),
                follows_a=follows(preds), baseline_follows_a=follows(base_preds),
                names_a_root=rooted(preds), baseline_names_a_root=rooted(base_preds),
                accuracy=res.accuracy, baseline_accuracy=base.accuracy,
                changed=float(np.mean([p != q for p, q in zip(preds, base_preds)])),
                values_at=at, a_frontier_mass=mass, baseline_a_frontier_mass=base_mass))
        return out


STEER_KINDS = ("probe", "unembed", "random")


def steer_direction(model: CoconutModel, tokenizer, item: ProsQAItem, node: int, *, kind: str, step: int = 1,
                    probe: SavedProbe | None = None, seed: int = 0) -> Tensor:
    """Unit direction [d] toward one node of one item: a saved frontier probe's for its name at thought `step`,
    the unembedding row of its first name piece, or random."""
    if not 0 <= node < item.n_nodes:
        raise InterventionError(f"node {node} is out of range: the item has {item.n_nodes} nodes")
    if kind == "probe":
        if probe is None:
            raise InterventionError("a probe direction needs a saved frontier probe")
        dirs = probe.directions(step)
        name = node_names(item, model.config.data_format)[node]
        if name not in dirs:
            raise InterventionError(f"the probe has no direction for {name!r}")
        v = torch.as_tensor(dirs[name], dtype=torch.float)
    elif kind == "unembed":
        piece = name_pieces(item, tokenizer, model.config.data_format)[node][0]
        v = model.base.get_output_embeddings().weight[piece].detach().float().cpu()  # one row, not the matrix
    elif kind == "random":
        v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(seed))
    else:
        raise InterventionError(f"unknown direction {kind!r}; expected one of {STEER_KINDS}")
    return v / v.norm().clamp(min=1e-12)


def steering_directions(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, s: Site, step: int,
                        probe: SavedProbe | None = None, seed: int = 0) -> tuple[dict[str, Tensor], Tensor]:
    """Unit directions [n, d] toward each item's steer_target, by kind, and [n] bool: the items every kind has.

    probe: the frontier probe's direction for v's name at this thought (fit here on the site's
    activations when no saved probe is given); unembed: the unembedding row of v's first name piece
    (what the logit lens reads as v); random: a random direction per item.
    """
    items = list(items)
    fmt = model.config.data_format
    targets = [steer_target(it) for it in items]
    names = [node_names(it, fmt)[v] for it, v in zip(items, targets)]
    if probe is None:
        vocab = name_vocabulary(items, fmt)
        Y, present = probe_targets(items, step, "frontier", names=vocab, fmt=fmt)
        X = s.source[:, step - 1].numpy()
        keep = s.valid[:, step - 1].numpy()
        fitted = LinearProbe("classification").fit(X[keep], Y[keep], present[keep])
        dirs = {n: w / np.linalg.norm(w) for n, w in zip(vocab, fitted.coef_) if np.linalg.norm(w) > 0}
    else:
        dirs = probe.directions(step)
    d = model.d_model
    has = torch.tensor([n in dirs for n in names])
    probe_dirs = torch.stack([torch.as_tensor(dirs[n], dtype=torch.float) if n in dirs else torch.zeros(d)
                              for n in names])
    unembed = torch.stack([steer_direction(model, tokenizer, it, v, kind="unembed") for it, v in zip(items, targets)])
    rnd = torch.randn(len(items), d, generator=torch.Generator().manual_seed(seed))
    unit = lambda t: t / t.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # noqa: E731
    return {"probe": unit(probe_dirs), "unembed": unembed, "random": unit(rnd)}, has


def _no_steering_direction(n: int, step: int, saved: bool = False) -> InterventionError:
    """The one message for steering without any item's direction (steer_runs; run_interventions checks first)."""
    whose = "the saved probe" if saved else f"the frontier probe fit on {'this item' if n == 1 else f'these {n} items'}"
    return InterventionError(f"steering: {whose} has no direction for any item's steering target (a parent of its "
                             f"wrong option; a probe learns a name's direction only if it is in the frontier at "
                             f"thought {step} in some items and out of it in others); give more items, another probe "
                             "(--probe), or leave steering out (--only k,ablate,patch)")


def _steerable(items: Sequence[ProsQAItem], step: int, fmt: str = "sentences") -> bool:
    """Whether a frontier probe fit on the items could learn a direction for some item's steering target: its name
    in the frontier at thought `step` in some items that have it and out of it in others (from the graphs alone)."""
    vocab = name_vocabulary(items, fmt)
    Y, present = probe_targets(items, step, "frontier", names=vocab, fmt=fmt)
    col = {n: j for j, n in enumerate(vocab)}
    for it in items:
        j = col[node_names(it, fmt)[steer_target(it)]]
        labels = Y[present[:, j], j] > 0.5
        if labels.any() and not labels.all():
            return True
    return False


def steer_runs(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int, step: int = 1, layer: int = -1,
               alphas: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), probe: SavedProbe | None = None,
               batch_size: int = 32, seed: int = 0, progress: bool = True) -> list[SteerPoint]:
    """Dose-response: add alpha x (mean norm of the layer's residual at thought `step`) x a unit direction toward
    v (a parent of the wrong option) at thought `step`, for probe, unembedding and random directions. v's value is
    read where the steered thought is first read (`values.read_after`)."""
    from probe.readouts.values import node_values, read_after

    items = list(items)
    s = site(model, tokenizer, items, k=k, layer=layer, batch_size=batch_size)
    if not 1 <= step <= k:
        raise InterventionError(f"thought {step} out of range: there are {k} thoughts (1..{k})")
    dirs, has = steering_directions(model, tokenizer, items, s=s, step=step, probe=probe, seed=seed)
    keep = torch.nonzero(has & s.valid[:, step - 1]).flatten().tolist()
    if not keep:
        raise _no_steering_direction(len(items), step, saved=probe is not None)
    items = [items[i] for i in keep]
    prompts = None if s.prompts is None else [s.prompts[i] for i in keep]
    positions = None if s.positions is None else s.positions[keep]
    targets = [steer_target(it) for it in items]
    option = [node_names(it, model.config.data_format)[it.neg_target] for it in items]
    scale = float(s.norm[step - 1])
    at = read_after(model.config, step, k, layer=layer, n_layers=architecture(model).n_layers) \
        if model.config.stage_spec.markers else None
    with rows_are(keep):  # an error names the item of the data set, not of the steerable ones
        base = evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, prompts=prompts)
        base_value = float("nan")
        if at is not None:
            v = node_values(model, tokenizer, items, at, batch_size=batch_size, progress=False).numpy()
            base_value = float(np.mean([v[b, t] for b, t in enumerate(targets)]))
        out = []
        plan = [(kind, a) for kind in dirs for a in alphas]
        for kind, alpha in tqdm(plan, desc=f"steer (layer {layer}, thought {step})", unit="run",
                                disable=not progress):
            edit = steer_edit(dirs[kind][keep], alpha * scale, step, n=len(items), k=k, layer=layer,
                              positions=positions)
            res = base if alpha == 0 else evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=False,
                                                   edit=edit, prompts=prompts)
            value = base_value
            if at is not None and alpha != 0:
                v = node_values(model, tokenizer, items, at, batch_size=batch_size, progress=False, edit=edit).numpy()
                value = float(np.mean([v[b, t] for b, t in enumerate(targets)]))
            preds = [r.prediction for r in res.items]
            out.append(SteerPoint(
                direction=kind, alpha=float(alpha), n=len(items), value=value,
                to_option=float(np.mean([answer_concept(p) == o for p, o in zip(preds, option)])),
                accuracy=res.accuracy,
                changed=float(np.mean([p != r.prediction for p, r in zip(preds, base.items)]))))
        return out


def accuracy_without_thoughts(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int,
                              batch_size: int = 32) -> dict[int, float]:
    """Accuracy after each forced number of thoughts 0..k; a CoT model: answering at once (0) and after its
    own chain (k)."""
    cfg = model.config
    if cfg.stage_spec.markers:
        return {j: evaluate(model, tokenizer, items, k=j, batch_size=batch_size, progress=False).accuracy
                for j in range(k + 1)}
    marker = tokenizer.encode("###", add_special_tokens=False)
    prompts = [list(tokenize_item(it, tokenizer, cfg.data_format).question) + marker for it in items]
    return {0: evaluate(model, tokenizer, items, prompts=prompts, batch_size=batch_size, progress=False).accuracy,
            k: evaluate(model, tokenizer, items, k=0, batch_size=batch_size, progress=False).accuracy}


# ---------------------------------------------------------------------------- one checkpoint, every test


@dataclass(kw_only=True, frozen=True)
class InterventionReport:
    """Every causal test of one checkpoint on one data set: thoughts removed, ablated, patched and steered."""

    checkpoint: str
    mode: str
    k: int
    n: int
    accuracy_by_k: dict[int, float]  # a CoT model: 0 = answering at once, k = after its own chain
    ablations: dict[str, list[InterventionResult]]  # by site label ("thought", "layer 2")
    patching: dict[str, list[PatchResult]]
    steering: list[SteerPoint]
    steer_step: int
    steer_layer: int
    skipped: list[str]  # tests that do not apply to this model, and why

    def as_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint, "mode": self.mode, "k": self.k, "n": self.n,
            "accuracy_by_k": {str(j): a for j, a in self.accuracy_by_k.items()},
            "ablations": {s: [r.as_dict() for r in rs] for s, rs in self.ablations.items()},
            "patching": {s: [r.as_dict() for r in rs] for s, rs in self.patching.items()},
            "steering": {"step": self.steer_step, "layer": self.steer_layer,
                         "points": [p.as_dict() for p in self.steering]},
            "skipped": self.skipped,
        }


def run_interventions(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k: int | None = None,
    sites: Sequence[int | None] = (None,), kinds: Sequence[str] = ABLATIONS, steer_step: int = 1,
    steer_layer: int = -1, alphas: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
    probe: SavedProbe | None = None, batch_size: int = 32, seed: int = 0, progress: bool = True,
    checkpoint: str = "", parts: Sequence[str] = PARTS,
) -> InterventionReport:
    """Accuracy after 0..k thoughts; each ablation and counterfactual patch at each site (None: the thoughts
    fed back, an int: that layer's residual); a steering dose-response. A CoT control is edited at its own
    chain's step ends, so its thought site is skipped. A model that answers at once (no_thoughts, no_cot) gets its
    accuracy only. parts picks some of PARTS (the others stay empty)."""
    items = list(items)
    if not items:
        raise InterventionError("no items to intervene on")
    cfg = model.config
    if not cfg.stage_spec.reasons:  # no_thoughts, no_cot: the accuracy it answers with is all there is
        acc = evaluate(model, tokenizer, items, k=0, batch_size=batch_size, progress=False).accuracy
        return InterventionReport(
            checkpoint=checkpoint, mode=cfg.mode, k=0, n=len(items), accuracy_by_k={0: acc} if "k" in parts else {},
            ablations={}, patching={}, steering=[], steer_step=steer_step, steer_layer=steer_layer,
            skipped=[f"a {cfg.mode} model answers right after the question: nothing to ablate, patch or steer"])
    k = cfg.thought_count(k, 1, "k", InterventionError, "to intervene on thoughts")
    n_layers = architecture(model).n_layers
    for layer in [*sites, steer_layer]:
        if layer is not None:
            layer_index(layer, n_layers, InterventionError)
    if unknown := sorted(set(parts) - set(PARTS)):
        raise InterventionError(f"unknown part(s) {unknown}; expected some of {', '.join(PARTS)}")
    if "ablate" in parts and "other" in kinds and sites and duplicates(items).n_distinct < 2:
        held = "1 item" if len(items) == 1 else f"{len(items)} items, all copies of one"
        raise InterventionError(f"{held}: the 'other' ablation gives each item another item's thoughts, so it needs "
                                "at least 2 distinct items; give more, or leave 'other' out "
                                "(--ablations zero,mean,random)")
    if "steer" in parts and probe is None and not _steerable(items, steer_step, model.config.data_format):
        raise _no_steering_direction(len(items), steer_step)  # before any run, not after the others
    skipped = []
    ablations, patching = {}, {}
    for layer in sites if {"ablate", "patch"} & set(parts) else ():
        if layer is None and not cfg.stage_spec.markers:
            skipped.append(f"thought site: a {cfg.mode} model feeds no thought back")
            continue
        s = site(model, tokenizer, items, k=k, layer=layer, batch_size=batch_size)
        if "ablate" in parts:
            ablations[s.label] = ablation_runs(model, tokenizer, items, k=k, s=s, kinds=kinds, batch_size=batch_size,
                                               seed=seed, progress=progress)
        if "patch" in parts:
            patching[s.label] = patch_runs(model, tokenizer, items, k=k, layer=layer, batch_size=batch_size,
                                           progress=progress)
    steering = []
    if "steer" in parts:
        steering = steer_runs(model, tokenizer, items, k=k, step=steer_step, layer=steer_layer, alphas=alphas,
                              probe=probe, batch_size=batch_size, seed=seed, progress=progress)
    by_k = accuracy_without_thoughts(model, tokenizer, items, k=k, batch_size=batch_size) if "k" in parts else {}
    return InterventionReport(checkpoint=checkpoint, mode=cfg.mode, k=k, n=len(items), accuracy_by_k=by_k,
                              ablations=ablations, patching=patching, steering=steering, steer_step=steer_step,
                              steer_layer=steer_layer, skipped=skipped)
