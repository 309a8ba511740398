"""`probe capture`: every thought of a data set at every layer, streamed to a trace store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import TRACE_MANIFEST
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, _Data, DATA_OPTION, _default_ckpt,
    DEVICE_OPTION, DTYPE_OPTION, _dtype, _layers, _load, _need_items, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION,
)


@app.command("capture")
@one_line_errors
def capture_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    out: Path = typer.Option(..., "--out", help="Directory (new, or this command's own with --overwrite)"
                                           f" for the safetensors shards and {TRACE_MANIFEST}."),
    overwrite: bool = OVERWRITE_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    hooks: Optional[list[str]] = typer.Option(None, "--hooks", help="Hook-name globs, e.g. '*hook_resid_post' (repeatable)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: all)."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    store_dtype: str = typer.Option("float32", "--store-dtype", help="Storage dtype: float32, bfloat16 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Items per shard file."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=0,
                                       help="Also store each item's greedy answer, up to N tokens, from the same pass "
                                            "(0: thoughts only)."),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Stream every thought of a data set, at every layer, to disk (safetensors shards + manifest).

    Under torchrun (`torchrun --nproc_per_node N -m probe.cli capture ...`) each process captures a block of the
    items (on cuda, the GPU of its local rank) and rank 0 merges them into one store.
    """
    from probe.capture.trace import capture_to_disk
    from probe.model.architecture import architecture
    from probe.model.hook_names import select_hooks
    from probe.data.prosqa import load_items
    from probe.capture.distributed import capture_distributed
    from probe.model.ranks import rank_device, world
    from probe.data.rbs import RBS_ANSWER
    from probe.data.render import answer_length
    from probe.model.evaluate import is_correct

    rank, size, _ = world()
    if rank == 0:  # under torchrun, rank 0 writes the store
        _claim(out, overwrite=overwrite, directory=True, markers=(TRACE_MANIFEST,))
    device = rank_device(device)
    items = load_items(data, limit=limit)
    _need_items(items, 1, data, "there is nothing to capture", limit)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data), allow_lossy))
    names = select_hooks(architecture(model).n_layers, hooks, _layers(layers))
    kw = dict(k=k, names=names, dtype=_dtype(store_dtype, "--store-dtype"), batch_size=batch_size, shard_size=shard_size,
              max_new_tokens=max_new_tokens, source={"ckpt": str(_default_ckpt(ckpt)), "data": str(data)},
              replace=True)  # the claim refused what was not to be replaced
    store = capture_distributed(model, tok, items, out, **kw) if size > 1 else \
        capture_to_disk(model, tok, items, out, **kw)
    if store is None:  # a rank other than 0: rank 0 reports
        return
    size_mb = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file()) / 2**20
    typer.echo(f"wrote {len(store)} items, k={store.k}, {len(store.names)} hooks, {store.n_shards} shard(s), "
               f"{size_mb:.1f} MB to {store.path}")
    if max_new_tokens:
        first = store.manifest.get("first_index", 0)
        fmt = model.config.data_format
        right = sum(is_correct(pred, items[int(i) - first], fmt)
                    for tr in (store.shard(s, names=[]) for s in range(store.n_shards))
                    for i, pred in zip(tr.indices, tr.predictions(tok, fmt)))
        given = "" if model.config.stage_spec.markers or not store.k else f", after the first {store.k} gold steps"
        most = answer_length(fmt)
        up_to = f"the one token after {RBS_ANSWER}" if most == 1 else f"up to {max_new_tokens} tokens"
        typer.echo(f"answers (greedy, {up_to}{given}): {right}/{len(store)} correct")
