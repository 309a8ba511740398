"""`probe plant`: the planted Coconut and its card of known answers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import COCONUT_CONFIG
from probe.cli.common import (
    app, _claim, _dtype, _fail, _float_option, _items, _need_items, one_line_errors, OVERWRITE_OPTION,
)


@app.command()
@one_line_errors
def plant(
    out: Path = typer.Option(..., "--out", help="Directory to write the planted checkpoint to."),
    noise: float = typer.Option(0.0, "--noise", min=0.0, help="S: every weight times 1 + S e, e ~ N(0, 1) (0: the "
                                                             "exact construction; it is brittle: 0.002 breaks most "
                                                             "answers)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON for the card's readings (default: --n "
                                                             "generated items)."),
    n: int = typer.Option(300, "--n", min=10, help="Generated items for the card's readings, when no --data."),
    grades: str = typer.Option("0.001,0.002,0.005", "--grades", help="Noise levels read beside S = 0 in the card's table "
                                                                "('' for none)."),
    store_dtype: str = typer.Option("bfloat16", "--store-dtype", help="dtype of the written weights."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Write the planted Coconut: "Reasoning by Superposition"'s construction compiled into a GPT-2 (nothing
    trained), with a card of every instrument's reading at S = 0 and at each --grades level."""
    from probe.release.card import planted_card
    from probe.analyses.known_answers import instrument_readings
    from probe.model.checkpoint import save_checkpoint
    from probe.model.planted import planted_model

    levels = [0.0] + [_float_option("--grades", g) for g in grades.split(",") if g.strip()]
    if any(g < 0 for g in levels):
        _fail(f"--grades {grades!r}: noise levels must be >= 0")
    _claim(out, overwrite=overwrite, directory=True, markers=(COCONUT_CONFIG,))
    items = _items(data, n, seed=12345)
    _need_items(items, 10, data, "the card's probe readings need 10 items (5 folds)")
    rows = {}
    for level in dict.fromkeys(levels + [noise]):
        model, tok = planted_model(level, seed)
        rows[level] = instrument_readings(model, tok, items, progress=False)
        typer.echo(f"S = {level:g}: accuracy {rows[level].accuracy_gold:.3f} at the gold depth, "
                   f"{rows[level].accuracy_k6:.3f} at k = 6")
    model, tok = planted_model(noise, seed)
    label = f"{len(items)} items of {data.name}" if data else f"{len(items)} generated items (seed 12345)"
    card = planted_card(noise, seed, rows, label)
    save_checkpoint(model.to(dtype=_dtype(store_dtype, "--store-dtype")), tok, out, card=card,
                    metadata={"planted": {"noise": noise, "seed": seed}})
    typer.echo(f"wrote {out}")
