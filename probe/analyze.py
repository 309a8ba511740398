"""The latent-search study of a checkpoint on a data set: every frontier measure, per thought, in one call.

`analyze` runs the model (capture, node values after every forced k, greedy continuations
after every forced k) and hands the captured numbers to the pure functions of
`probe.frontier`; `Analysis` keeps the arrays for a notebook and `report()` gives the
`probe analyze` JSON. A model without latent mode (the CoT control) is read after k gold
language steps instead of k thoughts (see `probe.data.render.step_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from probe.capture import architecture, capture
from probe.values import values_by_k
from probe.model.hook_names import select_hooks
from probe.data.graph import ProsQAGraph
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.data.render import step_prompt, tokenize_item
from probe.evaluate import evaluate, thoughts_for
from probe.frontier import (CATEGORIES, GROUPS, AttentionByGroup, GroupMeans, Parallelism, ValueByHeight,
                            attention_by_group, frontier_mass, group_means, inner_products, node_groups, parallelism,
                            parse_steps, path_category, value_by_height)
from probe.model.coconut import CoconutModel


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

    def report(self, per_item: bool = True) -> dict[str, Any]:
        """The `probe analyze` report.json (without the control), nan and inf as None (strict JSON)."""
        mass = self.frontier_mass
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint, "mode": self.mode, "n": self.n, "k_max": self.k_max,
            "accuracy": self.accuracy,
            "accuracy_by_k": {str(k): a for k, a in self.accuracy_by_k.items()},
            "inner_product": self.inner_product.as_dict(),
            "attention": self.attention.as_dict(),
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
            }
        verb = {str(v.k): {"text": v.text, "category": v.category, "first_node": v.first_node,
                           "first_group": v.first_group, "correct": v.correct}
                for v in self.verbalised[b] if v is not None}
        return finite({"question": it.question, "answer": it.answer, "nodes": nodes, "verbalised": verb,
                       "frontier": {str(k): [it.name(v) for v in g.frontier(k)] for k in self.steps}})

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


def analyze(
    model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, k_max: int | None = None,
    batch_size: int = 32, checkpoint: str = "", progress: bool = True,
) -> Analysis:
    """Run every frontier measure of DESIGN.md on a checkpoint, for thoughts k = 1..k_max (default: its own)."""
    if not items:
        raise ValueError("analyze needs at least one item")
    cfg = model.config
    markers = cfg.stage_spec.markers
    if k_max is None and not markers:
        k_max = cfg.max_latent_stage * cfg.c_thought  # a CoT model: as many steps as its longest chain
    k_max = cfg.thought_count(k_max, 1, "k_max")
    items = list(items)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    steps = list(range(1, k_max + 1))
    n_steps = np.array([len(it.steps) for it in items])
    # [n, k_max] steps an item reaches: all with latent mode; for CoT, as many as its gold steps.
    valid = np.array(steps)[None, :] <= (np.full(len(items), k_max) if markers else n_steps)[:, None]

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
    att.per_item[~valid] = np.nan
    del trace

    # Node values after each forced k, and the measures built on them.
    values = values_by_k(model, tokenizer, items, k_max, batch_size=batch_size, progress=progress)
    by_group = group_means(values, graphs, steps)
    par, mass = {}, np.full((len(items), k_max), np.nan)
    heights: dict[str, dict[int, ValueByHeight]] = {"shortest": {}, "longest": {}}
    for k in steps:
        keep = np.flatnonzero(valid[:, k - 1])
        sub = [graphs[i] for i in keep]
        par[k] = parallelism(values[keep, k - 1], sub, k)
        mass[keep, k - 1] = frontier_mass(values[keep, k - 1], sub, k)
        for h in heights:
            heights[h][k] = value_by_height(values[keep, k - 1], sub, k, height=h)

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
        checkpoint=checkpoint, mode=cfg.mode, k_max=k_max, items=items, accuracy=accuracy, accuracy_by_k=acc_by_k,
        values=values, step_valid=valid, value_by_group=by_group, inner_product=ip, attention=att, parallelism=par,
        frontier_mass=mass, value_by_height=heights, verbalised=verbalised,
    )



CARD_HEADING = "## Latent search"


def markdown_summary(report: dict[str, Any], data: str = "") -> str:
    """A model-card section from a `probe analyze` report (and its control, if any): one row per thought."""
    ctrl = report.get("control")
    pair = [report] + ([ctrl] if ctrl else [])

    def cell(get) -> str:
        vals = []
        for r in pair:
            try:
                v = get(r)
            except (KeyError, TypeError):
                v = None
            vals.append("-" if v is None else f"{v:.3f}")
        return " / ".join(vals)

    who = f"`{report['checkpoint'].rstrip('/').split('/')[-1]}`"
    if ctrl:
        who += f" / control `{ctrl['checkpoint'].rstrip('/').split('/')[-1]}` ({ctrl['mode']})"
    lines = [
        CARD_HEADING, "",
        f"`probe analyze` on {report['n']} items{f' of {data}' if data else ''}: {who}. Values are the probability of "
        "each node's name as the next step's first concept after k forced thoughts; inner products are "
        "<thought k, input embedding of the name>; see DESIGN.md for every definition.", "",
        "| k | frontier value mass | top-1 | top-3 | <t, optimal> | <t, frontier> | <t, reachable> | <t, unreachable> "
        "| accuracy at forced k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ks = sorted(int(k) for k in report["accuracy_by_k"])
    for k in ks:
        s = str(k)
        lines.append("| " + " | ".join([
            s, cell(lambda r: r["frontier_value_mass"][s]), cell(lambda r: r["parallelism"][s]["top1"]),
            cell(lambda r: r["parallelism"][s]["top3"]),
            *[cell(lambda r, g=g: r["inner_product"][s][g]) for g in GROUPS],
            cell(lambda r: r["accuracy_by_k"][s]),
        ]) + " |")
    lines += ["", "Reasoning-path categories of the continuation after forced k thoughts (counts; model / control):", "",
              "| k | " + " | ".join(c.replace("_", " ") for c in CATEGORIES) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for k in ks:
        s = str(k)
        lines.append(f"| {k} | " + " | ".join(
            " / ".join(str(r["categories"][s][c]) if s in r["categories"] else "-" for r in pair)
            for c in CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


def replace_card_section(card: str, section: str) -> str:
    """The card with its latent-search section replaced by section (or section appended)."""
    start = card.find(CARD_HEADING + "\n")
    if start < 0:
        return card.rstrip("\n") + "\n\n" + section
    end = card.find("\n## ", start + len(CARD_HEADING))
    rest = card[end + 1 :] if end >= 0 else ""
    return card[:start] + section + ("\n" + rest if rest else "")
