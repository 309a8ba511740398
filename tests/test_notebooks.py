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
    "02_bfs_in_superposition": "values: (12, 6, ",
    "03_probes_and_saes": "thought 3: AUROC",
    "04_interventions_and_controls": "unedited: Tom is a lempus. | with item 1's thoughts: Sally is a lempus.",
    "05_official_checkpoint": "unexpected keys: base_causallm.extra.weight",
}

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
    assert EXPECT[name] in printed
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                  for o in c.outputs)
    assert name == "05_official_checkpoint" or figures > 0
