"""`probe release`: a trained checkpoint evaluated and written without optimizer state, with its card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import COCONUT_CONFIG
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, _claim, _device, DEVICE_OPTION, _dtype, one_line_errors, OVERWRITE_OPTION,
)


@app.command()
@one_line_errors
def release(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint written by `probe train` (epoch-XXX)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the released checkpoint to."),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file to measure accuracy on (the validation split)."),
    config: list[Path] = typer.Option(..., "--config", help="The training config of each phase, oldest first."),
    name: Optional[str] = typer.Option(None, "--name", help="Title of the model card (default: the --out name)."),
    summary: str = typer.Option("", "--summary", help="A paragraph for the top of the model card."),
    device: str = DEVICE_OPTION,
    store_dtype: str = typer.Option("float32", "--store-dtype", help="dtype of the written weights: float32, "
                                    "bfloat16 or float16 (evaluation runs in float32; loading casts back)."),
    overwrite: bool = OVERWRITE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Evaluate a trained checkpoint at every forced k and at the gold depth; write it without optimizer state,
    with its model card."""
    from probe.release.build import release as run

    _claim(out, overwrite=overwrite, directory=True, markers=(COCONUT_CONFIG,))
    rel = run(ckpt, out, data, config, name=name, summary=summary, device=_device(device),
              store_dtype=_dtype(store_dtype, "--store-dtype"), allow_lossy_tokenizer=allow_lossy)
    ev = rel.evaluation
    accs = ", ".join(f"k={k}: {a:.3f}" for k, a in ev.accuracy_by_k.items())
    gold = f", gold depth: {ev.gold_accuracy:.3f}" if ev.gold_accuracy is not None else ""
    typer.echo(f"wrote {rel.path}: accuracy {ev.accuracy:.4f} at the default k={ev.default_k} ({accs}{gold})")
