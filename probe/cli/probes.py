"""`probe probes fit` and `probe probes halt`: linear probes on thoughts, with control tasks; the halting probe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import PROBE_CONFIG, PROBE_SCORES_PAGE, REPORT
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, CONTROL_BASE_OPTION, CONTROL_TOKENIZER_OPTION, _Data,
    _default_ckpt, DEVICE_OPTION, DTYPE_OPTION, _items, _load, _need_items, _num, one_line_errors, OVERWRITE_OPTION,
    _source, TOKENIZER_OPTION, write_html,
)


probes_app = typer.Typer(help="Linear probes on thoughts, with control tasks; the halting probe.", no_args_is_help=True)


app.add_typer(probes_app, name="probes")


@probes_app.command("fit")
@one_line_errors
def probes_fit(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format); folds are over its items "
                              "(copies of an item share a fold)."),
    target: str = typer.Option("frontier", "--target", help="frontier, reachable, value or depth."),
    layer: int = typer.Option(-1, "--layer", help="Residual stream after this layer (negative: from the end)."),
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f" for the probe, {REPORT} and {PROBE_SCORES_PAGE}."),
    overwrite: bool = OVERWRITE_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    control: Optional[Path] = typer.Option(None, "--control", help="A control checkpoint probed the same way."),
    control_base: Optional[Path] = CONTROL_BASE_OPTION,
    control_tokenizer: Optional[str] = CONTROL_TOKENIZER_OPTION,
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1, help="Thoughts to probe (default: the checkpoint's)."),
    folds: int = typer.Option(5, "--folds", min=2),
    limit: Optional[int] = typer.Option(None, "--limit", min=2),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Cross-validated linear probes (and their control task) for every thought k at one layer."""
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.cli.common import note_duplicates
    from probe.readouts.probes import fit_probes, items_for_folds
    from probe.viz.figures import probe_scores_figure

    _claim(out, overwrite=overwrite, directory=True, markers=(PROBE_CONFIG, REPORT))
    items = _items(data, 0, 0, limit)
    need = items_for_folds(folds)
    _need_items(items, need, data, f"--folds {folds} needs at least {need}: each fold's probe is fit on the other "
                "folds' items, at least 2 of them (give more items or fewer folds)", limit)
    on = _Data(items, _source(data), allow_lossy)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, on)
    if control is not None:  # loaded (and its tokenizer checked) before any work
        c_model, c_tok = _load(control, control_base, device, dtype, control_tokenizer, on,
                               whose=f"the tokenizer of --control {control}")
    rep = fit_probes(model, tok, items, target, layer=layer, k_max=k_max, folds=folds, seed=seed)
    report = {"checkpoint": str(_default_ckpt(ckpt)), "data": str(data), "n_items": len(items), **rep.as_dict()}
    if control is not None:
        c_rep = fit_probes(c_model, c_tok, items, target, layer=layer, k_max=max(rep.scores), folds=folds,
                           seed=seed)
        report["control"] = {"checkpoint": str(control), **c_rep.as_dict()}
    from probe.analyses.analyze import finite

    report = finite(report)
    with atomic_directory(out, replace=True) as tmp:  # the claim refused the rest
        rep.probe.write_into(tmp)
        atomic_write_text(tmp / REPORT, json.dumps(report, indent=1))
        write_html(probe_scores_figure(report, report.get("control")), tmp / PROBE_SCORES_PAGE)
    key = "auroc" if rep.probe.kind == "classification" else "r2"
    for k, sc in report["steps"].items():
        extra = f" | control checkpoint {_num(report['control']['steps'][k][key])}" if control is not None else ""
        typer.echo(f"thought {k}: {key} {_num(sc[key])}, control task {_num(sc['control_' + key])}, "
                   f"selectivity {_num(sc['selectivity'])}{extra}")
    note_duplicates(rep.duplicates_merged)
    typer.echo(f"wrote {out}")


@probes_app.command("halt")
@one_line_errors
def probes_halt(
    ckpt: Optional[Path] = CKPT_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f" for the halting probe and {REPORT}."),
    overwrite: bool = OVERWRITE_OPTION,
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to train on (default: generated items)."),
    n: int = typer.Option(1000, "--n", min=2, help="Generated items to train on, when no --data."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the generated items."),
    layer: int = typer.Option(-1, "--layer"),
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    k_max: Optional[int] = typer.Option(None, "--k-max", min=2, help="The most thoughts (default: the checkpoint's)."),
    folds: int = typer.Option(5, "--folds", min=2),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Train the halting probe: from thought k, will forcing <|end-latent|> now give the right answer?"""
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.cli.common import note_duplicates
    from probe.readouts.probes import fit_halting_probe

    _claim(out, overwrite=overwrite, directory=True, markers=(PROBE_CONFIG, REPORT))
    items = _items(data, n, seed)
    _need_items(items, 2, data, "the halting probe is cross-validated with folds over items (one at least held "
                "out): it needs at least 2")
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data, n), allow_lossy))
    saved, scores = fit_halting_probe(model, tok, items, layer=layer, k_max=k_max, folds=folds)
    from probe.analyses.analyze import finite

    with atomic_directory(out, replace=True) as tmp:  # the claim refused the rest
        saved.write_into(tmp)
        atomic_write_text(tmp / REPORT, json.dumps(finite({
            "checkpoint": str(_default_ckpt(ckpt)), "data": str(data) if data else f"generated n={n} seed={seed}",
            "hook": saved.hook, **saved.metrics}), indent=1))
    cv = scores.as_dict()
    typer.echo(f"halting probe on {saved.hook}: cross-validated AUROC {cv['auroc']:.3f} (control {cv['control_auroc']:.3f}), "
               f"right answers among (item, k) pairs {saved.metrics['positive_rate']:.1%}; wrote {out}")
    note_duplicates(scores.duplicates_merged)
