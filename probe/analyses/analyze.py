"""The latent-search study of a checkpoint on a data set: every frontier measure, per thought, in one call.

`analyze` runs the model (capture, node values after every forced k, greedy continuations
after every forced k) and hands the captured numbers to the pure functions of
`probe.analyses.frontier`; `Analysis` keeps the arrays for a notebook and `report()` gives the
`probe analyze` JSON. A model without latent mode (the CoT control) is read after k gold
language steps instead of k thoughts (see `probe.data.render.step_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from probe.capture.trace import capture
from probe.analyses.superposition import Decomposition, superposition
from probe.readouts.values import emitted_nodes, readout_of, values_by_k, values_from_logits
from probe.model.hook_names import select_hooks
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.data.render import step_prompt, tokenize_item
from probe.model.evaluate import evaluate, thoughts_for
from probe.analyses.frontier import (CATEGORIES, GROUPS, AttentionByGroup, GroupMeans, Parallelism, ValueByHeight,
                            attention_by_group, frontier_mass, group_means, inner_products, node_groups, parallelism,
                            parse_steps, path_category, value_by_height)
from probe.model.architecture import architecture
from probe.model.coconut import CoconutModel
from probe.model.rows import rows_are


@dataclass(kw_only=True, frozen=True)
class Verbalised:
    """What the model writes when forced out of latent mode after k thoughts, checked against the graph."""

    k: int
    text: str  # the continuation, special tokens skipped
    steps: list[tuple[str, str]]  # its (parent, child) reasoning steps
    category: str  # one of frontier.CATEGORIES
    first_node: str | None  # the first node it names (None: it answers at once)
    first_group: str | None  # that node's group at step k (GROUPS, or "unknown" for a name not in the graph)
    correct: bool


@dataclass(frozen=True)
class Analysis:
    """Every frontier measure of one checkpoint on a data set, thought by thought (k = 1..k_max)."""

    checkpoint: str
    mode: str
    readout: str  # how values are read: "language" (forced step) or "emitted" (thought k itself); values.readout_of
    k_max: int
    items: list[ProsQAItem] = field(repr=False)
    accuracy: float  # at the checkpoint's own number of thoughts
    accuracy_by_k: dict[int, float]  # forced k = 0..k_max
    values: np.ndarray = field(repr=False)  # [n_items, k_max, max_nodes] value of each node after k thoughts
    step_valid: np.ndarray = field(repr=False)  # [n_items, k_max] False past a CoT item's gold steps
    value_by_group: GroupMeans = field(repr=False)
    inner_product: GroupMeans = field(repr=False)
    attention: AttentionByGroup = field(repr=False)
    parallelism: dict[int, Parallelism] = field(repr=False)
    frontier_mass: np.ndarray = field(repr=False)  # [n_items, k_max], nan where the step is not valid
    value_by_height: dict[str, dict[int, ValueByHeight]] = field(repr=False)  # "shortest"|"longest" -> k -> ...
    verbalised: list[list[Verbalised | None]] = field(repr=False)  # [n_items][k = 0..k_max], None: no such step
    decomposition: Decomposition = field(repr=False)  # each thought (CoT: each step's end state) over the item's names
    # The emitted readout: per item and thought, the node its top token names (index, -1 for a token that names
    # no node of the item) and that token; None for the language readout.
    emitted_node: np.ndarray | None = field(repr=False, default=None)  # [n_items, k_max]
    emitted_token: np.ndarray | None = field(repr=False, default=None)  # [n_items, k_max]

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def steps(self) -> list[int]:
        return list(range(1, self.k_max + 1))

    def categories(self) -> dict[int, dict[str, int]]:
        """{k: {category: count}} over the items that reach step k."""
        out = {}
        for k in range(self.k_max + 1):
            vs = self._verbalised_at(k)
            out[k] = {c: sum(v.category == c for v in vs) for c in CATEGORIES}
        return out

    def first_groups(self) -> dict[int, dict[str, int]]:
        """{k: {group: count}} of the first node each continuation names after k thoughts."""
        out = {}
        for k in range(self.k_max + 1):
            vs = self._verbalised_at(k)
            out[k] = {g: sum(v.first_group == g for v in vs) for g in (*GROUPS, "unknown")}
            out[k]["none"] = sum(v.first_group is None for v in vs)
        return out

    def emitted_groups(self) -> dict[int, dict[str, int]]:
        """{k: {group: count}} of the node each thought's top token names (emitted readout; "unknown": a token that
        names no node of the item); empty for the language readout."""
        if self.emitted_node is None:
            return {}
        graphs = [ProsQAGraph.from_item(it) for it in self.items]
        out = {}
        for k in self.steps:
            counts = dict.fromkeys((*GROUPS, "unknown"), 0)
            for b, g in enumerate(graphs):
                if self.step_valid[b, k - 1]:
                    v = int(self.emitted_node[b, k - 1])
                    counts["unknown" if v < 0 else GROUPS[int(node_groups(g, k)[v])]] += 1
            out[k] = counts
        return out

    def report(self, per_item: bool = True) -> dict[str, Any]:
        """The `probe analyze` report.json (without the control), nan and inf as None (strict JSON)."""
        mass = self.frontier_mass
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint, "mode": self.mode, "readout": self.readout, "n": self.n,
            "k_max": self.k_max, "accuracy": self.accuracy,
            "accuracy_by_k": {str(k): a for k, a in self.accuracy_by_k.items()},
            "inner_product": self.inner_product.as_dict(),
            "attention": self.attention.as_dict(),
            "attention_by_head": self.attention.heads_dict(),
            "attention_frontier_gap": self.attention.gap_dict(),
            "superposition": self.decomposition.as_dict(),
            "emitted_node": {str(k): c for k, c in self.emitted_groups().items()},
            "parallelism": {str(k): p.mean for k, p in self.parallelism.items()},
            "parallelism_percentiles": {str(k): {f"top{j + 1}": p.percentiles()[:, j].tolist() for j in range(3)}
                                        for k, p in self.parallelism.items()},
            "frontier_value_mass": {str(k): _nanmean(mass[:, i]) for i, k in enumerate(self.steps)},
            "value_by_group": self.value_by_group.as_dict(),
            "value_by_height": {h: {str(k): {("reaches_target" if r else "cannot_reach"): {str(ht): v for ht, v in m.items()}
                                             for r, m in vh.means().items()} for k, vh in by_k.items()}
                                for h, by_k in self.value_by_height.items()},
            "categories": {str(k): c for k, c in self.categories().items()},
            "verbalised_first_node": {str(k): c for k, c in self.first_groups().items()},
        }
        if per_item:
            out["items"] = [self.item_report(b) for b in range(self.n)]
        return finite(out)

    def item_report(self, b: int) -> dict[str, Any]:
        """One item: every node's value, group and height per thought, and what it says after each k."""
        it, g = self.items[b], ProsQAGraph.from_item(self.items[b])
        nodes = {}
        for v, name in enumerate(it.idx_to_symbol):
            nodes[name] = {
                "depth": None if not np.isfinite(g.depth[v]) else int(g.depth[v]),
                "height_shortest": int(g.height_shortest[v]), "height_longest": int(g.height_longest[v]),
                "reaches_target": bool(np.isfinite(g.distance_to_target[v])),
                "value": {str(k): float(self.values[b, k - 1, v]) for k in self.steps},
                "group": {str(k): GROUPS[int(node_groups(g, k)[v])] for k in self.steps},
                "coefficient": {str(k): float(self.decomposition.coef[b, k - 1, v]) for k in self.steps},
            }
        verb = {str(v.k): {"text": v.text, "category": v.category, "first_node": v.first_node,
                           "first_group": v.first_group, "correct": v.correct}
                for v in self.verbalised[b] if v is not None}
        out = {"question": it.question, "answer": it.answer, "nodes": nodes, "verbalised": verb,
               "frontier": {str(k): [it.name(v) for v in g.frontier(k)] for k in self.steps},
               "superposition_r2": {str(k): float(self.decomposition.r2[b, k - 1]) for k in self.steps}}
        if self.emitted_node is not None:
            out["emitted"] = {str(k): it.name(int(v)) if v >= 0 else None
                              for k, v in zip(self.steps, self.emitted_node[b])}
        return finite(out)

    def _verbalised_at(self, k: int) -> list[Verbalised]:
        return [row[k] for row in self.verbalised if row[k] is not None]


def finite(x: Any) -> Any:
    """x with every nan or inf float (in nested dicts and lists) replaced by None, so that it is strict JSON."""
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _verbalise(item: ProsQAItem, g: ProsQAGraph, k: int, text: str, correct: bool, fmt: str) -> Verbalised:
    steps = parse_steps(text, fmt)
    first = steps[0][0] if steps else None
    if first is None:
        group = None
    elif first in item.idx_to_symbol:
        group = GROUPS[int(node_groups(g, k)[item.index(first)])]
    else:
        group = "unknown"
    return Verbalised(k=k, text=text, steps=steps, category=path_category(item, steps, correct), first_node=first,
                      first_group=group, correct=correct)


@dataclass(frozen=True)
class _ThoughtMeasures:
    """What one capture at k_max (plus, for the language readout, the forced steps) gives: every measure of the
    thoughts themselves, before any continuation is generated."""

    k_max: int
    valid: np.ndarray  # [n, k_max]
    readout: str
    values: np.ndarray  # [n, k_max, max_nodes]
    inner_product: GroupMeans
    attention: AttentionByGroup
    decomposition: Decomposition
    value_by_group: GroupMeans
    parallelism: dict[int, Parallelism]
    frontier_mass: np.ndarray  # [n, k_max]
    value_by_height: dict[str, dict[int, ValueByHeight]]
    emitted_node: np.ndarray | None
    emitted_token: np.ndarray | None


def _k_max(model: CoconutModel, k_max: int | None) -> int:
    cfg = model.config
    if k_max is None and not cfg.stage_spec.markers:
        k_max = cfg.max_latent_stage * cfg.c_thought  # a CoT model: as many steps as its longest chain
    return cfg.thought_count(k_max, 1, "k_max")


def _thought_measures(model: CoconutModel, tokenizer, items: list[ProsQAItem], graphs: list[ProsQAGraph], k_max: int,
                      *, batch_size: int, progress: bool, heights: bool = True) -> _ThoughtMeasures:
    cfg = model.config
    steps = list(range(1, k_max + 1))
    n_steps = np.array([len(it.steps) for it in items])
    # [n, k_max] steps an item reaches: all with latent mode; for CoT, as many as its gold steps.
    valid = np.array(steps)[None, :] <= (np.full(len(items), k_max) if cfg.stage_spec.markers else n_steps)[:, None]

    # Thoughts and attention at every layer, in one capture at k_max.
    arch = architecture(model)
    names = select_hooks(arch.n_layers, ["*attn.hook_pattern"])
    trace = capture(model, tokenizer, items, k=k_max, names=names, batch_size=batch_size, progress=progress)
    thoughts = trace.thoughts.float()  # [n, k_max, d]
    name_ids = [name_tokens(it, tokenizer, cfg.data_format) for it in items]
    embeddings = model.base.get_input_embeddings().weight.detach().float().cpu()  # [vocab, d]
    ip = inner_products(thoughts, embeddings, name_ids, graphs)
    ip.per_item[~valid] = np.nan
    att = attention_by_group(trace.stack("attn.hook_pattern")[:, :k_max], trace.fact, graphs)
    att.invalidate(~valid)
    readout_rows = model.base.get_output_embeddings().weight.detach().float().cpu()  # [vocab, d]
    decomposition = superposition(thoughts, readout_rows, name_ids, graphs)
    for a in (decomposition.coef, decomposition.r2, decomposition.share):
        a[~valid] = np.nan

    # Node values after each k, and the measures built on them. The emitted readout is the captured logits at
    # the positions emitting thoughts 1..k_max; the language readout forces a step after each k.
    readout = readout_of(cfg)
    emitted_node = emitted_token = None
    if readout == "emitted":
        logits = trace.logits[:, :k_max]
        values = values_from_logits(logits, name_ids).numpy()
        emitted_node, emitted_token = emitted_nodes(logits, name_ids)
    else:
        values = values_by_k(model, tokenizer, items, k_max, batch_size=batch_size, progress=progress)
    del trace
    by_group = group_means(values, graphs, steps)
    par, mass = {}, np.full((len(items), k_max), np.nan)
    by_height: dict[str, dict[int, ValueByHeight]] = {"shortest": {}, "longest": {}} if heights else {}
    for k in steps:
        keep = np.flatnonzero(valid[:, k - 1])
        sub = [graphs[i] for i in keep]
        par[k] = parallelism(values[keep, k - 1], sub, k)
        mass[keep, k - 1] = frontier_mass(values[keep, k - 1], sub, k)
        for h in by_height:
            by_height[h][k] = value_by_height(values[keep, k - 1], sub, k, height=h)
    return _ThoughtMeasures(k_max=k_max, valid=valid, readout=readout, values=values, inner_product=ip, attention=att,
                            decomposition=decomposition, value_by_group=by_group, parallelism=par, frontier_mass=mass,
                            value_by_height=by_height, emitted_node=emitted_node, emitted_token=emitted_token)


def analyze(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k_max: int | None = None,
    batch_size: int = 32, checkpoint: str = "", progress: bool = True,
) -> Analysis:
    """Run every frontier measure of DESIGN.md on a checkpoint, for thoughts k = 1..k_max (default: its own).

    Raises ValueError for no items or a model that answers at once (no_thoughts, no_cot), CaptureError (a
    ValueError) for a k_max past the model's limits.
    """
    if not items:
        raise ValueError("analyze needs at least one item")
    cfg = model.config
    if not cfg.stage_spec.reasons:
        raise ValueError(f"a {cfg.mode} model answers right after the question: it has no thoughts and writes no "
                         "steps to measure (compare its accuracy, `probe eval`)")
    k_max = _k_max(model, k_max)
    items = list(items)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    m = _thought_measures(model, tokenizer, items, graphs, k_max, batch_size=batch_size, progress=progress)

    # What it says when forced out after k thoughts (k = 0..k_max), and accuracy.
    verbalised: list[list[Verbalised | None]] = [[None] * (k_max + 1) for _ in items]
    acc_by_k = {}
    toks = [tokenize_item(it, tokenizer, cfg.data_format) for it in items]
    for k in tqdm(range(k_max + 1), desc="continuations", unit="k", disable=not progress):
        prompts = [step_prompt(t, k, cfg.stage_spec, cfg.special) for t in toks]
        keep = [i for i, p in enumerate(prompts) if p is not None]
        if not keep:  # a CoT control whose items all have fewer than k steps
            acc_by_k[k] = float("nan")
            continue
        with rows_are(keep):
            res = evaluate(model, tokenizer, [items[i] for i in keep], prompts=[prompts[i] for i in keep],
                           batch_size=batch_size, progress=False)
        acc_by_k[k] = res.accuracy
        for i, r in zip(keep, res.items):
            verbalised[i][k] = _verbalise(items[i], graphs[i], k, r.text, r.correct, cfg.data_format)
    # The checkpoint's own k: already measured when it is one k for every item (pad_latent_to_max; CoT: 0).
    own = {thoughts_for(model, it, None) for it in items}
    if len(own) == 1 and (k_own := own.pop()) in acc_by_k:
        accuracy = acc_by_k[k_own]
    else:
        accuracy = evaluate(model, tokenizer, items, batch_size=batch_size, progress=False).accuracy
    return Analysis(
        checkpoint=checkpoint, mode=cfg.mode, readout=m.readout, k_max=k_max, items=items, accuracy=accuracy,
        accuracy_by_k=acc_by_k, values=m.values, step_valid=m.valid, value_by_group=m.value_by_group,
        inner_product=m.inner_product, attention=m.attention, parallelism=m.parallelism, frontier_mass=m.frontier_mass,
        value_by_height=m.value_by_height, verbalised=verbalised, decomposition=m.decomposition,
        emitted_node=m.emitted_node, emitted_token=m.emitted_token,
    )


@dataclass(frozen=True)
class SearchSummary:
    """The latent-search summary of a model at one point, small enough to log at every evaluation of a run.

    The measures "Emergence of Superposition" (Zhu et al. 2025) follow over training, each a mean over items by
    thought k: frontier value mass and optimal value mass, the cumulative top-1/2/3 frontier values, the inner
    products <thought k, name embedding> by node group, the share of the superposition decomposition on frontier_k,
    and per layer the attention gap between the edges leaving frontier_{k-1} and the others.
    """

    n: int
    readout: str
    frontier_mass: dict[int, float]
    optimal_mass: dict[int, float]
    parallelism: dict[int, dict[str, float]]  # k -> {"top1", "top2", "top3"}
    inner_product: dict[int, dict[str, float]]  # k -> group -> mean
    frontier_share: dict[int, float]
    attention_gap: dict[int, dict[int, float]]  # k -> layer -> gap

    def as_dict(self) -> dict[str, Any]:
        """Strict JSON (string keys, nan as None), as a training record stores it."""
        keyed = lambda d: {str(k): ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)  # noqa: E731
                                    for k, v in d.items()}
        return finite({"n": self.n, "readout": self.readout, "frontier_mass": keyed(self.frontier_mass),
                       "optimal_mass": keyed(self.optimal_mass), "parallelism": keyed(self.parallelism),
                       "inner_product": keyed(self.inner_product), "frontier_share": keyed(self.frontier_share),
                       "attention_gap": keyed(self.attention_gap)})


def checkpoint_name(path: str) -> str:
    """How a report names a checkpoint: the last part of its path (the path itself if it has none)."""
    return path.rstrip("/").split("/")[-1] or path


def last_layer(per_layer: dict[str, float]) -> float:
    """The last layer's entry of a per-layer figure keyed by layer number ({"0": .., "1": ..}, as JSON keeps it)."""
    return per_layer[str(max(map(int, per_layer)))]


def search_summary(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k_max: int | None = None,
                   batch_size: int = 64) -> SearchSummary:
    """The SearchSummary of a model on some items, thoughts k = 1..k_max (default: its own): one capture (and for the
    language readout, one forced step per k), no generation. Raises ValueError for no items or a model without
    thoughts (nothing to summarise)."""
    if not items:
        raise ValueError("search_summary needs at least one item")
    if not model.config.stage_spec.markers:
        raise ValueError(f"a {model.config.mode} model has no thoughts to summarise")
    items = list(items)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    was_training = model.training
    m = _thought_measures(model, tokenizer, items, graphs, _k_max(model, k_max), batch_size=batch_size,
                          progress=False, heights=False)
    model.train(was_training)
    steps = range(1, m.k_max + 1)
    optimal = np.array([[np.nansum(m.values[b, k - 1, g.optimal(k)]) for k in steps] for b, g in enumerate(graphs)])
    ip, gap = m.inner_product.mean, m.attention.gap_mean
    share = m.decomposition.frontier_share
    return SearchSummary(
        n=len(items), readout=m.readout,
        frontier_mass={k: _nanmean(m.frontier_mass[:, k - 1]) for k in steps},
        optimal_mass={k: _nanmean(optimal[:, k - 1]) for k in steps},
        parallelism={k: m.parallelism[k].mean for k in steps},
        inner_product={k: {g: float(ip[k - 1, j]) for j, g in enumerate(GROUPS)} for k in steps},
        frontier_share={k: _nanmean(share[:, k - 1]) for k in steps},
        attention_gap={k: {layer: float(gap[k - 1, layer]) for layer in range(gap.shape[1])} for k in steps},
    )
