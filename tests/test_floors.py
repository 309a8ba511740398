"""The floors of probe/ (DESIGN.md): each module imports only from its own floor or the floors below it.

data -> model -> capture | train -> readouts -> analyses -> viz -> release -> cli. The files floor (probe/*.py:
file names, atomic writes, the file rules) is under all of them; capture and train stand side by side and import
neither each other. Every import counts, at a module's top or inside a function.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "probe"

# floor of each folder of probe/ (the files at probe/'s root are floor 0)
FLOORS = {"": 0, "data": 1, "model": 2, "capture": 3, "train": 3, "readouts": 4, "analyses": 5, "viz": 6,
          "release": 7, "cli": 8}


def folder_of(module: str) -> str:
    """probe.capture.trace -> 'capture'; probe.atomic -> '' (a file at probe/'s root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def imports(file: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every probe import in a file, relative ones resolved."""
    rel = file.relative_to(root).with_suffix("")
    here = list(rel.parts[:-1] if rel.name != "__init__" else rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "probe"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "probe":
                out.append((node.lineno, name))
    return out


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    """Every import that goes up a floor, or across to the sibling floor (capture <-> train)."""
    out = []
    for file in files:
        rel = file.relative_to(root)
        mine = rel.parts[1] if len(rel.parts) > 2 else ""
        for line, module in imports(file, root):
            theirs = folder_of(module)
            if theirs not in FLOORS or mine not in FLOORS:
                out.append(f"{rel}:{line}: {module}: a folder without a floor (add it to FLOORS and DESIGN.md)")
            elif FLOORS[theirs] > FLOORS[mine] or (FLOORS[theirs] == FLOORS[mine] and theirs != mine):
                out.append(f"{rel}:{line}: probe/{mine or '.'} (floor {FLOORS[mine]}) imports {module} "
                           f"(floor {FLOORS[theirs]})")
    return out


def test_every_folder_of_probe_has_a_floor_and_a_docstring_that_says_what_it_may_import():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == sorted(f for f in FLOORS if f), folders
    for name in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"probe/{name}/__init__.py must say what the floor holds and may import"


def test_no_module_imports_a_floor_above_its_own():
    assert violations(sorted(PACKAGE.rglob("*.py"))) == []


@pytest.mark.parametrize("importer, imported", [("probe/data/graph.py", "probe.model.coconut"),
                                                ("probe/capture/trace.py", "probe.train.loop"),
                                                ("probe/atomic.py", "probe.data.prosqa")])
def test_an_upward_import_is_caught(tmp_path, importer, imported):
    file = ROOT / importer
    copy = tmp_path / "probe" / Path(importer).relative_to("probe")
    copy.parent.mkdir(parents=True)
    copy.write_text(file.read_text() + f"\nimport {imported}  # deliberate\n")
    assert violations([file]) == []
    found = violations([copy], root=tmp_path)
    assert any(imported in v for v in found), found
