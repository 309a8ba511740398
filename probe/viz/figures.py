"""Plotly figures: functions that take Analysis results (or reports, or one item's readings) and return a go.Figure.

Each is named for what it draws, `<what>_figure` (`frontier_mass_figure` draws what `frontier.frontier_mass`
measures), so that no figure takes the name of a measure. Each figure of an Analysis puts the model and its control
(when given) side by side, one column each, on shared axes, so that a pattern is never shown without its control.
The keys of FIGURES and INTERVENTION_FIGURES name the pages `probe analyze` and `probe intervene` write (each key +
artifacts.FIGURE_SUFFIX).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from probe.analyses.analyze import Analysis, last_layer
from probe.data.graph import ProsQAGraph
from probe.data.render import node_labels
from probe.analyses.frontier import CATEGORIES, GROUPS, GroupMeans, frontier_mass, nanmean_items

GROUP_COLORS = dict(zip(GROUPS, ("#d62728", "#ff7f0e", "#1f77b4", "#7f7f7f")))
K_COLORS = qualitative.Plotly


def _label(a: Analysis) -> str:
    return f"{Path(a.checkpoint).name or a.mode} ({a.mode})"


def _side_by_side(analyses: Sequence[Analysis], title: str, draw: Callable[[go.Figure, Analysis, int, bool], None],
                  x_title: str, y_title: str, barmode: str | None = None) -> go.Figure:
    """One column per analysis; draw(fig, analysis, col, first) adds that column's traces."""
    fig = make_subplots(rows=1, cols=len(analyses), shared_yaxes=True, subplot_titles=[_label(a) for a in analyses],
                        horizontal_spacing=0.06)
    for c, a in enumerate(analyses, start=1):
        draw(fig, a, c, c == 1)
        fig.update_xaxes(title_text=x_title, row=1, col=c)
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(title=title, template="plotly_white", legend_tracegroupgap=4, barmode=barmode)
    return fig


def _models(a: Analysis, control: Analysis | None) -> list[Analysis]:
    return [a] if control is None else [a, control]


def _group_bars(a: Analysis, control: Analysis | None, means: Callable[[Analysis], GroupMeans], title: str,
                y_title: str) -> go.Figure:
    """One bar per node group and thought, from a GroupMeans of each analysis."""
    def draw(fig, an, col, first):
        m = means(an).mean
        for j, g in enumerate(GROUPS):
            fig.add_bar(x=an.steps, y=m[:, j], name=g, marker_color=GROUP_COLORS[g], legendgroup=g, showlegend=first,
                        row=1, col=col)
    return _side_by_side(_models(a, control), title, draw, "thoughts k", y_title, barmode="group")


def _stacked_fractions(a: Analysis, control: Analysis | None, counts: Callable[[Analysis], dict[int, dict[str, int]]],
                       colors: dict[str, str], title: str) -> go.Figure:
    """Stacked bars of {k: {label: count}} as fractions of the items at each k."""
    def draw(fig, an, col, first):
        c = counts(an)
        ks = sorted(c)
        totals = [max(1, sum(c[k].values())) for k in ks]
        for label, color in colors.items():
            fig.add_bar(x=ks, y=[c[k][label] / t for k, t in zip(ks, totals)], name=label, marker_color=color,
                        legendgroup=label, showlegend=first, row=1, col=col)
    return _side_by_side(_models(a, control), title, draw, "thoughts k", "fraction of items", barmode="stack")


def values_by_group_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Mean node value after k thoughts, by node group (the paper: value concentrates on the frontier)."""
    return _group_bars(a, control, lambda an: an.value_by_group, "Node value after k thoughts, by group", "mean value")


def frontier_mass_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Total value on frontier_k after k thoughts, with accuracy at forced k beside it."""
    def draw(fig, an, col, first):
        mass = [np.nanmean(an.frontier_mass[:, i]) if np.isfinite(an.frontier_mass[:, i]).any() else None
                for i in range(an.k_max)]
        fig.add_scatter(x=an.steps, y=mass, mode="lines+markers", name="frontier value mass", legendgroup="mass",
                        line_color="#d62728", showlegend=first, row=1, col=col)
        ks = sorted(an.accuracy_by_k)
        fig.add_scatter(x=ks, y=[an.accuracy_by_k[k] for k in ks], mode="lines+markers", name="accuracy at forced k",
                        legendgroup="acc", line=dict(color="#1f77b4", dash="dot"), showlegend=first, row=1, col=col)
    return _side_by_side(_models(a, control), "Frontier value mass and accuracy by thought", draw, "thoughts k",
                         "probability / accuracy")


def value_by_height_figure(a: Analysis, control: Analysis | None = None, height: str = "shortest") -> go.Figure:
    """Frontier nodes' mean value against their height, for nodes that reach the target and those that do not."""
    def draw(fig, an, col, first):
        for i, (k, vh) in enumerate(an.value_by_height[height].items()):
            for reach, means in vh.means().items():
                if not means:
                    continue
                hs = sorted(means)
                fig.add_scatter(x=hs, y=[means[h] for h in hs], mode="lines+markers",
                                name=f"k={k}, {'reaches target' if reach else 'cannot reach'}",
                                legendgroup=f"{k}{reach}", showlegend=first,
                                line=dict(color=K_COLORS[i % len(K_COLORS)], dash="solid" if reach else "dot"),
                                row=1, col=col)
    return _side_by_side(_models(a, control), f"Frontier value against height ({height} path to a leaf)", draw,
                         "height", "mean value")


def parallelism_figure(a: Analysis, control: Analysis | None = None, ks: Sequence[int] = (1, 2, 3)) -> go.Figure:
    """Cumulative top-1/2/3 frontier values against their percentile over the data set (the paper's curves)."""
    q = np.arange(101)
    def draw(fig, an, col, first):
        for i, k in enumerate(k for k in ks if k in an.parallelism):
            curves = an.parallelism[k].percentiles(q)
            for j, dash in enumerate(("solid", "dash", "dot")):
                fig.add_scatter(x=q, y=curves[:, j], mode="lines", name=f"k={k} top-{j + 1}", legendgroup=f"{k}{j}",
                                showlegend=first, line=dict(color=K_COLORS[i % len(K_COLORS)], dash=dash),
                                row=1, col=col)
    return _side_by_side(_models(a, control), "Parallelism: cumulative top-j frontier values", draw, "percentile",
                         "cumulative value")


def categories_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Reasoning-path categories of the continuation after forced k = 0..k_max thoughts, as fractions."""
    colors = dict(zip(CATEGORIES, ("#2ca02c", "#98df8a", "#d62728", "#ff7f0e", "#1f77b4", "#7f7f7f")))
    return _stacked_fractions(a, control, Analysis.categories, colors,
                              "Reasoning-path categories after forced k thoughts")


def named_nodes(an: Analysis) -> dict[int, dict[str, int]]:
    """{k: {group: count}} of the node the model names after k thoughts, by its readout: the node thought k emits
    (its top token) for the emitted readout, the first node of the step forced after k thoughts for the language
    one ("none": it answered at once)."""
    if an.readout == "emitted":
        return {k: {**c, "none": 0} for k, c in an.emitted_groups().items()}
    return an.first_groups()


def verbalised_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Group of the node the model names after k thoughts: the node thought k emits (emitted readout) or the first
    node named when forced out of latent mode (language readout); `named_nodes`."""
    colors = {**GROUP_COLORS, "unknown": "#9467bd", "none": "#c7c7c7"}
    return _stacked_fractions(a, control, named_nodes, colors,
                              "The node named after k thoughts (emitted by thought k, or the forced step's first)")


def inner_products_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """<thought_k, embedding(v)> by node group (Zhu et al. 2025, Table 5)."""
    return _group_bars(a, control, lambda an: an.inner_product, "Superposition: <thought k, name embedding> by group",
                       "mean inner product")


def attention_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Attention from the position emitting thought k to each edge fact, by edge group, one row per layer."""
    models = _models(a, control)
    n_layers = max(an.attention.per_item.shape[2] for an in models)
    fig = make_subplots(rows=n_layers, cols=len(models), shared_xaxes=True, shared_yaxes=True, vertical_spacing=0.04,
                        subplot_titles=[f"{_label(an)} · layer {l}" for l in range(n_layers) for an in models])
    for c, an in enumerate(models, start=1):
        m = an.attention.mean
        for l in range(m.shape[1]):
            for j, g in enumerate(GROUPS):
                fig.add_scatter(x=an.attention.steps, y=m[:, l, j], mode="lines+markers", name=g, legendgroup=g,
                                line_color=GROUP_COLORS[g], showlegend=c == 1 and l == 0, row=l + 1, col=c)
    fig.update_xaxes(title_text="thoughts k", row=n_layers)
    fig.update_yaxes(title_text="attention per edge")
    fig.update_layout(title="Attention from thought k to edge facts, by edge group (source node's group at k - 1)",
                      template="plotly_white", height=260 * n_layers + 120)
    return fig


def superposition_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Each thought as a non-negative combination of its item's name rows: the mean share of the weight on each node
    group at step k (stacked), and the fit's mean R^2 (probe.analyses.superposition)."""
    def draw(fig, an, col, first):
        d = an.decomposition
        share, r2 = nanmean_items(d.share), nanmean_items(d.r2)  # [k, 4], [k]
        for j, g in enumerate(GROUPS):
            fig.add_bar(x=an.steps, y=share[:, j], name=f"share on {g}", marker_color=GROUP_COLORS[g], legendgroup=g,
                        showlegend=first, row=1, col=col)
        fig.add_scatter(x=an.steps, y=r2, mode="lines+markers", name="R² of the fit", legendgroup="r2",
                        line=dict(color="black", dash="dot"), showlegend=first, row=1, col=col)
    return _side_by_side(_models(a, control), "Superposition decomposition: thought k over its item's node names",
                         draw, "thoughts k", "share of the weight / R²", barmode="stack")


def attention_gap_figure(a: Analysis, control: Analysis | None = None) -> go.Figure:
    """Per layer, attention on the edges leaving frontier_{k-1} minus the attention on the other edges (per edge,
    heads averaged), by thought."""
    def draw(fig, an, col, first):
        gap = an.attention.gap_mean
        for l in range(gap.shape[1]):
            fig.add_scatter(x=an.attention.steps, y=gap[:, l], mode="lines+markers", name=f"layer {l}",
                            legendgroup=str(l), line_color=K_COLORS[l % len(K_COLORS)], showlegend=first, row=1, col=col)
    return _side_by_side(_models(a, control), "Attention gap: frontier edges minus the others", draw, "thoughts k",
                         "attention per edge (difference)")


def emergence_figure(histories: dict[str, Sequence[dict]], ks: Sequence[int] = (1, 2, 3)) -> go.Figure:
    """The search summary logged at each evaluation of training runs (records with "search"), against the step:
    frontier value mass, optimal value mass, the decomposition's frontier share and the last layer's attention gap,
    one panel each, a line per run and thought k. histories: {label: training records}."""
    panels = (("frontier_mass", "frontier value mass"), ("optimal_mass", "optimal value mass"),
              ("frontier_share", "NNLS frontier share"), ("attention_gap", "attention gap (last layer)"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t in panels], horizontal_spacing=0.06)
    dashes = ("solid", "dash", "dot", "dashdot")
    for r, (label, records) in enumerate(histories.items()):
        rec = [h for h in records if "search" in h]
        steps = [h.get("step", i) for i, h in enumerate(rec)]
        for i, k in enumerate(ks):
            for c, (key, _) in enumerate(panels, start=1):
                ys = []
                for h in rec:
                    v = h["search"][key].get(str(k))
                    ys.append(last_layer(v) if isinstance(v, dict) else v)  # the attention gap: the last layer
                fig.add_scatter(x=steps, y=ys, mode="lines+markers", name=f"{label} k={k}", legendgroup=f"{label}{k}",
                                showlegend=c == 1, line=dict(color=K_COLORS[i % len(K_COLORS)], dash=dashes[r % 4]),
                                row=1, col=c)
    fig.update_xaxes(title_text="optimizer step")
    fig.update_layout(title="Emergence of the search during training", template="plotly_white")
    return fig


FIGURES: dict[str, Callable[..., go.Figure]] = {
    "values_by_group": values_by_group_figure,
    "frontier_mass": frontier_mass_figure,
    "value_by_height": value_by_height_figure,
    "parallelism": parallelism_figure,
    "categories": categories_figure,
    "verbalised": verbalised_figure,
    "inner_product": inner_products_figure,
    "attention": attention_figure,
    "attention_gap": attention_gap_figure,
    "superposition": superposition_figure,
}


def probe_scores_figure(report: dict, control: dict | None = None) -> go.Figure:
    """A probe's cross-validated score per thought beside its control task (and a control checkpoint's probe)."""
    key = "auroc" if report["kind"] == "classification" else "r2"
    fig = go.Figure()
    runs = [("model", report, "solid")] + ([("control checkpoint", control, "dash")] if control else [])
    for label, rep, dash in runs:
        ks = sorted(int(k) for k in rep["steps"])
        for what, col, color in ((key, key, "#d62728"), (f"control task {key}", f"control_{key}", "#7f7f7f")):
            fig.add_scatter(x=ks, y=[rep["steps"][str(k)][col] for k in ks], mode="lines+markers",
                            name=f"{label}: {what}", line=dict(color=color, dash=dash))
    fig.update_layout(title=f"{report['target']} probe on {report['hook']} ({key}, selectivity = gap to the control task)",
                      xaxis_title="thought k", yaxis_title=key, template="plotly_white")
    return fig


def halting_figure(result: dict) -> go.Figure:
    """Accuracy against mean thoughts: the halting probe beside every fixed number of thoughts."""
    ks = sorted(int(k) for k in result["fixed"])
    fig = go.Figure()
    fig.add_scatter(x=ks, y=[result["fixed"][str(k)] for k in ks], mode="lines+markers", name="fixed k")
    fig.add_scatter(x=[result["mean_thoughts"]], y=[result["accuracy"]], mode="markers", name="halting probe",
                    marker=dict(size=14, symbol="star", color="#d62728"))
    fig.update_layout(title="Halting probe: accuracy against thoughts used", xaxis_title="mean thoughts",
                      yaxis_title="accuracy", template="plotly_white")
    return fig


def sae_features_figure(features: Sequence, top: int = 40) -> go.Figure:
    """The SAE features that track a node's frontier membership best: best AUROC, firing frequency, name on hover."""
    ranked = sorted((f for f in features if f.best_name is not None and np.isfinite(f.best_auroc)),
                    key=lambda f: -f.best_auroc)[:top]
    fig = go.Figure()
    fig.add_bar(x=[str(f.feature) for f in ranked], y=[f.best_auroc for f in ranked], name="best frontier AUROC",
                hovertext=[f"{f.best_name}; fires on {f.frequency:.1%} of thoughts; groups "
                           + ", ".join(f"{g} {v:.0%}" for g, v in f.groups.items() if v) for f in ranked])
    fig.add_scatter(x=[str(f.feature) for f in ranked], y=[f.frequency for f in ranked], mode="markers",
                    name="firing frequency", yaxis="y2")
    fig.update_layout(title="SAE features by how well they track one node's frontier membership",
                      xaxis_title="feature", yaxis=dict(title="AUROC", range=[0, 1]),
                      yaxis2=dict(title="frequency", overlaying="y", side="right", range=[0, 1]),
                      template="plotly_white")
    return fig


# ---------------------------------------------------------------------------- interventions (report dicts)


def _model_label(rep: dict) -> str:
    return f"{Path(rep['checkpoint']).name or rep['mode']} ({rep['mode']})"


def accuracy_by_thoughts_figure(reports: Sequence[dict]) -> go.Figure:
    """Accuracy after 0..k forced thoughts, per model (a CoT control: at once and after its own chain)."""
    fig = go.Figure()
    for i, rep in enumerate(reports):
        ks = sorted(int(j) for j in rep["accuracy_by_k"])
        fig.add_scatter(x=ks, y=[rep["accuracy_by_k"][str(j)] for j in ks], mode="lines+markers",
                        name=_model_label(rep), line=dict(color=K_COLORS[i % len(K_COLORS)]))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    fig.update_layout(title="How much accuracy depends on the thoughts: answering after k thoughts",
                      xaxis_title="thoughts k (CoT: 0 = no chain, k = its own chain)", yaxis_title="accuracy",
                      yaxis_range=[0, 1], template="plotly_white")
    return fig


def _site_panels(reports: Sequence[dict], key: str) -> tuple[go.Figure, list[tuple[dict, str]]]:
    """A row of panels, one per (model, site) of report[key], sharing the y axis."""
    panels = [(rep, s) for rep in reports for s in rep[key]]
    fig = make_subplots(rows=1, cols=max(len(panels), 1), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"{_model_label(r)}<br>{s}" for r, s in panels])
    return fig, panels


def ablations_figure(reports: Sequence[dict]) -> go.Figure:
    """Accuracy change per ablation (rows) and thoughts ablated (columns), one panel per model and site."""
    fig, panels = _site_panels(reports, "ablations")
    for c, (rep, s) in enumerate(panels, start=1):
        runs = rep["ablations"][s]
        kinds = list(dict.fromkeys(r["name"].split()[0] for r in runs))
        cols = list(dict.fromkeys(r["name"].split()[1] for r in runs))
        z = np.full((len(kinds), len(cols)), np.nan)
        for r in runs:
            kind, col = r["name"].split()
            z[kinds.index(kind), cols.index(col)] = r["accuracy_change"]
        fig.add_heatmap(z=z, x=cols, y=kinds, zmin=-0.5, zmax=0.5, colorscale="RdBu", showscale=c == 1,
                        colorbar=dict(title="accuracy change"), texttemplate="%{z:+.2f}", row=1, col=c)
        fig.update_xaxes(title_text="thoughts ablated", row=1, col=c)
    fig.update_layout(title="Ablation: accuracy change against the unedited run", template="plotly_white")
    return fig


def patching_figure(reports: Sequence[dict]) -> go.Figure:
    """Counterfactual patching: how often B's answer takes A's root or A's concept, by thoughts patched."""
    fig, panels = _site_panels(reports, "patching")
    for c, (rep, s) in enumerate(panels, start=1):
        runs = rep["patching"][s]
        x = [r["steps"] for r in runs]
        for key, color, label in (("names_a_root", "#d62728", "answer names A's root"),
                                  ("follows_a", "#1f77b4", "answer names A's concept"),
                                  ("accuracy", "#2ca02c", "B's accuracy")):
            fig.add_bar(x=x, y=[r[key] for r in runs], name=label, marker_color=color, showlegend=c == 1,
                        legendgroup=key, row=1, col=c)
            fig.add_scatter(x=x, y=[r[f"baseline_{key}"] for r in runs], mode="lines", name=f"{label}, unpatched",
                            line=dict(color=color, dash="dot"), showlegend=c == 1, legendgroup=key, row=1, col=c)
        fig.update_xaxes(title_text="thoughts patched", row=1, col=c)
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(title="Patching A's thoughts into B (same graph, another root): does B follow A?",
                      template="plotly_white", barmode="group")
    return fig


def steering_figure(reports: Sequence[dict]) -> go.Figure:
    """Dose-response of steering toward v: value(v) and answers naming v's option, by direction, per model."""
    fig = make_subplots(rows=2, cols=len(reports), shared_xaxes=True, vertical_spacing=0.08, horizontal_spacing=0.05,
                        subplot_titles=[f"{_model_label(r)}<br>thought {r['steering']['step']}, layer "
                                        f"{r['steering']['layer']}" for r in reports] + [""] * len(reports))
    colors = {"probe": "#d62728", "unembed": "#1f77b4", "random": "#7f7f7f"}
    for c, rep in enumerate(reports, start=1):
        points = rep["steering"]["points"]
        for kind in dict.fromkeys(p["direction"] for p in points):
            ps = [p for p in points if p["direction"] == kind]
            for row, key in ((1, "value"), (2, "to_option")):
                fig.add_scatter(x=[p["alpha"] for p in ps], y=[p[key] for p in ps], mode="lines+markers",
                                name=f"{kind} direction", legendgroup=kind, showlegend=c == 1 and row == 1,
                                line=dict(color=colors.get(kind)), row=row, col=c)
        fig.update_xaxes(title_text="alpha (x mean residual norm)", row=2, col=c)
    fig.update_yaxes(title_text="value(v) after the steered thought", row=1, col=1)
    fig.update_yaxes(title_text="answers naming v's option", row=2, col=1)
    fig.update_layout(title="Steering thought toward v (a parent of the wrong option)", template="plotly_white",
                      height=650)
    return fig


INTERVENTION_FIGURES: dict[str, Callable[[Sequence[dict]], go.Figure]] = {
    "accuracy_by_k": accuracy_by_thoughts_figure,
    "ablations": ablations_figure,
    "patching": patching_figure,
    "steering": steering_figure,
}


# ---------------------------------------------------------------------------- one item's graph


def graph_positions(graph: ProsQAGraph) -> np.ndarray:
    """[n_nodes, 2] (x, y) of a layered drawing: x = layer, root on the left; nodes the root reaches
    above y = 0, the others below, each layer's nodes spread evenly."""
    pos = np.zeros((graph.n_nodes, 2))
    reach = np.isfinite(graph.depth)
    for band, sign in ((reach, 1.0), (~reach, -1.0)):
        for x in np.unique(graph.layer[band]):
            nodes = np.flatnonzero(band & (graph.layer == x))
            pos[nodes, 0] = x
            pos[nodes, 1] = sign * (np.arange(len(nodes)) + 1)
    return pos


def graph_figure(item, k: int, *, values: np.ndarray | None = None, lens: np.ndarray | None = None,
                 coefficients: np.ndarray | None = None, title: str = "", fmt: str = "sentences") -> go.Figure:
    """The item's DAG, root to leaves: frontier_k outlined, the optimal path drawn thick, node colour the value
    after k thoughts, else the superposition coefficient of each node in thought k (probe.analyses.superposition), else the
    lens probability ([n_nodes] each); the hover shows every one given. Nodes are labelled by `node_labels` of the
    model's data format fmt."""
    labels = node_labels(item, fmt)
    graph = ProsQAGraph.from_item(item)
    pos = graph_positions(graph)
    shortest = graph.shortest_paths()[0]
    path = set(zip(shortest, shortest[1:]))
    fig = go.Figure()
    for thick in (False, True):
        xs, ys = [], []
        for u, v in graph.edges:
            if ((u, v) in path) == thick:
                xs += [pos[u, 0], pos[v, 0], None]
                ys += [pos[u, 1], pos[v, 1], None]
        fig.add_scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=thick,
                        name="a shortest path to the answer" if thick else "",
                        line=dict(width=4 if thick else 1, color="#2ca02c" if thick else "#bbbbbb"))
    colour, scale = next(((c, n) for c, n in ((values, "value"), (coefficients, "coefficient"), (lens, "lens p"))
                          if c is not None), (None, ""))
    top = 1.0 if scale != "coefficient" else max(float(np.nanmax(coefficients)), 1e-9)
    frontier = set(graph.frontier(k))
    hover = []
    for v in range(graph.n_nodes):
        d = "unreachable" if not np.isfinite(graph.depth[v]) else f"depth {int(graph.depth[v])}"
        parts = [f"<b>{labels[v]}</b>", d + (", frontier" if v in frontier else "")]
        if values is not None:
            parts.append(f"value {values[v]:.3f}")
        if lens is not None:
            parts.append(f"lens {lens[v]:.3f}")
        if coefficients is not None:
            parts.append(f"coefficient {coefficients[v]:.3f}")
        hover.append("<br>".join(parts))
    fig.add_scatter(
        x=pos[:, 0], y=pos[:, 1], mode="markers+text", text=labels, textposition="top center",
        hovertext=hover, hoverinfo="text", name="nodes", showlegend=False,
        marker=dict(size=[22 if v in frontier else 14 for v in range(graph.n_nodes)],
                    color=None if colour is None else np.asarray(colour, dtype=float), colorscale="Reds",
                    cmin=0.0, cmax=top, showscale=colour is not None, colorbar=dict(title=scale),
                    line=dict(width=[4 if v in frontier else 1 for v in range(graph.n_nodes)],
                              color=["#d62728" if v in frontier else "#444444" for v in range(graph.n_nodes)])))
    for v, label in ((graph.root, "root"), (graph.target, "answer"), (graph.neg_target, "wrong option")):
        fig.add_annotation(x=pos[v, 0], y=pos[v, 1], text=label, showarrow=True, arrowhead=2, ay=30)
    fig.update_layout(title=title or f"frontier after {k} thought(s), outlined red", template="plotly_white",
                      xaxis=dict(title="depth from the root (unreached nodes: below)", dtick=1),
                      yaxis=dict(visible=False), height=520,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def lens_heatmap_figure(readout, tokenizer, k: int) -> go.Figure:
    """Layer x step heatmap of one item's frontier mass under a lens; hover shows each cell's top tokens."""
    mass = readout.frontier_mass[0].numpy().T  # [layers, k + 1]
    steps = [f"thought {s + 1}" for s in range(k)] + ["answer"]
    hover = [[", ".join(f"{tokenizer.decode([int(t)]).strip() or repr(tokenizer.decode([int(t)]))} {float(p):.2f}"
                        for t, p in zip(readout.top_ids[0, s, j], readout.top_probs[0, s, j]))
              for s in range(k + 1)] for j in range(len(readout.layers))]
    fig = go.Figure(go.Heatmap(z=mass, x=steps, y=[str(layer) for layer in readout.layers], zmin=0, zmax=1,
                               colorscale="Reds", customdata=hover, colorbar=dict(title="frontier mass"),
                               hovertemplate="%{x}, layer %{y}<br>frontier mass %{z:.3f}<br>%{customdata}"
                                             "<extra></extra>"))
    fig.update_layout(title=f"{readout.lens} lens: probability on the frontier's names", xaxis_title="step",
                      yaxis_title="layer", template="plotly_white", height=360)
    return fig


# ---------------------------------------------------------------------------- one item's readings


def node_order(graph: ProsQAGraph) -> list[int]:
    """The item's nodes root to leaves: the ones the root reaches by drawing layer, then the others (the rows of
    a node heatmap)."""
    return sorted(range(graph.n_nodes), key=lambda v: (not np.isfinite(graph.depth[v]), int(graph.layer[v]), v))


def node_heatmap_figure(item, z: np.ndarray, *, title: str, colorbar: str, zmax: float | None = 1.0,
                 fmt: str = "sentences") -> go.Figure:
    """Nodes x thoughts heatmap of z [k, n_nodes] for one item; cells of frontier_k marked, nodes root to leaves,
    labelled by `node_labels` of the model's data format fmt."""
    graph = ProsQAGraph.from_item(item)
    order = node_order(graph)
    labels = node_labels(item, fmt)
    k = z.shape[0]
    cols = [f"thought {j}" for j in range(1, k + 1)]
    rows = [labels[v] for v in order]
    frontiers = [set(graph.frontier(j)) for j in range(1, k + 1)]
    mark = [["frontier" if v in f else "" for f in frontiers] for v in order]
    fig = go.Figure(go.Heatmap(
        z=np.asarray(z, dtype=float)[:, order].T, x=cols, y=rows, zmin=0 if zmax is not None else None, zmax=zmax,
        colorscale="Reds", colorbar=dict(title=colorbar), customdata=mark,
        hovertemplate="%{y}, %{x}<br>" + colorbar + " %{z:.3f}<br>%{customdata}<extra></extra>"))
    fx, fy = zip(*[(col, labels[v]) for col, f in zip(cols, frontiers) for v in sorted(f)]) or ((), ())
    fig.add_scatter(x=list(fx), y=list(fy), mode="markers", name="frontier node",
                    marker=dict(symbol="square-open", size=14, color="#1f77b4", line=dict(width=2)))
    fig.update_layout(title=title, template="plotly_white", height=max(360, 18 * len(rows) + 140),
                      yaxis=dict(autorange="reversed", title="node (root to leaves)"), xaxis_title="step")
    return fig


def item_features_figure(acts: np.ndarray, labels: dict[int, str] | None = None, top: int = 12) -> go.Figure:
    """The SAE features most active on one item's thoughts (acts [k, d_sae]): activation per thought."""
    labels = labels or {}
    k = acts.shape[0]
    feats = np.argsort(-acts.max(axis=0))[:top]
    feats = [int(f) for f in feats if acts[:, f].max() > 0]
    rows = [f"{f}" + (f" · {labels[f]}" if f in labels else "") for f in feats]
    fig = go.Figure(go.Heatmap(z=acts[:, feats].T if feats else np.zeros((0, k)),
                               x=[f"thought {j}" for j in range(1, k + 1)], y=rows, colorscale="Blues",
                               colorbar=dict(title="activation"),
                               hovertemplate="feature %{y}<br>%{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"SAE features firing on this item's thoughts (the {len(feats)} most active)",
                      template="plotly_white", height=max(300, 22 * len(rows) + 140),
                      yaxis=dict(autorange="reversed", title="feature · the node whose frontier membership it tracks"),
                      xaxis_title="step")
    return fig


def intervention_effect_figure(item, before: np.ndarray, after: np.ndarray, node: int | None = None) -> go.Figure:
    """Frontier value mass (and one node's value) after each thought, unedited and edited; values [k, n_nodes]."""
    graph = ProsQAGraph.from_item(item)
    ks = list(range(1, before.shape[0] + 1))
    fig = go.Figure()
    for label, v, dash in (("unedited", before, "solid"), ("edited", after, "dash")):
        mass = [float(frontier_mass(v[j - 1][None], [graph], j)[0]) for j in ks]
        fig.add_scatter(x=ks, y=mass, mode="lines+markers", name=f"frontier mass, {label}",
                        line=dict(color="#d62728", dash=dash))
        if node is not None:
            fig.add_scatter(x=ks, y=[float(v[j - 1, node]) for j in ks], mode="lines+markers",
                            name=f"value of {item.name(node)}, {label}", line=dict(color="#1f77b4", dash=dash))
    fig.update_layout(title="What the language step reads after each thought, with and without the edit",
                      xaxis=dict(title="thoughts k", dtick=1), yaxis=dict(title="value", range=[0, 1.02]),
                      template="plotly_white", height=360)
    return fig
