"""The explorer app under streamlit.testing: every panel and widget, and errors shown as messages."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py")


def ok(at) -> None:
    """Nothing went wrong: the explorer shows every exception as a message, so no exception escaping is not
    enough; no error message may be on the page either."""
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def app():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    ok(at)
    return at


def test_the_default_view_shows_the_first_item_and_its_graph(app, official_items):
    it = official_items[0]
    assert it.question in app.markdown[0].value
    assert "the answer is *Tom is a lempus.*" in app.markdown[1].value
    assert app.selectbox(key="ckpt").value == "prosqa-coconut"
    assert app.slider(key="k").value == 1 and app.slider(key="k").max == 6


def test_moving_the_slider_and_switching_colour_and_lens_raise_nothing(app):
    app.slider(key="k").set_value(4).run()
    ok(app)
    assert app.slider(key="k").value == 4
    app.radio(key="colour").set_value("lens probability").run()
    ok(app)
    app.radio(key="lens").set_value("tuned").run()
    ok(app)
    app.number_input(key="index").set_value(7).run()
    ok(app)
    app.selectbox(key="ckpt").set_value("prosqa-pause").run()  # it has no tuned lens: a message says so
    assert not app.exception and "no such tuned lens file" in app.error[0].value
    app.radio(key="lens").set_value("logit").run()
    ok(app)
    assert app.slider(key="k").max == 6


def test_the_planted_model_is_offered_and_lights_up_what_it_reaches(app, official_items):
    """checkpoints/prosqa-planted (planted, not trained): right on item 0, and its graph's value after k thoughts is
    1/|reachable(<= k)| on each node within k edges of the root and 0 elsewhere (its construction, read through
    the app)."""
    from probe.data.graph import ProsQAGraph

    app.selectbox(key="ckpt").set_value("prosqa-planted").run()
    ok(app)
    it = official_items[0]
    assert f"answers **{it.target}** (right; the answer is *{it.target}*, {it.answer})" in app.markdown[1].value
    app.slider(key="k").set_value(2).run()
    ok(app)
    reach = ProsQAGraph.from_item(it).reachable(2)
    hover = nodes_trace(app)["hovertext"]  # "<b>16 lempus</b><br>depth 3<br>value 0.333"
    values = [float(h.split("value ")[1].split("<")[0]) for h in hover]
    assert all(abs(v - (1 / len(reach) if n in reach else 0)) < 0.02 for n, v in enumerate(values)), values


def nodes_trace(at) -> dict:
    fig = json.loads(charts(at)[0].proto.spec)
    return next(t for t in fig["data"] if t.get("name") == "nodes")


def test_the_graph_shows_the_frontier_and_each_readout(app, official_items):
    """Outlined red: exactly frontier_k. Colour: the node values after k thoughts, or (either lens) the
    probability of each name's first token where the model emits thought k, computed here by hand: at the last
    layer the tuned lens's translator is the identity, so both lenses read the model's own logits there."""
    from probe.readouts.values import node_values
    from probe.data.graph import ProsQAGraph
    from probe.data.layout import name_tokens
    from probe.data.render import render_prompt, tokenize_item
    from probe.model.checkpoint import load_checkpoint

    model, tok = load_checkpoint(Path(APP).parents[1] / "checkpoints" / "prosqa-coconut")
    it, g = official_items[0], ProsQAGraph.from_item(official_items[0])
    for k in (1, 3):
        app.slider(key="k").set_value(k).run()
        ok(app)
        nodes = nodes_trace(app)
        red = [v for v, c in enumerate(nodes["marker"]["line"]["color"]) if c == "#d62728"]
        assert red == g.frontier(k)
        want = node_values(model, tok, [it], k, progress=False)[0, : it.n_nodes].numpy()
        np.testing.assert_allclose(array(nodes["marker"]["color"]), want, rtol=1e-4, atol=1e-6)
        prompt = render_prompt(tokenize_item(it, tok, model.config.data_format), k, model.config.stage_spec,
                               model.config.special)
        emit = len(tokenize_item(it, tok, model.config.data_format).question) + k - 1  # the position emitting thought k
        with torch.no_grad():
            probs = model(torch.tensor([prompt])).logits[0, emit].softmax(-1)
        want = probs[torch.tensor(name_tokens(it, tok, model.config.data_format))].numpy()
        for lens in ("logit", "tuned"):
            app.radio(key="lens").set_value(lens).run()
            app.radio(key="colour").set_value("lens probability").run()
            ok(app)
            np.testing.assert_allclose(array(nodes_trace(app)["marker"]["color"]), want, rtol=1e-4, atol=1e-6)
        app.radio(key="colour").set_value("value after k thoughts").run()
    # The superposition decomposition of thought k, by scipy's nnls on the model's own thought here
    from scipy.optimize import nnls

    app.radio(key="colour").set_value("superposition coefficient").run()
    ok(app)
    prompt = render_prompt(tokenize_item(it, tok, model.config.data_format), 3, model.config.stage_spec,
                           model.config.special)
    thought = model.generate([prompt], max_new_tokens=1).thoughts[0, 2].double().numpy()
    rows = model.base.get_output_embeddings().weight.detach().double().numpy()[name_tokens(it, tok, model.config.data_format)]
    coef, res = nnls(rows.T, thought)
    np.testing.assert_allclose(array(nodes_trace(app)["marker"]["color"]), coef, rtol=1e-3, atol=1e-5)
    text = next(m.value for m in app.markdown if m.value.startswith("thought 3 = a non-negative combination"))
    assert f"R² {1 - res ** 2 / (thought @ thought):.3f}" in text


def test_generated_and_pasted_items(app, official_items):
    app.radio(key="source").set_value("generated").run()
    ok(app)
    assert app.number_input(key="seed").value == 0
    app.radio(key="source").set_value("pasted JSON").run()
    assert app.info  # nothing pasted yet
    app.text_area(key="json").input(json.dumps(official_items[3].to_json())).run()
    ok(app)
    assert official_items[3].question in app.markdown[0].value


def test_errors_are_messages_not_tracebacks(app, official_items):
    app.radio(key="source").set_value("pasted JSON").run()
    app.text_area(key="json").input("{not json").run()
    assert not app.exception and "the pasted item is not JSON" in app.error[0].value
    bad = official_items[0].to_json() | {"root": 99}
    app.text_area(key="json").input(json.dumps(bad)).run()
    assert not app.exception and app.error[0].value == "the pasted item: root index 99 is out of range for 18 symbols"
    app.text_area(key="json").input(json.dumps(official_items[0].to_json())).run()
    app.selectbox(key="ckpt").set_value("another path...").run()
    app.text_input(key="ckpt_path").input("/nowhere/at/all").run()
    assert not app.exception and "/nowhere/at/all" in app.error[0].value


def open_tab(at, name: str):
    at.session_state["tab"] = name
    at.run()
    ok(at)
    return at


def charts(at) -> list:
    return list(at.get("plotly_chart"))


def array(x) -> np.ndarray:
    """A plotly JSON array: a list, or {dtype, bdata (base64), shape} as plotly writes numpy arrays."""
    if isinstance(x, dict):
        shape = [int(n) for n in str(x.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(x["bdata"]), dtype=x["dtype"]).reshape(shape)
    return np.asarray(x)


def test_only_the_open_tab_is_computed(app):
    assert [t.label for t in app.tabs] == ["graph", "lens", "superposition", "probes & SAE", "interventions", "data set"]
    assert len(charts(app)) == 1  # the graph; the other tabs wait until they are opened
    open_tab(app, "lens")
    assert len(charts(app)) == 1 and "lens" in json.loads(charts(app)[0].proto.spec)["layout"]["title"]["text"]


def test_superposition_panel_every_view(app, official_items):
    open_tab(app, "superposition")
    views = {"inner products": "Superposition", "decomposition": "Superposition decomposition",
             "node values": "Value of each node", "attention": "Attention"}
    for view, title in views.items():
        app.radio(key="sp_view").set_value(view).run()
        ok(app)
        assert title in json.loads(charts(app)[0].proto.spec)["layout"]["title"]["text"]
    app.radio(key="sp_view").set_value("continuations").run()
    table = app.dataframe[0].value
    assert list(table["k"]) == list(range(7))  # k = 0..6
    # each row is what the model writes after k forced thoughts, as evaluate generates it
    from probe.model.evaluate import evaluate
    from probe.model.checkpoint import load_checkpoint

    model, tok = load_checkpoint(Path(APP).parents[1] / "checkpoints" / "prosqa-coconut")
    texts = [evaluate(model, tok, official_items[:1], k=k, progress=False).items[0].text for k in range(7)]
    assert list(table["continuation"]) == texts


def test_probes_and_sae_panel_reads_the_shipped_probe_and_sae(app, official_items, tmp_path):
    from probe.capture.trace import capture
    from probe.model.checkpoint import load_checkpoint
    from probe.readouts.probes import SavedProbe

    open_tab(app, "probes & SAE")
    probe_fig, sae_fig = (json.loads(c.proto.spec) for c in charts(app))
    assert probe_fig["layout"]["title"]["text"] == "frontier probe on blocks.3.hook_resid_post"
    # the heatmap's thought-2 column against the probe applied by hand to a capture of the same item
    ckpt = Path(APP).parents[1] / "checkpoints" / "prosqa-coconut"
    model, tok = load_checkpoint(ckpt)
    it = official_items[0]
    probe = SavedProbe.load(ckpt / "probes" / "frontier")
    X = capture(model, tok, [it], k=6, names=[probe.hook], progress=False)[probe.hook][0, 1:2].float().numpy()
    want = dict(zip(it.idx_to_symbol, probe.probe(2).predict_proba(X)[0][[probe.names.index(n) for n in it.idx_to_symbol]]))
    heat = probe_fig["data"][0]
    got = {name: row[1] for name, row in zip(heat["y"], array(heat["z"]))}
    assert got.keys() == want.keys() and all(abs(got[n] - want[n]) < 1e-4 for n in want)
    assert "SAE features firing" in sae_fig["layout"]["title"]["text"] and len(sae_fig["data"][0]["y"]) > 0
    cv = json.loads((ckpt / "probes" / "frontier" / "report.json").read_text())["steps"]
    assert any(c.value == "cross-validated AUROC by thought: " + ", ".join(f"{k}: {v['auroc']:.2f}" for k, v in cv.items())
               for c in app.caption)
    app.radio(key="probe_src").set_value("a path").run()
    app.text_input(key="probe_path").input(str(ckpt.parent / "prosqa-coconut-mixed" / "probes" / "frontier")).run()
    assert not app.exception and "this probe was fit on another model" in app.error[0].value
    app.radio(key="sae_src").set_value("a path").run()
    app.text_input(key="sae_path").input("/nowhere").run()
    assert not app.exception and "/nowhere: not an SAE directory" in app.error[1].value
    # the shipped SAE beside a report.json whose first feature lost its name: named, not a KeyError
    (tmp_path / "sae").mkdir()
    for f in (ckpt / "sae").iterdir():
        (tmp_path / "sae" / f.name).write_bytes(f.read_bytes())
    report = json.loads((tmp_path / "sae" / "report.json").read_text())
    del report["features"][0]["best_name"]
    (tmp_path / "sae" / "report.json").write_text(json.dumps(report))
    app.text_input(key="sae_path").input(str(tmp_path / "sae")).run()
    assert not app.exception and \
        app.error[1].value == f"{tmp_path / 'sae' / 'report.json'}: features[0]: no field 'best_name'"
    app.selectbox(key="ckpt").set_value("prosqa-pause").run()
    app.radio(key="probe_src").set_value(app.radio(key="probe_src").options[0]).run()
    assert not app.exception and any("no frontier probe ships with this checkpoint" in i.value for i in app.info)


def test_interventions_panel_ablates_and_steers(app, official_items):
    from probe.capture.trace import capture
    from probe.model.evaluate import evaluate
    from probe.analyses.interventions import patch_edit, steer_target
    from probe.model.checkpoint import load_checkpoint
    from probe.model.coconut import ThoughtEdit

    open_tab(app, "interventions")
    it = official_items[0]
    model, tok = load_checkpoint(Path(APP).parents[1] / "checkpoints" / "prosqa-coconut")
    unedited = evaluate(model, tok, [it], k=6, progress=False).items[0].prediction  # whatever the model answers
    out = [m.value for m in app.markdown if m.value.startswith("unedited")]
    assert out and out[0].startswith(f"unedited: **{unedited}** → edited: **")
    # the default edit, thought 1 replaced by the mean of validation items 1..63 (item 0 left out), by hand
    mean = capture(model, tok, official_items[1:64], k=6, names=[], progress=False).thoughts.mean(0)
    mask = torch.zeros(1, 6, dtype=torch.bool)
    mask[0, 0] = True
    want = evaluate(model, tok, [it], k=6, edit=ThoughtEdit(mask, mean[None]), progress=False).items[0].prediction
    assert out[0].split(" → edited: **")[1].split("**")[0] == want
    # item 2's thoughts in place of all six: the answer a patch of the captured thoughts gives, run by hand
    app.selectbox(key="iv_kind").set_value("other").run()
    app.multiselect(key="iv_steps").set_value([1, 2, 3, 4, 5, 6]).run()
    app.number_input(key="iv_other").set_value(2).run()
    out = [m.value for m in app.markdown if m.value.startswith("unedited")][0]
    edited = out.split(" → edited: **")[1].split("**")[0]
    source = capture(model, tok, [official_items[2]], k=6, names=[], progress=False).thoughts
    want = evaluate(model, tok, [it], k=6, edit=patch_edit(source), progress=False).items[0].prediction
    ok(app)
    assert edited == want
    effect, delta = (json.loads(c.proto.spec) for c in charts(app))
    assert effect["data"][0]["name"] == "frontier mass, unedited" and "Change in each node" in delta["layout"]["title"]["text"]
    app.radio(key="iv_action").set_value("steer").run()
    assert app.selectbox(key="iv_node").value == steer_target(it)  # default: a parent of the wrong option
    app.slider(key="iv_alpha").set_value(0.0).run()
    out = [m.value for m in app.markdown if m.value.startswith("unedited")][0]
    assert out.startswith(f"unedited: **{unedited}** → edited: **{unedited}**")  # alpha 0: no edit
    app.selectbox(key="iv_node").set_value(it.index("terpus")).run()
    names = [tr["name"] for tr in json.loads(charts(app)[0].proto.spec)["data"]]
    assert not app.error and "value of terpus, edited" in names
    for kind in ("probe", "random"):
        app.selectbox(key="iv_dir").set_value(kind).run()
        assert not app.exception and not app.error
    app.selectbox(key="iv_site").set_value("layer 1 residual").run()
    app.slider(key="iv_alpha").set_value(8.0).run()
    app.number_input(key="iv_step").set_value(2).run()
    assert not app.exception and not app.error
    app.selectbox(key="ckpt").set_value("prosqa-cot").run()  # no thoughts fed back: the layer sites only
    ok(app)
    assert app.selectbox(key="iv_site").options[0] == "layer 0 residual"


def test_data_set_panel_measures_beside_a_control(app):
    open_tab(app, "data set")
    assert app.selectbox(key="ds_control").value == "prosqa-pause" and app.info
    app.number_input(key="ds_n").set_value(3).run()
    app.button(key="ds_run").click().run()
    ok(app)
    fig = json.loads(charts(app)[0].proto.spec)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert any("prosqa-coconut " in t for t in titles) and any("prosqa-pause" in t for t in titles)
    table = next(m.value for m in app.markdown if "frontier value mass" in m.value)
    assert "on 3 items" in table and "control `prosqa-pause`" in table
    app.selectbox(key="ds_figure").set_value("attention").run()
    ok(app)
    assert "Attention" in json.loads(charts(app)[0].proto.spec)["layout"]["title"]["text"]
    app.selectbox(key="ds_control").set_value("none").run()  # a new setting waits for the button again
    assert not charts(app) and app.info
    app.button(key="ds_run").click().run()
    titles = [a["text"] for a in json.loads(charts(app)[0].proto.spec)["layout"]["annotations"]]
    ok(app)
    assert not any("prosqa-pause" in t for t in titles)


def test_widget_values_survive_switching_tabs_and_reset_when_they_no_longer_fit(app):
    app.slider(key="k").set_value(5).run()
    open_tab(app, "interventions")
    app.radio(key="iv_action").set_value("steer").run()
    app.number_input(key="iv_step").set_value(3).run()
    open_tab(app, "graph")
    assert app.slider(key="k").value == 5
    open_tab(app, "interventions")
    assert app.radio(key="iv_action").value == "steer" and app.number_input(key="iv_step").value == 3
    app.selectbox(key="ckpt").set_value("prosqa-cot").run()  # no thoughts fed back: the site falls back to layer 0
    ok(app)
    assert app.selectbox(key="iv_site").value == "layer 0 residual"


def test_an_official_checkpoint_with_its_base_directory(app, tmp_path):
    from tests.test_checkpoint import official_fixture

    base_dir, ckpt, _ = official_fixture(tmp_path, "gpt2")
    app.selectbox(key="ckpt").set_value("another path...").run()
    app.text_input(key="ckpt_path").input(str(ckpt)).run()
    assert not app.exception and "an official checkpoint file needs its base model directory" in app.error[0].value  # no base yet
    app.text_input(key="base").input(str(base_dir)).run()
    assert not app.exception and not app.error
    assert app.markdown[1].value.startswith("after 6 thoughts the model answers")  # a random model: any answer
    open_tab(app, "interventions")
    assert not app.error and any(m.value.startswith("unedited") for m in app.markdown)
    open_tab(app, "probes & SAE")  # no probe or SAE ships with it
    assert sum("ships with this checkpoint" in i.value for i in app.info) == 2, ([e.value for e in app.error], [i.value for i in app.info])


def test_an_rbs_checkpoint_with_its_config_file_and_the_rbs_tokenizer(app, tmp_path, official_items):
    """RbS's checkpoint file: its config file as the base says that it holds no tokenizer, until 'rbs' is given."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.test_rbs_checkpoint import TheirCoconut

    config = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 40, "n_positions": 256}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(TheirCoconut(GPT2LMHeadModel(GPT2Config(**config))).state_dict(), tmp_path / "checkpoint_300")
    index = next(i for i, it in enumerate(official_items) if it.n_nodes <= 31)
    app.number_input(key="index").set_value(index).run()
    app.selectbox(key="ckpt").set_value("another path...").run()
    app.text_input(key="ckpt_path").input(str(tmp_path / "checkpoint_300")).run()
    app.text_input(key="base").input(str(tmp_path / "config.json")).run()
    assert not app.exception and app.error[0].value == (f"--base {tmp_path / 'config.json'} holds no tokenizer; pass "
                                                        "--tokenizer rbs or a tokenizer directory")
    app.text_input(key="tokenizer").input("rbs").run()
    ok(app)
    assert app.markdown[1].value.startswith("after 4 thoughts the model answers")  # RbS's max_latent_stage
    item = official_items[index]  # RbS's answer is the target's index; its sentence beside it
    assert app.markdown[1].value.endswith(f"the answer is *{item.target}*, {item.answer})")
    graph = json.loads(app.get("plotly_chart")[0].proto.spec)
    nodes = next(t for t in graph["data"] if t.get("name") == "nodes")
    assert nodes["text"][item.target] == f"{item.target} {item.name(item.target)}"  # the token, then the name
