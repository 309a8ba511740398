"""The findings table from hand-written analyze and intervene reports, and `probe findings`' input errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from probe.cli import app
from probe.analyses.findings import PAPERS, findings_markdown

runner = CliRunner()
GROUPS4 = {"optimal": 0.4, "frontier": 0.2, "reachable": 0.1, "unreachable": 0.05}


def analysis(name: str, mode: str, scale: float) -> dict:
    by_k = lambda f: {str(k): f(k) for k in (1, 2, 3)}  # noqa: E731
    return {"checkpoint": f"checkpoints/{name}", "mode": mode, "readout": "emitted", "n": 300,
            "accuracy_by_k": by_k(lambda k: 0.9), "frontier_value_mass": by_k(lambda k: scale * k / 10),
            "value_by_group": by_k(lambda k: GROUPS4), "parallelism": by_k(lambda k: {"top1": scale * k / 20}),
            "inner_product": by_k(lambda k: {"optimal": 6.5, "frontier": 5.2, "reachable": 3.6, "unreachable": -0.3}),
            "superposition": by_k(lambda k: {"frontier_share": 0.5 + k / 10, "r2": 0.9}),
            "attention_frontier_gap": by_k(lambda k: {"0": 0.5, "1": 0.01 * k})}


def interventions() -> dict:
    main = {"checkpoint": "checkpoints/prosqa-coconut", "mode": "coconut", "k": 6, "n": 40,
            "accuracy_by_k": {"0": 0.5, "6": 0.975},
            "ablations": {"thought": [{"name": "mean all", "accuracy": 0.55, "baseline_accuracy": 0.975},
                                      {"name": "other all", "accuracy": 0.5, "baseline_accuracy": 0.975},
                                      {"name": "mean 1", "accuracy": 0.6, "baseline_accuracy": 0.975}]},
            "patching": {"thought": [{"steps": "all", "names_a_root": 0.0, "follows_a": 0.9, "baseline_names_a_root": 0.0,
                                      "baseline_follows_a": 0.05, "values_at": None, "a_frontier_mass": None},
                                     {"steps": "1", "values_at": 2, "a_frontier_mass": 0.7,
                                      "baseline_a_frontier_mass": 0.1}]},
            "steering": {"step": 1, "layer": -1, "points": [
                {"direction": "unembed", "alpha": 0.0, "value": 0.01, "to_option": 0.0},
                {"direction": "unembed", "alpha": 4.0, "value": 0.6, "to_option": 0.25},
                {"direction": "random", "alpha": 4.0, "value": 0.02, "to_option": 0.0}]},
            "skipped": []}
    none = {"checkpoint": "checkpoints/prosqa-no-thoughts", "mode": "no_thoughts", "k": 0, "n": 40,
            "accuracy_by_k": {"0": 0.61}, "ablations": {}, "patching": {}, "steering": {"points": []}, "skipped": []}
    return {"data": "../shared/data/prosqa_valid.json", "reports": [main, none]}


def test_the_table_puts_each_reported_number_in_its_models_column():
    a = analysis("prosqa-coconut", "coconut", 1.0)
    a["control"] = analysis("prosqa-pause", "pause_as_thought", 0.5)
    table = findings_markdown(a, interventions())
    lines = table.splitlines()
    assert lines[0] == ("| finding | `prosqa-coconut` (coconut) | `prosqa-no-thoughts` (no_thoughts) | "
                        "`prosqa-pause` (pause_as_thought) | papers |")
    rows = table_rows(table)
    # Each command's accuracies in their own row: intervene's (40 items) and analyze's (300 items) are not mixed.
    assert rows["accuracy (%) after k thoughts, `probe intervene`"][:3] == ["0: 50.0 / 6: 97.5", "0: 61.0", "-"]
    assert rows["accuracy (%) after k forced thoughts (a CoT model: k gold steps), `probe analyze`"][:3] == \
        ["1: 90.0 / 2: 90.0 / 3: 90.0", "-", "1: 90.0 / 2: 90.0 / 3: 90.0"]
    assert rows["frontier value mass, k = 1 / 2"][:3] == ["0.100 / 0.200", "-", "0.050 / 0.100"]
    assert rows["top-1 frontier value, k = 1 -> 2"][0] == "0.050 -> 0.100"
    assert rows["<thought 1, name embedding>: optimal / frontier / reachable / unreachable"][0] == \
        "6.500 / 5.200 / 3.600 / -0.300"
    assert rows["share of thought k's NNLS decomposition on frontier_k (R²), k = 1 / 2"][0] == \
        "0.600 (0.900) / 0.700 (0.900)"
    assert rows["attention gap, frontier edges minus others (last layer), k = 1 / 2"][0] == "0.010 / 0.020"
    assert rows["accuracy (%), every thought ablated: mean / another item's"][:2] == ["55.0 / 50.0 (unedited 97.5)", "-"]
    assert rows["accuracy (%), thought 1 ablated: mean / another item's"][0] == "60.0 / - (unedited 97.5)"
    assert rows["all thoughts patched A -> B (%): B names A's person / A's concept"][0] == \
        "0.0 / 90.0 (unpatched 0.0 / 5.0)"
    assert rows["thought 1 patched A -> B: B's value mass on A's frontier"][0] == "0.700 (unpatched 0.100), read at k = 2"
    assert rows["steering thought 1 toward v: value(v) / answers naming v's option"][0] == \
        "alpha 4: unembed 0.600 / 25.0%, random 0.020 / 0.0% (alpha 0: 0.010)"
    assert "Items: `probe analyze` 300 of a data file the report does not name; `probe intervene` 40 of " \
           "prosqa_valid.json." in table
    with pytest.raises(ValueError, match="need an analysis report"):
        findings_markdown(None, None)
    cot = {"checkpoint": "prosqa-cot", "mode": "cot", "k": 6, "n": 40, "accuracy_by_k": {"0": 0.15, "6": 0.45}}
    row = next(line for line in findings_markdown(None, {"reports": [cot]}).splitlines() if line.startswith("| accuracy"))
    assert "at once: 15.0 / own chain: 45.0" in row


def table_rows(table: str) -> dict[str, list[str]]:
    """Each row's cells after its label, by label."""
    return {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:] for line in table.splitlines()[2:]
            if line.startswith("|")}


def test_each_count_and_row_is_its_own_commands_and_only_given_commands_appear():
    """The issue's case: analyze on 300 items, intervene on 40 (sorted, they read the other way round), and only
    --analysis given (no intervene count, no intervene rows, no papers' figures beside rows that cannot be filled)."""
    a = {**analysis("prosqa-coconut", "coconut", 1.0), "data": "data/prosqa_valid.json"}
    iv = {**interventions(), "data": "data/forty.json"}
    table = findings_markdown(a, iv)
    assert "Items: `probe analyze` 300 of prosqa_valid.json; `probe intervene` 40 of forty.json." in table
    alone = findings_markdown(a, None)
    assert alone.splitlines()[0] == "| finding | `prosqa-coconut` (coconut) | papers |"
    assert "intervene" not in alone and "ablated" not in alone and "patched" not in alone and "steering" not in alone
    assert "Items: `probe analyze` 300 of prosqa_valid.json. A dash" in alone
    rows = table_rows(alone)
    # With no intervene report, analyze's accuracy row carries the papers' accuracies.
    assert rows["accuracy (%) after k forced thoughts (a CoT model: k gold steps), `probe analyze`"][-1] == \
        PAPERS["accuracy"]
    only_iv = findings_markdown(None, iv)
    assert "analyze" not in only_iv and "frontier value mass" not in only_iv and "name embedding" not in only_iv
    assert "Items: `probe intervene` 40 of forty.json. A dash" in only_iv
    # A CoT model's analyze accuracies after 0 and 1 gold steps are not intervene's "at once / own chain".
    cot = {**analysis("prosqa-cot", "cot", 1.0), "accuracy_by_k": {"0": 0.2, "1": 0.3}}
    assert table_rows(findings_markdown(cot, None))[
        "accuracy (%) after k forced thoughts (a CoT model: k gold steps), `probe analyze`"][0] == "0: 20.0 / 1: 30.0"
    # Models of one command measured on different numbers of items: each count with its model.
    iv["reports"][1]["n"] = 30
    assert "`probe intervene` `prosqa-coconut` 40, `prosqa-no-thoughts` 30 of forty.json." in findings_markdown(None, iv)


def test_two_checkpoints_of_one_name_keep_their_own_columns():
    """runs/a/final (the model) and runs/b/final (its control) share a name: each keeps its column, by path."""
    a = analysis("final", "coconut", 1.0) | {"checkpoint": "runs/a/final"}
    a["control"] = analysis("final", "pause_as_thought", 0.5) | {"checkpoint": "runs/b/final"}
    table = findings_markdown(a, None)
    assert table.splitlines()[0] == "| finding | `runs/a/final` (coconut) | `runs/b/final` (pause_as_thought) | papers |"
    assert table_rows(table)["frontier value mass, k = 1 / 2"][:2] == ["0.100 / 0.200", "0.050 / 0.100"]
    # The name is shared in the analysis only; the interventions report holds one of the two: the same model keeps
    # one column (labelled by path in both reports), not a path column and a name column.
    iv = interventions()
    iv["reports"] = [iv["reports"][0] | {"checkpoint": "runs/a/final"}]
    table = findings_markdown(a, iv)
    assert table.splitlines()[0] == "| finding | `runs/a/final` (coconut) | `runs/b/final` (pause_as_thought) | papers |"
    rows = table_rows(table)
    assert rows["accuracy (%) after k thoughts, `probe intervene`"][:2] == ["0: 50.0 / 6: 97.5", "-"]
    assert rows["frontier value mass, k = 1 / 2"][:2] == ["0.100 / 0.200", "0.050 / 0.100"]


def test_probe_findings_reads_both_directories_and_names_a_bad_one(tmp_path):
    (tmp_path / "an").mkdir()
    (tmp_path / "an" / "report.json").write_text(json.dumps(analysis("prosqa-coconut", "coconut", 1.0)))
    (tmp_path / "iv").mkdir()
    (tmp_path / "iv" / "report.json").write_text(json.dumps(interventions()))
    r = runner.invoke(app, ["findings", "--analysis", str(tmp_path / "an"), "--interventions", str(tmp_path / "iv"),
                            "--out", str(tmp_path / "findings.md")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "findings.md").read_text() == findings_markdown(
        json.loads((tmp_path / "an" / "report.json").read_text()), interventions())
    (tmp_path / "bad.json").write_text("{not json")
    for args, words in ((["--analysis", str(tmp_path / "nowhere")], "--analysis " + str(tmp_path / "nowhere") +
                         ": no report.json there"),
                        (["--interventions", str(tmp_path / "bad.json")], "bad.json: not a valid JSON file"),
                        (["--analysis", str(tmp_path / "iv")], "not the report of probe analyze"),
                        ([], "need an analysis report"),
                        (["--analysis", str(tmp_path / "an"), "--out", str(tmp_path)], "is a directory")):
        r = runner.invoke(app, ["findings", *args])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (args, r.output)
