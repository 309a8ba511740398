"""`probe analyze`: the latent-search measures, with their figures and summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import FIGURE_SUFFIX, MODEL_CARD, REPORT, SUMMARY
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, CONTROL_BASE_OPTION, CONTROL_TOKENIZER_OPTION, _Data,
    DATA_OPTION, _default_ckpt, DEVICE_OPTION, DTYPE_OPTION, _fail, _load, _need_items, _num, one_line_errors, OVERWRITE_OPTION, _source,
    TOKENIZER_OPTION, write_html,
)


@app.command("analyze")
@one_line_errors
def analyze_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f" for {REPORT} and one HTML figure per measure."),
    overwrite: bool = OVERWRITE_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    control: Optional[Path] = typer.Option(None, "--control",
                                           help="A control checkpoint (pause-as-thought or CoT) measured the same way."),
    control_base: Optional[Path] = CONTROL_BASE_OPTION,
    control_tokenizer: Optional[str] = CONTROL_TOKENIZER_OPTION,
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1, help="Thoughts to study (default: the checkpoint's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
    update_card: bool = typer.Option(False, "--update-card",
                                     help=f"Also write the summary into the checkpoint's model card ({MODEL_CARD})."),
) -> None:
    """The latent-search measures (values, height, parallelism, categories, superposition, attention) with plots."""
    from probe.analyses.analyze import analyze
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.release.card import markdown_summary, replace_card_section
    from probe.data.prosqa import load_items
    from probe.viz.figures import FIGURES

    _claim(out, overwrite=overwrite, directory=True, markers=(REPORT, SUMMARY))
    card = _default_ckpt(ckpt) / MODEL_CARD
    if update_card:
        if not card.is_file():
            _fail(f"--update-card: {card} does not exist (only our checkpoint directories have a model card)")
        _claim(card, "--update-card", existing=True)
    items = load_items(data, limit=limit)
    _need_items(items, 1, data, "there is nothing to analyze", limit)
    on = _Data(items, _source(data), allow_lossy)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, on)
    if control is not None:  # loaded (and its tokenizer checked) before any work
        c_model, c_tok = _load(control, control_base, device, dtype, control_tokenizer, on,
                               whose=f"the tokenizer of --control {control}")
    main = analyze(model, tok, items, k_max=k_max, batch_size=batch_size, checkpoint=str(_default_ckpt(ckpt)))
    ctrl = None
    if control is not None:
        ctrl = analyze(c_model, c_tok, items, k_max=main.k_max, batch_size=batch_size, checkpoint=str(control))
    report = {"data": str(data), **main.report()}  # the data file, as intervene's report names it (probe findings)
    if ctrl is not None:
        report["control"] = ctrl.report()
    summary = markdown_summary(report, data=data.name)
    with atomic_directory(out, replace=True) as tmp:  # the claim refused what was not to be replaced
        atomic_write_text(tmp / REPORT, json.dumps(report, indent=1))
        atomic_write_text(tmp / SUMMARY, summary)
        for name, figure in FIGURES.items():
            write_html(figure(main, ctrl), tmp / f"{name}{FIGURE_SUFFIX}")
    _print_analysis(main, ctrl)
    typer.echo(f"wrote {out}/{REPORT}, {SUMMARY} and {len(FIGURES)} figures")
    if update_card:
        atomic_write_text(card, replace_card_section(card.read_text(), summary))
        typer.echo(f"updated {card}")


def _print_analysis(main, ctrl) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    title = "frontier measures by thought k" + (" (model | control)" if ctrl is not None else "")
    table = Table(title=title, title_justify="left")
    for col in ("k", "frontier mass", "top-1", "top-3", "<t,optimal>", "<t,frontier>", "<t,reachable>",
                "<t,unreachable>", "accuracy"):
        table.add_column(col, justify="right")

    def cell(fn) -> str:
        return " | ".join(_num(fn(a)) for a in (main, ctrl) if a is not None)

    for i, k in enumerate(main.steps):
        table.add_row(
            str(k),
            cell(lambda a: float(np.nanmean(a.frontier_mass[:, i])) if np.isfinite(a.frontier_mass[:, i]).any() else None),
            cell(lambda a: a.parallelism[k].mean["top1"]), cell(lambda a: a.parallelism[k].mean["top3"]),
            *[cell(lambda a, j=j: float(a.inner_product.mean[i, j])) for j in range(4)],
            cell(lambda a: a.accuracy_by_k.get(k)),
        )
    Console(width=160).print(table)
    typer.echo(f"accuracy at the checkpoint's own k: {main.accuracy:.4f}"
               + (f" (control {ctrl.accuracy:.4f})" if ctrl is not None else ""))
