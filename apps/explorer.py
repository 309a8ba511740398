"""coconut-probe explorer: `streamlit run apps/explorer.py`.

Pick a checkpoint and a ProsQA item; see the graph with the frontier after each thought, what the
lens reads at every layer, and the answer. Models and data are loaded once (st.cache_resource),
each item's readings computed once per checkpoint and lens (st.cache_data); every input error is
shown as a message, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT.parent / "shared" / "data" / "prosqa_valid.json"
OTHER = "another path..."


@st.cache_resource(show_spinner="loading the checkpoint")
def load_model(path: str, base: str):
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(Path(path), base=Path(base) if base else None)


@st.cache_resource(show_spinner="loading the data")
def load_split(path: str):
    from probe.data.prosqa import load_items

    return load_items(path)


@st.cache_data(show_spinner="reading the thoughts", max_entries=64)
def item_readings(ckpt: str, base: str, item_json: str, lens: str) -> dict:
    """Lens readout, node values after every k and the answer, for one item (plain data: cacheable)."""
    import torch

    from probe.capture import node_values
    from probe.data.prosqa import item_from_json
    from probe.decode import decode_item
    from probe.lens import TunedLens

    model, tok = load_model(ckpt, base)
    item = item_from_json(json.loads(item_json), "the item")
    tuned = TunedLens.load(Path(ckpt) / "tuned_lens.safetensors", model) if lens == "tuned" else None
    dec = decode_item(model, tok, item, lens=tuned)
    k = len(dec.thoughts)
    values = np.stack([node_values(model, tok, [item], j, progress=False)[0, : item.n_nodes].numpy()
                       for j in range(1, k + 1)]) if model.config.stage_spec.markers and k else None
    ro = dec.readout
    return {"k": k, "prediction": dec.prediction, "correct": dec.correct, "generated": dec.generated,
            "values": values, "node_prob": ro.node_prob[0, :, -1, : item.n_nodes].numpy(),
            "readout": {"lens": ro.lens, "layers": ro.layers, "top_ids": ro.top_ids, "top_probs": ro.top_probs,
                        "frontier_mass": ro.frontier_mass.to(torch.float32)}}


def checkpoint_choices() -> list[str]:
    ours = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if (p / "coconut.json").is_file())
    default = "prosqa-coconut"
    return ([default] if default in ours else []) + [c for c in ours if c != default] + [OTHER]


def sidebar() -> tuple[str, str, str, str]:
    """(checkpoint path, base path, item JSON, lens) from the sidebar widgets."""
    sb = st.sidebar
    choice = sb.selectbox("checkpoint", checkpoint_choices(), key="ckpt")
    base = ""
    if choice == OTHER:
        ckpt = sb.text_input("checkpoint path (ours, or an official state dict)", key="ckpt_path")
        base = sb.text_input("base model directory (official checkpoints)", key="base")
    else:
        ckpt = str(ROOT / "checkpoints" / choice)
    source = sb.radio("item", ["validation split", "generated", "pasted JSON"], key="source")
    if source == "validation split":
        items = load_split(str(VALID))
        index = sb.number_input(f"index (0..{len(items) - 1})", 0, len(items) - 1, 0, key="index")
        item_json = json.dumps(items[int(index)].to_json())
    elif source == "generated":
        from probe.data.generate import generate_items

        seed = sb.number_input("seed", 0, 10**6, 0, key="seed")
        item_json = json.dumps(generate_items(1, seed=int(seed))[0].to_json())
    else:
        item_json = sb.text_area("one item in the official JSON format", key="json", height=200)
    lens = sb.radio("lens", ["logit", "tuned"], key="lens", horizontal=True)
    return ckpt, base, item_json, lens


def graph_panel(item, r: dict) -> None:
    from probe.viz import graph_figure

    k = st.slider("thought k", 1, r["k"], 1, key="k") if r["k"] > 1 else r["k"]
    colour = st.radio("colour nodes by", ["value after k thoughts", "lens probability"], key="colour",
                      horizontal=True, disabled=r["values"] is None)
    if colour == "lens probability" or r["values"] is None:
        fig = graph_figure(item, k, lens=r["node_prob"][k - 1])
    else:
        fig = graph_figure(item, k, values=r["values"][k - 1])
    st.plotly_chart(fig, key="graph")


def lens_panel(r: dict, tok) -> None:
    from probe.lens import LensReadout
    from probe.viz import lens_heatmap

    ro = r["readout"]
    readout = LensReadout(ro["lens"], ro["layers"], ro["top_ids"], ro["top_probs"], None, None, None,
                          ro["frontier_mass"])
    st.plotly_chart(lens_heatmap(readout, tok, r["k"]), key="lens_heatmap")


def main() -> None:
    st.set_page_config(page_title="coconut-probe explorer", layout="wide")
    st.title("coconut-probe explorer")
    try:
        from probe.data.prosqa import item_from_json

        ckpt, base, item_json, lens = sidebar()
        if not ckpt or not item_json.strip():
            st.info("Give a checkpoint path and an item.")
            return
        try:
            raw = json.loads(item_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"the pasted item is not JSON: {e}") from None
        item = item_from_json(raw, "the pasted item" if st.session_state.get("source") == "pasted JSON" else "the item")
        model, tok = load_model(ckpt, base)
        r = item_readings(ckpt, base, json.dumps(item.to_json()), lens)
    except (ValueError, OSError) as e:
        st.error(str(e))
        return
    st.markdown(f"**{item.question}**")
    verdict = "right" if r["correct"] else "wrong"
    st.markdown(f"after {r['k']} thoughts the model answers **{r['prediction']}** ({verdict}; "
                f"the answer is *{item.answer}*)")
    graph_tab, lens_tab = st.tabs(["graph", "lens"])
    with graph_tab:
        graph_panel(item, r)
    with lens_tab:
        lens_panel(r, tok)


main()
