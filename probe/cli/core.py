"""`probe data`, `probe train`, `probe eval`, `probe release`: data, training and evaluation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import COCONUT_CONFIG, FIGURE_SUFFIX
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, _claim, CKPT_OPTION, _Data, DATA_OPTION, data_app, _device, DEVICE_OPTION,
    _dtype, DTYPE_OPTION, _fail, _float_option, InputError, _int_option, _items, _load, _need_items, one_line_errors,
    OVERWRITE_OPTION, _release_claims, _source, TOKENIZER_OPTION, write_html,
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


@app.command()
@one_line_errors
def train(
    config: Path = typer.Option(..., "--config", help="A training YAML file."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-clock budget: the epochs are "
                                                "sized so that the curriculum, its schedule and a final evaluated "
                                                "checkpoint fit (overrides the config's max_minutes)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write the run here (overrides out_dir)."),
    set_: list[str] = typer.Option([], "--set", help="Override one config option, as OPTION=VALUE with a YAML value "
                                   "(repeatable): --set lr=3e-4 --set model.n_layer=1."),
    allow_lossy: bool = ALLOW_LOSSY_OPTION,  # sets the config's allow_lossy_tokenizer
) -> None:
    """Train a Coconut model (or a baseline) with the multi-stage curriculum.

    Under torchrun (`torchrun --nproc_per_node N -m probe.cli train --config FILE`) the ranks train one model
    with DistributedDataParallel (each takes its rows of every batch; rank 0 writes and reports).
    """
    from probe.analyze import search_summary
    from probe.distributed import world
    from probe.train import train as run
    from probe.train_config import TrainConfig, parse_overrides

    overrides = parse_overrides(set_)
    overrides.update({k: v for k, v in {"max_minutes": max_minutes, "out_dir": out_dir}.items() if v is not None})
    if allow_lossy:
        overrides["allow_lossy_tokenizer"] = True
    cfg = TrainConfig.from_yaml(config, **{k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})
    rank, size, _ = world()
    if rank == 0:  # under torchrun, rank 0 writes the run
        _claim_run(cfg, "--out-dir" if out_dir is not None else f"out_dir ({config})", resume)
    try:
        result = run(cfg, resume=resume, device=_device(device), on_record=lambda r: typer.echo(json.dumps(r)),
                     search=search_summary)
    except Exception as e:
        if size == 1 or isinstance(e, (InputError, OSError)):
            raise
        _rank_failed(cfg, rank, size, e)
    if rank == 0:  # under torchrun, rank 0 speaks for the run
        typer.echo(f"last checkpoint: {result.last_checkpoint}")
    if size > 1:
        # Everything is written and the process group is gone; leave without the interpreter's teardown, in
        # which gloo's C++ threads have aborted a finished rank ("terminate called without an active exception").
        _release_claims()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _claim_run(cfg, option: str, resume: bool) -> None:
    """Hold the run directory for this run (another run training into it is refused), and refuse, before any
    work, a directory that holds checkpoints already when this is no --resume (or nothing to resume). After a
    failure or an interruption the line names its last complete checkpoint, from which --resume continues."""
    from probe.artifacts import RUN_CHECKPOINTS
    from probe.run_state import latest_checkpoint

    run_dir = cfg.run_dir

    def kept() -> str:
        last = latest_checkpoint(run_dir)
        return (f"its complete checkpoints are kept (last: {last.name}; --resume continues from it)" if last
                else "it holds no complete checkpoint")

    _claim(run_dir, option, directory=True, existing=True, kept=kept)
    last = latest_checkpoint(run_dir)
    if resume and last is None:
        _fail(f"{option} {run_dir}: nothing to resume (no complete {RUN_CHECKPOINTS} checkpoint)")
    if not resume and any(run_dir.glob(RUN_CHECKPOINTS)):
        _fail(f"{option} {run_dir}: holds checkpoints already; pass --resume to continue it, or choose another "
              f"--out-dir")


def _rank_failed(cfg, rank: int, size: int, error: Exception) -> None:
    """One line for a rank that fails under torchrun (torchrun then stops the others), its traceback in a file of
    the run directory. A rank that fails only because a peer went away (its collective broke) stays silent, so
    that the run shows one error: the failing rank's."""
    import traceback

    import torch.distributed as dist

    from probe.artifacts import RANK_ERROR
    from probe.atomic import atomic_write_text
    from probe.run_state import latest_checkpoint

    log = cfg.run_dir / RANK_ERROR.format(rank=rank)
    atomic_write_text(log, "".join(traceback.format_exception(error)))
    peer = isinstance(error, dist.DistError) or any(s in str(error) for s in PEER_GONE)
    if not peer:
        last = latest_checkpoint(cfg.run_dir)
        typer.secho(f"error: rank {rank} of {size}: {type(error).__name__}: {error}; the run stops (traceback: {log}; "
                    f"last complete checkpoint: {last or 'none'})", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


# what gloo and NCCL say when a collective breaks because another rank is gone
PEER_GONE = ("closed by peer", "remote worker", "Connection reset by peer", "communicator was aborted")


@app.command("eval")
@one_line_errors
def eval_cmd(
    ckpt: Optional[Path] = CKPT_OPTION,
    data: Path = DATA_OPTION,
    base: Optional[Path] = BASE_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    k: Optional[str] = typer.Option(None, "--k", help="Thoughts to force: a number, or 'gold' for each item's number "
                                                      "of steps (default: the checkpoint's)."),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write each item's prompt and prediction here "
                                                                 "(with --halt: the halting result, and its figure "
                                                                 "beside it as .html)."),
    halt: Optional[Path] = typer.Option(None, "--halt", help="A halting probe (probe probes halt): stop each "
                                                             "item's thoughts when it fires."),
    threshold: float = typer.Option(0.5, "--threshold", help="With --halt: stop when P(right answer) reaches this."),
    overwrite: bool = OVERWRITE_OPTION,
    allow_lossy: bool = ALLOW_LOSSY_OPTION,
) -> None:
    """Accuracy by the official rule (greedy, at most 128 new tokens, answer after the last '#'; in RbS's layout the
    token after "[A]"). --json records each item's prompt and prediction."""
    from probe.atomic import atomic_write_text
    from probe.data.prosqa import load_items
    from probe.evaluate import GOLD, evaluate

    if halt is not None and json_out is not None and json_out.suffix == FIGURE_SUFFIX:
        _fail(f"--json {json_out}: give a .json name (with --halt, its figure is written beside it as {FIGURE_SUFFIX})")
    _claim(json_out, "--json", overwrite=overwrite)
    if halt is not None and json_out is not None:
        _claim(json_out.with_suffix(FIGURE_SUFFIX), "--json (its figure)", overwrite=overwrite)
    items = load_items(data, limit=limit)
    _need_items(items, 1, data, "there is nothing to evaluate", limit)
    model, tok = _load(ckpt, base, device, dtype, tokenizer, _Data(items, _source(data), allow_lossy))
    if model.config.data_format == "rbs":
        _rbs_options_note(items)
    if halt is not None:
        from probe.probes import SavedProbe, halting_eval

        result = halting_eval(model, tok, items, SavedProbe.load(halt, model, "halt"),
                              threshold=threshold, batch_size=batch_size)
    else:
        res = evaluate(model, tok, items, k=k if k in (None, GOLD) else _int_option("--k", k), batch_size=batch_size)
    if halt is not None:
        if json_out:
            from probe.viz import halting_figure

            atomic_write_text(json_out, json.dumps(result.as_dict(), indent=1))
            write_html(halting_figure(result.as_dict()), json_out.with_suffix(FIGURE_SUFFIX))
        fixed = ", ".join(f"k={k}: {a:.3f}" for k, a in result.fixed.items())
        typer.echo(f"halting probe: accuracy {result.accuracy:.4f} with {result.mean_thoughts:.2f} thoughts on average "
                   f"(fixed {fixed})")
        return
    unknown = [r for r in res.items if r.unknown_names]
    if unknown:
        names = sorted({n for r in unknown for n in r.unknown_names})
        typer.secho(f"warning: {len(unknown)} item(s) name nodes the tokenizer cannot write ({', '.join(names[:8])}"
                    f"{', ...' if len(names) > 8 else ''}): they read as its unknown token, and an answer holding that token is "
                    "never scored correct",
                    fg=typer.colors.YELLOW, err=True)
    if json_out:
        atomic_write_text(json_out, json.dumps(res.to_json(), indent=1))
    typer.echo(
        f"accuracy {res.accuracy:.4f} ({sum(r.correct for r in res.items)}/{res.n}), "
        f"mean generated tokens {res.mean_generated_tokens:.1f}"
    )


def _rbs_options_note(items) -> None:
    """Say how RbS's layout ordered each item's two options: drawn per item from a fixed seed (RbS's own evaluation
    draws them anew each run), with how many items list the target first."""
    from probe.data.render import RBS_OPTION_SEED, rbs_target_first

    first = sum(rbs_target_first(it) for it in items)
    typer.echo(f"options' order: drawn per item from seed probe.data.render.RBS_OPTION_SEED = {RBS_OPTION_SEED}; "
               f"the target is listed first in {first}/{len(items)} items")


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
    from probe.card import planted_card
    from probe.known_answers import instrument_readings
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
    from probe.release import release as run

    _claim(out, overwrite=overwrite, directory=True, markers=(COCONUT_CONFIG,))
    rel = run(ckpt, out, data, config, name=name, summary=summary, device=_device(device),
              store_dtype=_dtype(store_dtype, "--store-dtype"), allow_lossy_tokenizer=allow_lossy)
    ev = rel.evaluation
    accs = ", ".join(f"k={k}: {a:.3f}" for k, a in ev.accuracy_by_k.items())
    gold = f", gold depth: {ev.gold_accuracy:.3f}" if ev.gold_accuracy is not None else ""
    typer.echo(f"wrote {rel.path}: accuracy {ev.accuracy:.4f} at the default k={ev.default_k} ({accs}{gold})")
