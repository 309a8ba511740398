"""`probe rbs-notebook`: RbS's notebook measures, by its own definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, DATA_OPTION, _default_ckpt,
    DEVICE_OPTION, DTYPE_OPTION, _load, _need_items, _num, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION,
)


@app.command("rbs-notebook")
@one_line_errors
def rbs_notebook_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    k: int = typer.Option(4, "--k", min=1, help="Thoughts to run: the measures at n_step 0..k-1, thoughts 1..k "
                                                "(the notebook's 4)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the pooled means and counts as JSON here."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """The measures of "Reasoning by Superposition"'s notebook, by its definitions (walk frontiers, nested groups,
    pooled means): the last layer's attention to each edge, and each thought's inner products with the node
    embeddings (probe/analyses/rbs_notebook.py says how they differ from `probe analyze`'s)."""
    from probe.atomic import atomic_write_text
    from probe.data.prosqa import load_items
    from probe.analyses.rbs_notebook import notebook_measures

    _claim(json_out, "--json", overwrite=overwrite)
    items = load_items(data, limit=limit)
    _need_items(items, 1, data, "there is nothing to measure", limit)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data), allow_lossy))
    res = notebook_measures(model, tok, items, k=k, batch_size=batch_size)
    _print_notebook(res)
    if json_out:
        atomic_write_text(json_out, json.dumps({"ckpt": str(_default_ckpt(ckpt)), "data": str(data), "n": len(items),
                                                **res.report()}, indent=1))
        typer.echo(f"wrote {json_out}")


def _print_notebook(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from probe.analyses.rbs_notebook import NOTEBOOK_GROUPS

    console = Console(width=160)
    titles = {"edge_attention": f"edge attention (layer {res.layer}, heads summed; pooled mean (edges))",
              "inner_product": "<thought, node embedding> (pooled mean (nodes))"}
    for pooled in (res.attention, res.inner_product):
        table = Table(title=titles[pooled.measure], title_justify="left")
        for col in ("n_step", "thought", "items", *(g.replace("_", " ") for g in NOTEBOOK_GROUPS)):
            table.add_column(col, justify="right")
        mean, count = pooled.mean, pooled.count
        for n in pooled.n_steps:
            table.add_row(str(n), str(n + 1), str(pooled.n_items[n]),
                          *(f"{_num(float(mean[n, j]))} ({count[n, j]})" for j in range(len(NOTEBOOK_GROUPS))))
        console.print(table)
