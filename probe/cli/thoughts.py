"""`probe decode`, `probe capture`, `probe tuned-lens`, `probe analyze`: reading the thoughts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import FIGURE_SUFFIX, MODEL_CARD, REPORT, SUMMARY, TRACE_MANIFEST, TUNED_LENS
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, CKPT_OPTION, _claim, CONTROL_BASE_OPTION, CONTROL_TOKENIZER_OPTION, _Data,
    DATA_OPTION, _default_ckpt, DEVICE_OPTION, DTYPE_OPTION, _dtype, _fail, _item, _items, _layers, _load, _need_items,
    _num, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION, write_html,
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
    from probe.decode import decode_item
    from probe.lens import LENSES, open_lens

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
    from probe.capture import capture_to_disk
    from probe.model.architecture import architecture
    from probe.model.hook_names import select_hooks
    from probe.data.prosqa import load_items
    from probe.distributed import capture_distributed, rank_device, world
    from probe.data.rbs import RBS_ANSWER
    from probe.data.render import answer_length
    from probe.evaluate import is_correct

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
    from probe.analyze import analyze
    from probe.atomic import atomic_directory, atomic_write_text
    from probe.card import markdown_summary, replace_card_section
    from probe.data.prosqa import load_items
    from probe.viz import FIGURES

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
    from probe.lens import fit_tuned_lens

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
    embeddings (probe/rbs_notebook.py says how they differ from `probe analyze`'s)."""
    from probe.atomic import atomic_write_text
    from probe.data.prosqa import load_items
    from probe.rbs_notebook import notebook_measures

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

    from probe.rbs_notebook import NOTEBOOK_GROUPS

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
