"""Every notebook in notebooks/ runs top to bottom on the CPU (nbclient), and says what it should."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# a line each notebook must print: known answers of the shipped models, or of the official-format loader
EXPECT = {
    "01_quickstart": "model: Tom is a lempus. | right answer: Tom is a lempus. | correct: True",
    "02_bfs_in_superposition": "values: (30, 6, ",
    "03_probes_and_saes": "thought 3: AUROC",
    "04_interventions_and_controls": "unedited: Tom is a lempus. | with item 1's thoughts: Sally is a lempus.",
    "05_official_checkpoint": "unexpected keys: base_causallm.extra.weight",
}


def test_every_notebook_is_listed_and_stored_without_outputs():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECT)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_notebook_runs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                      if o.get("output_type") == "stream")
    assert EXPECT[name] in printed
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert name == "05_official_checkpoint" or figures > 0
