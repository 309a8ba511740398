"""coconut-probe explorer: `streamlit run apps/explorer.py`.

Pick a checkpoint and a ProsQA item; see the graph with the frontier after each thought, what the lens
reads at every layer, superposition and attention, probe and SAE read-outs, edits of one thought and
what they change, and the data-set measures beside a control. Models and data are loaded once
(st.cache_resource); each item's readings are computed once per setting; every input error is shown
as a message, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from probe.artifacts import COCONUT_CONFIG, OFFICIAL_VALID, PROBES_DIR, REPORT, SAE_DIR, TUNED_LENS
from probe.data.prosqa import item_at, item_key
from probe.data.render import gold_answer, node_labels, node_names

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT.parent / "shared" / "data" / OFFICIAL_VALID
OTHER = "another path..."
SHIPPED, A_PATH, NONE = "shipped with the checkpoint", "a path", "none"
N_REFERENCE = 64  # the first validation items: the mean ablation's data set, and steering's norm
TABS = ["graph", "lens", "superposition", "probes & SAE", "interventions", "data set"]
# widgets inside tabs: a closed tab's widgets are not drawn, and Streamlit would forget their values
KEPT = ["k", "colour", "sp_view", "probe_src", "probe_path", "sae_src", "sae_path", "iv_site", "iv_action", "iv_kind",
        "iv_steps", "iv_other", "iv_dir", "iv_node", "iv_step", "iv_alpha", "ds_control", "ds_n", "ds_figure"]


def keep_widget_state() -> None:
    """Carry the tab widgets' values over runs where their tab is closed."""
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def default(key: str, value) -> None:
    """A kept widget's first value (given here, not to the widget, which then reads Session State alone)."""
    if key not in st.session_state:
        st.session_state[key] = value


def drop_if_invalid(key: str, ok) -> None:
    """Forget a kept widget value that no longer fits (another checkpoint or item): the widget's default returns."""
    if key in st.session_state and not ok(st.session_state[key]):
        del st.session_state[key]


LOSSY_BOX = "allow a lossy tokenizer"
LOSSY_OVERRIDE = f"tick '{LOSSY_BOX}' in the sidebar"


def check_writes(items, tok, fmt: str, source: str, first_index: int | None = 0, whose: str = "the tokenizer") -> None:
    """The toolkit's one check that a tokenizer writes the data before a model runs over it (check_tokenizer_writes):
    its refusal raised (every panel shows a ValueError as st.error), or with the sidebar's box ticked its warning."""
    from probe.data.render import check_tokenizer_writes

    warning = check_tokenizer_writes(items, tok, fmt, source=source, override=LOSSY_OVERRIDE, whose=whose,
                                     allow_lossy=bool(st.session_state.get("allow_lossy")), first_index=first_index)
    if warning:
        st.warning(warning)


def item_source() -> tuple[str, int | None]:
    """How a refusal names the sidebar's item, and its index in the validation split (None for another item)."""
    source = st.session_state.get("source", "validation split")
    if source == "validation split":
        return VALID.name, int(st.session_state.get("index", 0))
    if source == "generated":
        return f"the generated item (seed {int(st.session_state.get('seed', 0))})", None
    return "the pasted item", None


# ---------------------------------------------------------------------------- cached loading and computing


@st.cache_resource(show_spinner="loading the checkpoint")
def load_model(path: str, base: str, tokenizer: str):
    """A checkpoint: ours (base and tokenizer empty), or an official state-dict file with its base (a directory or
    a config JSON file) and, if the base holds none, its tokenizer ("rbs" or a tokenizer directory)."""
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(Path(path), base=Path(base) if base else None, tokenizer=tokenizer or None)


@st.cache_resource(show_spinner="loading the data")
def load_split(path: str):
    from probe.data.prosqa import load_items

    return load_items(path)


def parse_item(item_json: str):
    from probe.data.prosqa import item_from_json

    return item_from_json(json.loads(item_json), "the item")


@st.cache_data(show_spinner="reading the thoughts", max_entries=64)
def item_readings(ckpt: str, base: str, tokenizer: str, item_json: str, lens: str) -> dict:
    """Lens readout, node values after every k and the answer, for one item (plain data: cacheable)."""
    import torch

    from probe.data.graph import ProsQAGraph
    from probe.data.layout import name_tokens
    from probe.analyses.decode import decode_item
    from probe.readouts.lens import open_lens
    from probe.analyses.superposition import superposition
    from probe.readouts.values import readout_of, values_by_k

    model, tok = load_model(ckpt, base, tokenizer)
    item = parse_item(item_json)
    reader = open_lens(lens, model, Path(ckpt) / TUNED_LENS)
    dec = decode_item(model, tok, item, lens=reader)
    k = len(dec.thoughts)
    values = values_by_k(model, tok, [item], k, progress=False)[0, :, : item.n_nodes] \
        if model.config.stage_spec.markers and k else None
    ro = dec.readout
    sup = superposition(dec.thought_vectors[None], model.base.get_output_embeddings().weight,
                        [name_tokens(item, tok, model.config.data_format)], [ProsQAGraph.from_item(item)]) if k else None
    return {"k": k, "prediction": dec.prediction, "correct": dec.correct, "generated": dec.generated,
            "data_format": model.config.data_format,
            "values": values, "readout_kind": readout_of(model.config),
            "coefficients": None if sup is None else sup.coef[0, :, : item.n_nodes],
            "r2": None if sup is None else sup.r2[0], "share": None if sup is None else sup.share[0],
            "node_prob": ro.node_prob[0, :, -1, : item.n_nodes].numpy(),
            "readout": {"lens": ro.lens, "layers": ro.layers, "top_ids": ro.top_ids, "top_probs": ro.top_probs,
                        "frontier_mass": ro.frontier_mass.to(torch.float32)}}


@st.cache_resource(show_spinner="measuring this item", max_entries=32)
def item_analysis(ckpt: str, base: str, tokenizer: str, item_json: str):
    """Every frontier measure of DESIGN.md on this one item (an Analysis of one item)."""
    from probe.analyses.analyze import analyze

    model, tok = load_model(ckpt, base, tokenizer)
    return analyze(model, tok, [parse_item(item_json)], checkpoint=ckpt, progress=False)


@st.cache_data(show_spinner=False, max_entries=64)
def item_activations(ckpt: str, base: str, tokenizer: str, item_json: str, hook: str, k: int) -> np.ndarray:
    """[k, d] the hook's activation at the positions emitting this item's thoughts."""
    from probe.capture.trace import capture

    model, tok = load_model(ckpt, base, tokenizer)
    tr = capture(model, tok, [parse_item(item_json)], k=k, names=[hook], progress=False)
    return tr[hook][0, :k].float().numpy()


@st.cache_resource(show_spinner=False)
def load_probe(path: str, ckpt: str, base: str, tokenizer: str, target: str | None = None):
    """A saved probe, checked against the checkpoint's model (SavedProbe.load refuses another model's)."""
    from probe.readouts.probes import SavedProbe

    return SavedProbe.load(path, load_model(ckpt, base, tokenizer)[0], target)


@st.cache_resource(show_spinner=False)
def load_sae(path: str, ckpt: str, base: str, tokenizer: str):
    """A saved SAE, checked against the checkpoint's model, and the names `probe sae train`'s report gives its
    features."""
    from probe.readouts.sae import SparseAutoencoder

    sae = SparseAutoencoder.load(path, load_model(ckpt, base, tokenizer)[0])
    report = Path(path) / REPORT
    labels = {}
    if report.is_file():  # `probe sae train`'s: its best-ranked features, each named by a node
        from probe.formats import read_field, read_json_object

        for i, f in enumerate(read_field(read_json_object(report, what=REPORT), "features", list, str(report),
                                         default=[], items=dict)):
            at = f"{report}: features[{i}]"
            labels[read_field(f, "feature", int, at, minimum=0)] = \
                f"{read_field(f, 'best_name', str, at)} (AUROC {read_field(f, 'best_auroc', float, at):.2f})"
    return sae, labels


@st.cache_resource(show_spinner="capturing the reference items", max_entries=16)
def reference_site(ckpt: str, base: str, tokenizer: str, layer: int | None, k: int):
    """What the edit site holds on the first N_REFERENCE validation items: the mean and the other items."""
    from probe.analyses.interventions import site

    model, tok = load_model(ckpt, base, tokenizer)
    return site(model, tok, load_split(str(VALID))[:N_REFERENCE], k=k, layer=layer)


@st.cache_resource(show_spinner=False, max_entries=64)
def item_site(ckpt: str, base: str, tokenizer: str, item_json: str, layer: int | None, k: int):
    from probe.analyses.interventions import site

    model, tok = load_model(ckpt, base, tokenizer)
    return site(model, tok, [parse_item(item_json)], k=k, layer=layer)


@st.cache_data(show_spinner="running the edit", max_entries=128)
def edited_run(ckpt: str, base: str, tokenizer: str, item_json: str, layer: int | None, k: int, spec: tuple) -> dict:
    """The item answered after k thoughts with one edit, and its node values after each thought."""
    from probe.model.evaluate import evaluate
    from probe.analyses.interventions import ablation_edit, steer_direction, steer_edit
    from probe.readouts.values import values_by_k

    model, tok = load_model(ckpt, base, tokenizer)
    item = parse_item(item_json)
    s = item_site(ckpt, base, tokenizer, item_json, layer, k)
    if spec[0] == "ablate":
        _, kind, steps, other = spec
        if kind == "other":  # that validation item's thoughts at the same site
            donor = item_at(load_split(str(VALID)), other, VALID.name)
            if item_key(donor) == item_key(item):
                raise ValueError(f"validation item {other} is a copy of this item (same graph, question and options); "
                                 "choose another item for the 'other' ablation")
            o = item_site(ckpt, base, tokenizer, json.dumps(donor.to_json()), layer, k)
            ref, ref_valid = o.source, o.valid
        else:  # the reference items' mean, the edited item left out
            r = reference_site(ckpt, base, tokenizer, layer, k)
            keep = [b for b, it in enumerate(load_split(str(VALID))[:N_REFERENCE]) if item_key(it) != item_key(item)]
            ref, ref_valid = r.source[keep], r.valid[keep]
        edit = ablation_edit(s.source, kind, list(steps), layer=layer, valid=s.valid, positions=s.positions,
                             reference=ref, reference_valid=ref_valid)
    else:
        _, node, kind, step, alpha = spec
        probe = None
        if kind == "probe":
            path = shipped(ckpt, f"{PROBES_DIR}/frontier")
            if path is None:
                raise ValueError("this checkpoint ships no frontier probe; steer along unembed or random")
            probe = load_probe(str(path), ckpt, base, tokenizer, "frontier")
        direction = steer_direction(model, tok, item, node, kind=kind, step=step, probe=probe)
        scale = float(reference_site(ckpt, base, tokenizer, layer, k).norm[step - 1])
        edit = steer_edit(direction, alpha * scale, step, n=1, k=k, layer=layer, positions=s.positions)
    res = evaluate(model, tok, [item], k=k, progress=False, edit=edit, prompts=s.prompts).items[0]
    values = None
    if model.config.stage_spec.markers:
        values = values_by_k(model, tok, [item], k, progress=False, edit=edit)[0, :, : item.n_nodes]
    return {"prediction": res.prediction, "correct": res.correct, "values": values}


@st.cache_resource(show_spinner=False, max_entries=8)
def dataset_analysis(ckpt: str, base: str, tokenizer: str, n: int):
    """The data-set report of the frontier measures on the first n validation items."""
    from probe.analyses.analyze import analyze

    model, tok = load_model(ckpt, base, tokenizer)
    return analyze(model, tok, load_split(str(VALID))[:n], checkpoint=ckpt, progress=False)


def shipped(ckpt: str, sub: str) -> Path | None:
    """A probe or SAE directory shipped inside the checkpoint, if there is one."""
    p = Path(ckpt) / sub
    return p if p.is_dir() else None


def checkpoint_choices() -> list[str]:
    ours = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / COCONUT_CONFIG).is_file())
    default = "prosqa-coconut"
    return ([default] if default in ours else []) + [c for c in ours if c != default]


# ---------------------------------------------------------------------------- widgets and panels


def sidebar() -> tuple[str, str, str, str, str]:
    """(checkpoint path, base path, tokenizer, item JSON, lens) from the sidebar widgets."""
    sb = st.sidebar
    choice = sb.selectbox("checkpoint", checkpoint_choices() + [OTHER], key="ckpt")
    base = tokenizer = ""
    if choice == OTHER:
        ckpt = sb.text_input("checkpoint path (ours, or an official state dict)", key="ckpt_path")
        base = sb.text_input("base model directory or config JSON file (official checkpoints)", key="base")
        tokenizer = sb.text_input("tokenizer: 'rbs' or a directory (when the base holds none)", key="tokenizer")
    else:
        ckpt = str(ROOT / "checkpoints" / choice)
    source = sb.radio("item", ["validation split", "generated", "pasted JSON"], key="source")
    if source == "validation split":
        items = load_split(str(VALID))
        index = sb.number_input(f"index (0..{len(items) - 1})", 0, len(items) - 1, 0, key="index")
        item_json = json.dumps(item_at(items, int(index), VALID.name).to_json())
    elif source == "generated":
        from probe.data.generate import generate_items

        seed = sb.number_input("seed", 0, 10**6, 0, key="seed")
        item_json = json.dumps(generate_items(1, seed=int(seed))[0].to_json())
    else:
        item_json = sb.text_area("one item in the official JSON format", key="json", height=200)
    from probe.readouts.lens import LENSES

    lens = sb.radio("lens", list(LENSES), key="lens", horizontal=True)
    sb.checkbox(LOSSY_BOX, key="allow_lossy", help="Run even where the tokenizer cannot write the item's or the "
                "validation split's words (it loses or changes one), which is refused otherwise: for those who know "
                "what they do.")
    return ckpt, base, tokenizer, item_json, lens


def graph_panel(item, r: dict) -> None:
    from probe.analyses.frontier import GROUPS
    from probe.viz.figures import graph_figure

    value = ("the probability that thought k itself, read through the unembedding, names it"
             if r["readout_kind"] == "emitted" else "the probability that the language step after k thoughts names it first")
    st.caption("The question's graph, root on the left. After k thoughts the frontier (nodes exactly k edges from "
               f"the root) is outlined in red; the colour is each node's value ({value}), its coefficient when thought k "
               "is fit as a non-negative combination of the item's name rows (the superposition decomposition), or "
               "the logit-lens probability of its name at the last layer.")
    if r["k"] == 0:
        st.info("this checkpoint reasons in language (no latent thoughts): the graph is drawn without values")
        st.plotly_chart(graph_figure(item, 0, fmt=r["data_format"]), key="graph")
        return
    drop_if_invalid("k", lambda v: 1 <= v <= r["k"])
    k = st.slider("thought k", 1, r["k"], key="k") if r["k"] > 1 else r["k"]
    colour = st.radio("colour nodes by", ["value after k thoughts", "superposition coefficient", "lens probability"],
                      key="colour", horizontal=True)
    if colour == "superposition coefficient":
        fig = graph_figure(item, k, coefficients=r["coefficients"][k - 1], fmt=r["data_format"])
        share = ", ".join(f"{g} {r['share'][k - 1, j]:.0%}" for j, g in enumerate(GROUPS))
        st.markdown(f"thought {k} = a non-negative combination of the item's name rows: R² {r['r2'][k - 1]:.3f}; "
                    f"share of the weight by group at step {k}: {share}")
    elif colour == "lens probability" or r["values"] is None:
        fig = graph_figure(item, k, lens=r["node_prob"][k - 1], fmt=r["data_format"])
    else:
        fig = graph_figure(item, k, values=r["values"][k - 1], fmt=r["data_format"])
    st.plotly_chart(fig, key="graph")


def lens_panel(r: dict, tok) -> None:
    from probe.readouts.lens import LensReadout
    from probe.viz.figures import lens_heatmap_figure

    st.caption("Each layer's residual at the position that emits each thought (and the answer), read by the lens: "
               "the colour is the probability on the frontier's names, the hover lists the top tokens.")
    ro = r["readout"]
    readout = LensReadout(lens=ro["lens"], layers=ro["layers"], top_ids=ro["top_ids"], top_probs=ro["top_probs"],
                          node_prob=None, node_rank=None, frontier=None, frontier_mass=ro["frontier_mass"])
    st.plotly_chart(lens_heatmap_figure(readout, tok, r["k"]), key="lens_heatmap")


def superposition_panel(ckpt: str, base: str, tokenizer: str, item_json: str, item) -> None:
    fmt = load_model(ckpt, base, tokenizer)[0].config.data_format
    from probe.data.graph import ProsQAGraph
    from probe.analyses.frontier import GROUPS, node_groups
    from probe.viz.figures import attention_figure, inner_products_figure, node_heatmap_figure, superposition_figure

    a = item_analysis(ckpt, base, tokenizer, item_json)
    st.caption("Superposition: the inner product of thought k with each node name's input embedding, by node group "
               "(optimal = the frontier nodes on a path to the answer; frontier; reachable; unreachable), and where "
               "the position emitting thought k attends among the edge facts. A thought holding the frontier in "
               "superposition gives the frontier groups the highest bars. The decomposition fits each thought as a "
               "non-negative combination of the item's name rows: the share of the weight on each group, and R².")
    view = st.radio("show", ["inner products", "decomposition", "node values", "attention", "continuations"],
                    key="sp_view", horizontal=True)
    if view == "inner products":
        st.plotly_chart(inner_products_figure(a), key="sp_inner")
    elif view == "decomposition":
        st.plotly_chart(superposition_figure(a), key="sp_decomposition")
    elif view == "node values":
        st.plotly_chart(node_heatmap_figure(item, a.values[0, :, : item.n_nodes],
                                            title="Value of each node after k thoughts", colorbar="value", fmt=fmt),
                        key="sp_values")
    elif view == "attention":
        st.plotly_chart(attention_figure(a), key="sp_attention")
    else:
        rows = [{"k": v.k, "continuation": v.text, "category": v.category, "first node": v.first_node or "",
                 "its group": v.first_group or ""} for v in a.verbalised[0] if v is not None]
        if a.emitted_node is not None:  # a model that emits a node with each thought: that node too
            g = ProsQAGraph.from_item(item)
            for row in rows:
                if row["k"] >= 1:
                    v = int(a.emitted_node[0, row["k"] - 1])
                    row["node thought k emits"] = node_labels(item, fmt)[v] if v >= 0 else "(a token naming no node)"
                    row["emitted node's group"] = GROUPS[int(node_groups(g, row["k"])[v])] if v >= 0 else "unknown"
        st.dataframe(rows, key="sp_continuations", hide_index=True)


def probes_panel(ckpt: str, base: str, tokenizer: str, item_json: str, item, k: int) -> None:
    from probe.viz.figures import item_features_figure, node_heatmap_figure

    st.caption("A linear frontier probe reads, from the residual at each thought, the probability that each name is "
               "in the frontier (blue squares: the true frontier). The SAE shows the features that fire on each "
               "thought, named by the node whose frontier membership each tracks best.")
    if k == 0:
        st.info("this checkpoint has no latent thoughts to read")
        return
    left, right = st.columns(2)
    with left:
        path = pick_directory("frontier probe", "probe", ckpt, f"{PROBES_DIR}/frontier", "probe probes fit")
        try:
            if path:
                probe = load_probe(str(path), ckpt, base, tokenizer)
                X = item_activations(ckpt, base, tokenizer, item_json, probe.hook, k)
                z = np.full((k, item.n_nodes), np.nan)
                fmt = load_model(ckpt, base, tokenizer)[0].config.data_format
                for j in (j for j in probe.steps if j <= k):
                    z[j - 1] = probe.read(X[j - 1 : j], j, node_names(item, fmt))[0]
                st.plotly_chart(node_heatmap_figure(item, z, title=f"{probe.target} probe on {probe.hook}",
                                                    colorbar="probe p", fmt=fmt),
                                key="probe_readout")
                cv = {s: v["auroc"] for s, v in probe.metrics.items() if isinstance(v, dict) and "auroc" in v}
                if cv:
                    st.caption("cross-validated AUROC by thought: " + ", ".join(f"{s}: {v:.2f}" for s, v in cv.items()))
        except ValueError as e:  # each side shows its own error, the other goes on
            st.error(str(e))
    with right:
        path = pick_directory("sparse autoencoder", "sae", ckpt, SAE_DIR, "probe sae train")
        try:
            if path:
                sae, labels = load_sae(str(path), ckpt, base, tokenizer)
                X = item_activations(ckpt, base, tokenizer, item_json, sae.hook_point(), k)
                st.plotly_chart(item_features_figure(sae.encode(X).numpy(), labels), key="sae_features")
        except ValueError as e:
            st.error(str(e))


def pick_directory(label: str, key: str, ckpt: str, sub: str, command: str):
    """The directory of a probe or SAE: the one shipped inside the checkpoint, or a path typed in (None: neither)."""
    src = st.radio(label, [SHIPPED, A_PATH], key=f"{key}_src", horizontal=True)
    path = shipped(ckpt, sub) if src == SHIPPED else st.text_input(f"{label} directory", key=f"{key}_path")
    if not path:
        st.info(f"no {label} ships with this checkpoint: give the directory `{command}` wrote")
    return path or None


def interventions_panel(ckpt: str, base: str, tokenizer: str, item_json: str, item, r: dict, model) -> None:
    from probe.analyses.interventions import ABLATIONS, STEER_KINDS, steer_target
    from probe.model.architecture import find_architecture
    from probe.viz.figures import intervention_effect_figure, node_heatmap_figure

    st.caption(f"Edit the thoughts of this item and watch the answer and the node values change. An ablation "
               f"replaces thoughts by zero, the mean of the first {N_REFERENCE} validation items, a random vector of "
               "the same norm, or another item's; steering adds alpha mean norms of a unit direction toward a node "
               "(its frontier-probe direction, its unembedding row, or random).")
    markers = model.config.stage_spec.markers
    k = r["k"] if markers else max(1, len(item.steps))
    n_layers = find_architecture(model.base).n_layers
    sites = (["the thoughts fed back"] if markers else []) + [f"layer {l} residual" for l in range(n_layers)]
    drop_if_invalid("iv_site", lambda v: v in sites)
    drop_if_invalid("iv_steps", lambda v: all(1 <= j <= k for j in v))
    drop_if_invalid("iv_step", lambda v: 1 <= v <= k)
    drop_if_invalid("iv_node", lambda v: v < item.n_nodes)
    c1, c2, c3 = st.columns(3)
    where = c1.selectbox("edit site", sites, key="iv_site")
    layer = None if where.startswith("the thoughts") else int(where.split()[1])
    action = c2.radio("edit", ["ablate", "steer"], key="iv_action", horizontal=True)
    if action == "ablate":
        default("iv_kind", "mean")
        default("iv_steps", [1])
        kind = c3.selectbox("ablation", ABLATIONS, key="iv_kind")
        steps = st.multiselect("thoughts to ablate", list(range(1, k + 1)), key="iv_steps")
        other = 0
        if kind == "other":
            split = load_split(str(VALID))
            default("iv_other", next(b for b in range(1, len(split)) if item_key(split[b]) != item_key(item)))
            other = int(st.number_input(f"the thoughts of validation item (0..{len(split) - 1})", 0, len(split) - 1,
                                        key="iv_other"))
            donor = item_at(split, other, VALID.name)
            st.caption(f"its question is about **{donor.name(donor.root)}**; its answer: *{donor.answer}*")
        if not steps:
            st.info("choose the thoughts to ablate")
            return
        spec, node = ("ablate", kind, tuple(sorted(steps)), other), None
    else:
        default("iv_dir", "unembed")
        default("iv_node", steer_target(item))
        default("iv_alpha", 2.0)
        kind = c3.selectbox("direction", STEER_KINDS, key="iv_dir")
        node = st.selectbox("toward node", range(item.n_nodes), key="iv_node", format_func=item.name)
        s1, s2 = st.columns(2)
        step = s1.number_input(f"at thought (1..{k})", 1, k, key="iv_step")
        alpha = s2.slider("alpha (mean residual norms)", 0.0, 8.0, step=0.5, key="iv_alpha")
        spec = ("steer", int(node), kind, int(step), float(alpha))
    try:  # the reference items (the mean, the steering norm, the 'other' item) are validation items
        check_writes(load_split(str(VALID))[:N_REFERENCE], load_model(ckpt, base, tokenizer)[1],
                     model.config.data_format, VALID.name)
        out = edited_run(ckpt, base, tokenizer, item_json, layer, k, spec)
    except ValueError as e:
        st.error(str(e))
        return
    before = r["prediction"]  # for a CoT model, its free answer: the same as with its own chain as the prompt
    verdict = "right" if out["correct"] else "wrong"
    st.markdown(f"unedited: **{before}** → edited: **{out['prediction']}** ({verdict})")
    if out["values"] is not None and r["values"] is not None:
        if r["readout_kind"] == "emitted" and (layer is None or layer == n_layers - 1):
            st.caption("This model emits a node with each thought, so an edited thought's own values read the edit "
                       "back; what the model makes of it shows from the next thought on.")
        st.plotly_chart(intervention_effect_figure(item, r["values"], out["values"], node), key="iv_effect")
        st.plotly_chart(node_heatmap_figure(item, out["values"] - r["values"],
                                            title="Change in each node's value after k thoughts",
                                            colorbar="edited - unedited", zmax=None, fmt=r["data_format"]),
                        key="iv_delta")


def dataset_panel(ckpt: str, base: str, tokenizer: str) -> None:
    from probe.release.card import markdown_summary
    from probe.viz.figures import FIGURES

    st.caption("The frontier measures of DESIGN.md over the first n validation items, this checkpoint beside a "
               "control (the pause model by default): a pattern is only evidence of latent search if the control "
               "lacks it.")
    names = checkpoint_choices()
    here = Path(ckpt).name
    options = [NONE] + [c for c in names if c != here]
    drop_if_invalid("ds_control", lambda v: v in options)
    default("ds_control", "prosqa-pause" if "prosqa-pause" in options else NONE)
    default("ds_n", 50)
    c1, c2, c3 = st.columns([2, 1, 1])
    control = c1.selectbox("control", options, key="ds_control")
    n = int(c2.number_input("items", 2, 300, key="ds_n"))
    wanted = (ckpt, base, tokenizer, control, n)
    if c3.button("measure", key="ds_run"):
        st.session_state["ds_done"] = wanted
    if st.session_state.get("ds_done") != wanted:
        st.info(f"press measure: about {0.25 * n * (1 + (control != NONE)):.0f} s on 2 CPU cores, then cached")
        return
    split = load_split(str(VALID))[:n]
    for path, b, t, whose in [(ckpt, base, tokenizer, "the tokenizer")] + \
            ([] if control == NONE else [(str(ROOT / "checkpoints" / control), "", "", "the control's tokenizer")]):
        c_model, c_tok = load_model(path, b, t)
        check_writes(split, c_tok, c_model.config.data_format, VALID.name, whose=whose)
    with st.spinner(f"measuring {n} items"):
        a = dataset_analysis(ckpt, base, tokenizer, n)
        c = None if control == NONE else dataset_analysis(str(ROOT / "checkpoints" / control), "", "", n)
    fig = st.selectbox("figure", list(FIGURES), key="ds_figure")
    st.plotly_chart(FIGURES[fig](a, c), key="ds_plot")
    report = a.report(per_item=False)
    if c is not None:
        report["control"] = c.report(per_item=False)
    st.markdown(markdown_summary(report, f"the validation split (first {n})"))


def main() -> None:
    st.set_page_config(page_title="coconut-probe explorer", layout="wide")
    st.title("coconut-probe explorer")
    keep_widget_state()
    try:
        ckpt, base, tokenizer, item_json, lens = sidebar()
        if not ckpt or not item_json.strip():
            st.info("Give a checkpoint path and an item.")
            return
        try:
            raw = json.loads(item_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"the pasted item is not JSON: {e}") from None
        from probe.data.prosqa import item_from_json

        item = item_from_json(raw, "the pasted item" if st.session_state.get("source") == "pasted JSON" else "the item")
        item_json = json.dumps(item.to_json())
        if st.session_state.get("_item") != item_json:  # a new item: the steering target is its own again
            st.session_state["_item"] = item_json
            st.session_state.pop("iv_node", None)
        model, tok = load_model(ckpt, base, tokenizer)
        check_writes([item], tok, model.config.data_format, *item_source())
        r = item_readings(ckpt, base, tokenizer, item_json, lens)
    except (ValueError, OSError) as e:
        st.error(str(e))
        return
    except Exception as e:  # noqa: BLE001 - whatever else a checkpoint or item does: a message, not a traceback
        st.error(f"{type(e).__name__}: {e}")
        return
    st.markdown(f"**{item.question}**")
    verdict = "right" if r["correct"] else "wrong"
    gold = gold_answer(item, r["data_format"])  # RbS's format answers with the target's index: its name beside it
    answer = f"*{gold}*" + ("" if gold == item.answer.replace(",", "").strip() else f", {item.answer}")
    st.markdown(f"after {r['k']} thoughts the model answers **{r['prediction']}** ({verdict}; "
                f"the answer is {answer})")
    # tracked tabs rerun on a switch, and only the open one is computed
    tabs = dict(zip(TABS, st.tabs(TABS, key="tab", on_change="rerun")))
    panels = {
        "graph": lambda: graph_panel(item, r),
        "lens": lambda: lens_panel(r, tok),
        "superposition": lambda: superposition_panel(ckpt, base, tokenizer, item_json, item),
        "probes & SAE": lambda: probes_panel(ckpt, base, tokenizer, item_json, item, r["k"]),
        "interventions": lambda: interventions_panel(ckpt, base, tokenizer, item_json, item, r, model),
        "data set": lambda: dataset_panel(ckpt, base, tokenizer),
    }
    for name, draw in panels.items():
        if not tabs[name].open:
            continue
        with tabs[name]:
            try:
                draw()
            except (ValueError, OSError) as e:
                st.error(str(e))
            except Exception as e:  # noqa: BLE001
                st.error(f"{type(e).__name__}: {e}")


main()
