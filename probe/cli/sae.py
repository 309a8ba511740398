"""`probe sae train`: sparse autoencoders on thoughts (SAELens's file format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import REPORT, SAE_CFG, SAE_FEATURES_PAGE, SAE_WEIGHTS
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, _default_ckpt, DEVICE_OPTION,
    DTYPE_OPTION, _items, _load, _need_items, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION, write_html,
)


sae_app = typer.Typer(help="Sparse autoencoders on thoughts (SAELens file format).", no_args_is_help=True)


app.add_typer(sae_app, name="sae")


@sae_app.command("train")
@one_line_errors
def sae_train(
    ckpt: Optional[Path] = CKPT_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f": {SAE_CFG} + {SAE_WEIGHTS} (SAELens), report."),
    overwrite: bool = OVERWRITE_OPTION,
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to train on (default: generated items)."),
    n: int = typer.Option(2000, "--n", min=10, help="Generated items, when no --data."),
    seed: int = typer.Option(12345, "--seed"),
    layer: Optional[int] = typer.Option(None, "--layer", help="A layer's residual at the thought positions "
                                                               "(default: the thoughts fed back)."),
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    d_sae: int = typer.Option(512, "--d-sae", min=1),
    k: int = typer.Option(8, "--k", min=1, help="Active features per row (TopK)."),
    activation: str = typer.Option("topk", "--activation", help="topk, or relu (with --l1)."),
    l1: float = typer.Option(0.0, "--l1", min=0.0),
    epochs: int = typer.Option(50, "--epochs", min=1),
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Train a sparse autoencoder on every thought of a data set; report FVU, L0, dead features and what fires.
    10% of the distinct items (with every copy of them) are held out."""
    from probe.analyses.analyze import finite
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.cli.common import note_duplicates
    from probe.readouts.probes import resid_hook
    from probe.readouts.sae import train_sae
    from probe.viz.figures import sae_features_figure

    _claim(out, overwrite=overwrite, directory=True, markers=(SAE_CFG, SAE_WEIGHTS))
    items = _items(data, n, seed)
    _need_items(items, 2, data, "an SAE is trained on some items and checked on others held out (10%, at least "
                "one): it needs at least 2")
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data, n), allow_lossy))
    run = train_sae(model, tok, items, hook=resid_hook(model, layer) if layer is not None else None, k_max=k_max,
                    d_sae=d_sae, k=k, activation=activation, l1_coeff=l1, epochs=epochs, device=device)
    report = finite({"checkpoint": str(_default_ckpt(ckpt)), **run.report()})
    with atomic_directory(out, replace=True) as tmp:  # the claim refused the rest
        run.sae.write_into(tmp, model_name=_default_ckpt(ckpt).name,
                           extra={"k_max": run.rows.k_max, "n_items": run.n_items})
        atomic_write_text(tmp / REPORT, json.dumps(report, indent=1))
        write_html(sae_features_figure(run.features), tmp / SAE_FEATURES_PAGE)
    m, held = run.train_metrics, run.held_out_metrics
    typer.echo(f"SAE on {run.rows.hook} ({len(run.rows.X)} thoughts of {run.n_items} items): fvu {m.fvu:.3f} "
               f"(held out {held.fvu:.3f}), L0 {m.l0:.1f}, dead {m.dead_fraction:.1%}")
    note_duplicates(run.duplicates_merged)
    for f in run.ranked[:5]:
        typer.echo(f"  feature {f.feature}: frontier AUROC {f.best_auroc:.3f} for {f.best_name}, fires {f.frequency:.1%}")
    typer.echo(f"wrote {out}")
