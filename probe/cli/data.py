"""`probe data generate` and `probe data stats`: ProsQA data files, written and inspected."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from probe.cli.common import (
    _claim, data_app, _fail, one_line_errors, OVERWRITE_OPTION,
)


@data_app.command("generate")
@one_line_errors
def data_generate(
    n: int = typer.Option(..., "--n", min=1, help="Number of items."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(..., "--out", help="Output JSON file."),
    fmt: str = typer.Option("official", "--format", help="official (the ProsQA fields) or rbs (RbS's data files: "
                            "the same fields and neighbor_k, the optimal nodes at each depth; at most 31 nodes)."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Generate ProsQA items with the paper's construction."""
    from probe.data.generate import dataset_stats, generate_items
    from probe.data.prosqa import save_items
    from probe.data.rbs import save_rbs_items

    if fmt not in ("official", "rbs"):
        _fail(f"--format {fmt!r}: expected official or rbs")
    _claim(out, overwrite=overwrite)
    items = generate_items(n, seed=seed, progress=True)
    if fmt == "rbs":
        save_rbs_items(items, out)
    else:
        save_items(items, out)
    s = dataset_stats(items)
    typer.echo(f"wrote {n} items to {out}: mean nodes {s.mean_nodes:.2f}, edges {s.mean_edges:.2f}, steps {s.mean_steps:.2f}")


@data_app.command("stats")
@one_line_errors
def data_stats(path: Path = typer.Argument(..., help="A ProsQA JSON file.")) -> None:
    """Validate a ProsQA file and print its statistics, with its duplicates (items of the same content, item_key)."""
    from probe.data.generate import dataset_stats
    from probe.data.prosqa import duplicates
    from probe.data.rbs import KIND_MEANING, read_items

    items, rbs = read_items(path)
    if not items:
        _fail(f"{path}: no items; there is nothing to describe")
    s = dataset_stats(items)
    dup = duplicates(items)
    fmt = {"format": "official"} if rbs is None else \
        {"format": "rbs", "neighbor_k": rbs.kind, "neighbor_k_means": KIND_MEANING[rbs.kind]}
    typer.echo(json.dumps({**fmt, "n": len(items), "distinct_items": dup.n_distinct, "items_with_a_copy": dup.with_copy,
                           **{k: v for k, v in vars(s).items()}}, indent=1, default=str))
    if dup.with_copy:
        typer.secho(f"warning: {dup.with_copy} of {len(items)} items have a copy in {path} (same graph, question and "
                    f"options); {dup.n_distinct} are distinct. Every fit keeps the copies of an item on one side of "
                    f"its splits.", fg=typer.colors.YELLOW, err=True)
