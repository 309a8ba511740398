"""`probe intervene`: causal tests of the thoughts beside control checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import FIGURE_SUFFIX, REPORT
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, DATA_OPTION, _default_ckpt, DEVICE_OPTION,
    DTYPE_OPTION, _fail, _float_option, _int_option, _load, _need_items, _num, one_line_errors, OVERWRITE_OPTION,
    _source, TOKENIZER_OPTION, write_html,
)


@app.command("intervene")
@one_line_errors
def intervene_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f" for {REPORT} and the figures."),
    overwrite: bool = OVERWRITE_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    control: list[Path] = typer.Option([], "--control", help="A control checkpoint (pause, CoT) run the same way; "
                                       "repeat for several."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Thoughts (default: the checkpoint's)."),
    sites: str = typer.Option("thought,1", "--sites",
                              help="Where to ablate and patch: 'thought' (the thoughts fed back) and/or layers."),
    kinds: str = typer.Option(",".join(("zero", "mean", "random", "other")), "--ablations"),
    steer_step: int = typer.Option(1, "--steer-step", min=1, help="The thought to steer."),
    steer_layer: int = typer.Option(-1, "--steer-layer", help="The residual layer to steer at."),
    alphas: str = typer.Option("0,0.25,0.5,1,2,4", "--alphas", help="Doses, in mean residual norms."),
    probe_dir: Optional[Path] = typer.Option(None, "--probe", help="A saved frontier probe of the main checkpoint "
                                             "at the steering layer (default: one fit on the items)."),
    only: str = typer.Option("k,ablate,patch,steer", "--only", help="Some of: k (fewer thoughts), ablate, patch, "
                             "steer."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="Only the first N items."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Causal tests of the thoughts: fewer thoughts, ablation, counterfactual patching, steering; beside controls."""
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.data.prosqa import load_items
    from probe.analyses.interventions import ABLATIONS, run_interventions
    from probe.readouts.probes import SavedProbe
    from probe.viz.figures import INTERVENTION_FIGURES

    first_page = f"{next(iter(INTERVENTION_FIGURES))}{FIGURE_SUFFIX}"
    _claim(out, overwrite=overwrite, directory=True, markers=(REPORT, first_page))
    site_list = [None if x.strip() == "thought" else _int_option("--sites", x) for x in sites.split(",") if x.strip()]
    kind_list = [x.strip() for x in kinds.split(",") if x.strip()]
    if bad := [x for x in kind_list if x not in ABLATIONS]:
        _fail(f"--ablations: unknown {bad}; expected some of {', '.join(ABLATIONS)}")
    alpha_list = [_float_option("--alphas", x) for x in alphas.split(",") if x.strip()]
    reports = []
    items = load_items(data, limit=limit)
    _need_items(items, 1, data, "there is nothing to intervene on", limit)
    runs = [(_default_ckpt(ckpt), base, tokenizer)] + [(c, None, None) for c in control]
    on = _Data(items, _source(data), allow_lossy)
    # every model loaded, and its tokenizer checked against the data, before any work
    loaded = [_load(ckpt if i == 0 else path, b, device, dtype, t, on,
                    whose="the tokenizer" if i == 0 else f"the tokenizer of --control {path}")
              for i, (path, b, t) in enumerate(runs)]
    for i, ((path, b, t), (model, tok)) in enumerate(zip(runs, loaded)):
        probe = None
        if probe_dir is not None and i == 0:
            probe = SavedProbe.load(probe_dir, model, "frontier")
        typer.echo(f"{path}:")
        rep = run_interventions(model, tok, items, k=k if i == 0 else reports[0].k, sites=site_list, kinds=kind_list,
                                steer_step=steer_step, steer_layer=steer_layer, alphas=alpha_list, probe=probe,
                                batch_size=batch_size, seed=seed,
                                checkpoint=str(path), parts=[x.strip() for x in only.split(",") if x.strip()])
        reports.append(rep)
    from probe.analyses.analyze import finite

    dicts = [finite(r.as_dict()) for r in reports]
    with atomic_directory(out, replace=True) as tmp:  # the claim refused what was not to be replaced
        atomic_write_text(tmp / REPORT, json.dumps({"data": str(data), "reports": dicts}, indent=1))
        for name, figure in INTERVENTION_FIGURES.items():
            write_html(figure(dicts), tmp / f"{name}{FIGURE_SUFFIX}")
    _print_interventions(dicts)
    typer.echo(f"wrote {out}/{REPORT} and {len(INTERVENTION_FIGURES)} figures")


def _print_interventions(reports: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for rep in reports:
        table = Table(title=f"{rep['checkpoint']} ({rep['mode']}, {rep['n']} items, k={rep['k']})",
                      title_justify="left")
        table.add_column("test")
        table.add_column("accuracy")
        table.add_column("unedited")
        table.add_column("answers changed")
        for j, acc in rep["accuracy_by_k"].items():
            table.add_row(f"{j} thoughts", _num(acc), "", "")
        for site_label, runs in rep["ablations"].items():
            for r in runs:
                if r["name"].endswith(" all"):
                    table.add_row(f"{site_label}: {r['name']}", _num(r["accuracy"]), _num(r["baseline_accuracy"]),
                                  _num(r["answers_changed"]))
        for site_label, runs in rep["patching"].items():
            r = runs[0]
            table.add_row(f"{site_label}: patch all from A; names A's root / A's concept",
                          f"{_num(r['names_a_root'])} / {_num(r['follows_a'])}",
                          f"{_num(r['baseline_names_a_root'])} / {_num(r['baseline_follows_a'])}", _num(r["changed"]))
        for p in rep["steering"]["points"]:
            if p["alpha"] == max(q["alpha"] for q in rep["steering"]["points"]):
                table.add_row(f"steer {p['direction']} alpha={p['alpha']:g}: value(v) / to v's option",
                              f"{_num(p['value'])} / {_num(p['to_option'])}", "", _num(p["changed"]))
        console.print(table)
