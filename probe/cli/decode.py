"""`probe decode`: what every thought holds at every layer, through a lens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import TUNED_LENS
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, DATA_OPTION, _default_ckpt,
    DEVICE_OPTION, DTYPE_OPTION, _fail, _item, _layers, _load, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION,
)


@app.command()
@one_line_errors
def decode(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    index: int = typer.Option(..., "--index", help="Which item of the file."),
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    lens: str = typer.Option("logit", "--lens", help="logit or tuned."),
    lens_file: Optional[Path] = typer.Option(None, "--lens-file",
                                             help=f"A tuned lens (default: {TUNED_LENS} in the checkpoint)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers, e.g. 0,2,-1 (default: all)."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    top: int = typer.Option(5, "--top", min=1, help="Top tokens per layer."),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the readings as JSON here."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """What every thought holds at every layer (logit or tuned lens), with frontier nodes marked."""
    from probe.atomic import atomic_write_text
    from probe.analyses.decode import decode_item
    from probe.readouts.lens import LENSES, open_lens

    if lens not in LENSES:
        _fail(f"--lens: expected {' or '.join(LENSES)}, got {lens!r}")
    _claim(json_out, "--json", overwrite=overwrite)
    item = _item(data, index)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data([item], _source(data), allow_lossy, index))
    reader = open_lens(lens, model, lens_file or _default_ckpt(ckpt) / TUNED_LENS)
    res = decode_item(model, tok, item, index=index, k=k, lens=reader, layers=_layers(layers), top=top)
    _print_decoded(res)
    if res.indistinct:
        groups = "; ".join(" = ".join(g) for g in res.indistinct)
        typer.secho(f"warning: the lens cannot tell these names apart (the tokenizer writes each group with the same "
                    f"tokens, whose probability every name of the group shows): {groups}", fg=typer.colors.YELLOW, err=True)
    if json_out:
        atomic_write_text(json_out, json.dumps(res.to_json(), indent=1))


def _print_decoded(res) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(f"[bold]item {res.index}[/bold]: {res.question}")
    for step in [*res.thoughts, res.answer_step]:
        what = "first answer position" if step.is_answer else f"thought {step.k}"
        frontier = set(step.frontier)
        table = Table(title=f"{what} ({res.lens} lens) · frontier_{step.k}: {', '.join(step.frontier) or '-'}",
                      title_justify="left")
        table.add_column("layer", justify="right")
        table.add_column("top tokens (* = frontier node)")
        table.add_column("frontier mass", justify="right")
        for r in step.layers:
            tops = "  ".join(f"{'*' if t in frontier else ''}{t} {p:.2f}" for t, p in r.top)
            table.add_row(str(r.layer), tops, f"{r.frontier_mass:.3f}")
        console.print(table)
    mark = "[green]correct[/green]" if res.correct else f"[red]wrong[/red] (expected: {res.answer})"
    console.print(f"answer: {res.prediction} {mark}")
