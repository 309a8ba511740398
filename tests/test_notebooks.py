"""Every notebook in notebooks/ runs top to bottom on the CPU (nbclient), and says what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("kernels")  # pytest -n 2: one kernel or browser at a time

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ROOT = NOTEBOOKS.parent
DATA = ROOT.parent / "shared" / "data" / "prosqa_valid.json"


def _items(n: int):
    from probe.data.prosqa import load_items

    return load_items(DATA, limit=n)


def _load(name: str):
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(ROOT / "checkpoints" / name)


def check_01(printed: str) -> None:
    """The decoded answer of item 0, as the library decodes it; first the planted model's, right, with thought k's
    top tokens all within k edges of the root (its construction)."""
    from probe.data.graph import ProsQAGraph
    from probe.analyses.decode import decode_item

    it = _items(1)[0]
    assert f"planted model: {it.target} | right answer: {it.target} | correct: True" in printed
    g = ProsQAGraph.from_item(it)
    for k in (1, 2, 3):
        line = next(x for x in printed.splitlines() if x.startswith(f"thought {k}: "))
        assert f"{len(g.reachable(k))} nodes within {k} edges" in line
        assert all(int(tok) in g.reachable(k) for tok in line.split("top tokens ")[1].split()[::2])
    model, tok = _load("prosqa-coconut")
    dec = decode_item(model, tok, it)
    assert f"model: {dec.prediction} | right answer: {it.answer} | correct: {dec.correct}" in printed


def check_02(printed: str) -> None:
    """The values' shape and item 0's highest values after k = 1, 2, as analyze gives them on the same items."""
    import numpy as np

    from probe.analyses.analyze import analyze
    from probe.data.graph import ProsQAGraph

    model, tok = _load("prosqa-coconut-mixed")
    items = _items(12)
    a = analyze(model, tok, items, checkpoint="prosqa-coconut-mixed", progress=False)
    assert f"values: {a.values.shape}" in printed
    it, g = items[0], ProsQAGraph.from_item(items[0])
    for k in (1, 2):
        vals = a.values[0, k - 1, : it.n_nodes]
        line = f"k={k}: frontier {[it.name(v) for v in g.frontier(k)]}; highest values " + ", ".join(
            f"{it.name(v)} {vals[v]:.3f}" for v in np.argsort(-vals)[:4])
        assert line in printed, line


def check_03(printed: str) -> None:
    """Every thought's cross-validated AUROC is a number, as is its control task's; the probe beats its
    control on the thought read last."""
    import math
    import re

    rows = re.findall(r"thought (\d): AUROC ([-\d.nan]+) \+- [-\d.nan]+, control task ([-\d.nan]+)", printed)
    assert [int(k) for k, _, _ in rows] == [1, 2, 3], rows
    assert all(math.isfinite(float(a)) and math.isfinite(float(c)) for _, a, c in rows), rows
    assert float(rows[-1][1]) > float(rows[-1][2]), rows


def check_04(printed: str) -> None:
    """Item 0 answered with item 1's thoughts, as the library's patch gives it."""
    from probe.capture.trace import capture
    from probe.analyses.interventions import intervene, patch_edit

    model, tok = _load("prosqa-coconut")
    items = _items(2)
    thoughts = capture(model, tok, items, k=6, names=[], progress=False).thoughts
    res = intervene(model, tok, items[:1], patch_edit(thoughts[1:2]), k=6)
    assert f"unedited: {res.baseline_predictions[0]} | with item 1's thoughts: {res.predictions[0]}" in printed
    assert f"item 1 asks about {items[1].name(items[1].root)}" in printed


def check_05(printed: str) -> None:
    """Both errors the notebook demonstrates, each as its one line."""
    lines = printed.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("CheckpointError:")]
    assert len(at) == 2, lines
    # the broken state dict in two lines, its likely cause and the extra key, nothing missing (GPT-2 ties lm_head)
    assert "the state dict does not fit the GPT-2 of" in lines[at[0]]
    assert lines[at[0]].endswith("; likely cause: the file holds more than the model (or the wrong --base)")
    assert lines[at[0] + 1] == "  unexpected 1 key: base_causallm.extra.weight"
    assert at[1] == at[0] + 2
    assert lines[at[1]].endswith("nowhere: the base directory must hold the base model's config.json and tokenizer")


# each notebook's printed numbers, checked against the library run here on the same items
EXPECT = {"01_quickstart": check_01, "02_bfs_in_superposition": check_02, "03_probes_and_saes": check_03,
          "04_interventions_and_controls": check_04, "05_official_checkpoint": check_05}

# Smaller runs than the notebooks' own, injected after each one's "parameters" cell (papermill's convention)
PARAMETERS = {
    "02_bfs_in_superposition": "N = 12",
    "03_probes_and_saes": "N_PROBE, N_SAE = 60, 40",
    "04_interventions_and_controls": "N = 6",
}


def with_parameters(nb, source: str):
    """The notebook with a cell of `source` after its parameters cell, as papermill injects one."""
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return nb


def test_every_notebook_is_listed_and_stored_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECT)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', expected 1"
        names = PARAMETERS.get(path.stem, "").split("=")[0].replace(",", " ").split()
        assert all(f"{n} = " in tagged[0].source for n in names), f"{path.name}: the parameters cell lacks {names}"


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_notebook_runs(name):
    nb = with_parameters(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4), PARAMETERS.get(name, ""))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.get("output_type") == "stream")
    EXPECT[name](printed)
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert name == "05_official_checkpoint" or figures > 0
