"""The explorer app under streamlit.testing: every panel and widget, and errors shown as messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
APP = str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py")


@pytest.fixture
def app():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_default_view_shows_the_first_item_and_its_graph(app, official_items):
    it = official_items[0]
    assert it.question in app.markdown[0].value
    assert "the answer is *Tom is a lempus.*" in app.markdown[1].value
    assert app.selectbox(key="ckpt").value == "prosqa-coconut"
    assert app.slider(key="k").value == 1 and app.slider(key="k").max == 6
    assert [t.label for t in app.tabs] == ["graph", "lens"]


def test_moving_the_slider_and_switching_colour_and_lens_raise_nothing(app):
    app.slider(key="k").set_value(4).run()
    assert not app.exception and app.slider(key="k").value == 4
    app.radio(key="colour").set_value("lens probability").run()
    assert not app.exception
    app.radio(key="lens").set_value("tuned").run()
    assert not app.exception
    app.number_input(key="index").set_value(7).run()
    assert not app.exception
    app.selectbox(key="ckpt").set_value("prosqa-pause").run()  # it has no tuned lens: a message says so
    assert not app.exception and "no such tuned lens file" in app.error[0].value
    app.radio(key="lens").set_value("logit").run()
    assert not app.exception and app.slider(key="k").max == 6


def test_generated_and_pasted_items(app, official_items):
    app.radio(key="source").set_value("generated").run()
    assert not app.exception and app.number_input(key="seed").value == 0
    app.radio(key="source").set_value("pasted JSON").run()
    assert app.info  # nothing pasted yet
    app.text_area(key="json").input(json.dumps(official_items[3].to_json())).run()
    assert not app.exception and official_items[3].question in app.markdown[0].value


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
