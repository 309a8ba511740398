"""`probe tuned-lens`: fit a tuned lens to a checkpoint's thoughts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, DEVICE_OPTION, DTYPE_OPTION,
    _items, _load, _need_items, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION,
)


@app.command("tuned-lens")
@one_line_errors
def tuned_lens_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    out: Path = typer.Option(..., "--out", help="The lens file to write (.safetensors)."),
    overwrite: bool = OVERWRITE_OPTION,
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to fit on (default: generated items)."),
    n: int = typer.Option(1000, "--n", min=1, help="Generated items to fit on, when no --data."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the generated items."),
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Fit a tuned lens (one affine translator per layer) to a checkpoint's thoughts; 10% of the distinct items (with
    every copy of them) are held out."""
    from probe.cli.common import note_duplicates
    from probe.readouts.lens import fit_tuned_lens

    _claim(out, overwrite=overwrite)
    items = _items(data, n, seed)
    _need_items(items, 2, data, "a tuned lens is fit on some items and checked on others held out (10%, at least "
                "one): it needs at least 2")
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data, n), allow_lossy))
    fit = fit_tuned_lens(model, tok, items, k=k, epochs=epochs)
    fit.lens.save(out)
    for l, (a, b) in enumerate(zip(fit.kl_logit.tolist(), fit.kl_tuned.tolist())):
        typer.echo(f"layer {l}: held-out KL to the final distribution, logit lens {a:.4f}, tuned lens {b:.4f}")
    note_duplicates(fit.duplicates_merged)
    typer.echo(f"wrote {out}")
