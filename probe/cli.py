"""`probe`: the command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-file bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


app = typer.Typer(help="Interpretability toolkit for Coconut (continuous thought) models.", no_args_is_help=True)
data_app = typer.Typer(help="ProsQA data: generate and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main() -> None:
    """Interpretability toolkit for Coconut (continuous thought) models."""
    _quiet_transformers()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# Every input error of the library (DataError, CheckpointError, TokenizerError, ConfigError)
# is a ValueError; the CLI reports it as one line instead of a traceback.
InputError = ValueError


def _dtype(name: Optional[str]):
    import torch

    if name is None:
        return None
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        _fail(f"--dtype: expected one of {', '.join(table)}, got {name!r}")
    return table[name]


def _device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {name}: no CUDA device is available")
    return name


@data_app.command("generate")
def data_generate(
    n: int = typer.Option(..., "--n", min=1, help="Number of items."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(..., "--out", help="Output JSON file (official ProsQA format)."),
) -> None:
    """Generate ProsQA items with the paper's construction."""
    from probe.data.generate import dataset_stats, generate_items
    from probe.data.prosqa import save_items

    items = generate_items(n, seed=seed, progress=True)
    save_items(items, out)
    s = dataset_stats(items)
    typer.echo(f"wrote {n} items to {out}: mean nodes {s.mean_nodes:.2f}, edges {s.mean_edges:.2f}, steps {s.mean_steps:.2f}")


@data_app.command("stats")
def data_stats(path: Path = typer.Argument(..., help="A ProsQA JSON file.")) -> None:
    """Validate a ProsQA file and print its statistics."""
    from probe.data.generate import dataset_stats
    from probe.data.prosqa import load_items

    try:
        items = load_items(path)
    except InputError as e:
        _fail(str(e))
    s = dataset_stats(items)
    typer.echo(json.dumps({"n": len(items), **{k: v for k, v in vars(s).items()}}, indent=1, default=str))


@app.command()
def train(
    config: Path = typer.Option(..., "--config", help="A training YAML file."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Train a Coconut model (or a baseline) with the multi-stage curriculum."""
    from probe.train import TrainConfig, train as run

    try:
        cfg = TrainConfig.from_yaml(config)
        result = run(cfg, resume=resume, device=_device(device), on_epoch=lambda r: typer.echo(json.dumps(r)))
    except InputError as e:
        _fail(str(e))
    typer.echo(f"last checkpoint: {result.last_checkpoint}")


def _default_ckpt(ckpt: Optional[Path]) -> Path:
    from probe.model.checkpoint import default_checkpoint

    return ckpt if ckpt is not None else default_checkpoint()


CKPT_HELP = "Our checkpoint directory, or an official state-dict file (default: the shipped checkpoints/prosqa-coconut)."


@app.command("eval")
def eval_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-item predictions here."),
) -> None:
    """Accuracy by the official rule (greedy, at most 128 new tokens, answer after the last '#')."""
    from probe.data.prosqa import atomic_write_text, load_items
    from probe.evaluate import evaluate
    from probe.model.checkpoint import load_checkpoint

    try:
        items = load_items(data, limit=limit)
        model, tok = load_checkpoint(_default_ckpt(ckpt), base=base, device=_device(device), dtype=_dtype(dtype))
        res = evaluate(model, tok, items, k=k, batch_size=batch_size)
    except InputError as e:
        _fail(str(e))
    if json_out:
        atomic_write_text(json_out, json.dumps(res.to_json(), indent=1))
    typer.echo(
        f"accuracy {res.accuracy:.4f} ({sum(r.correct for r in res.items)}/{res.n}), "
        f"mean generated tokens {res.mean_generated_tokens:.1f}"
    )


@app.command()
def release(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint written by `probe train` (epoch-XXX)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the released checkpoint to."),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file to measure accuracy on (the validation split)."),
    config: list[Path] = typer.Option(..., "--config", help="The training config of each phase, oldest first."),
    name: Optional[str] = typer.Option(None, "--name", help="Title of the model card (default: the --out name)."),
    summary: str = typer.Option("", "--summary", help="A paragraph for the top of the model card."),
) -> None:
    """Evaluate a trained checkpoint at every forced k; write it without optimizer state, with its model card."""
    from probe.release import release as run

    try:
        rel = run(ckpt, out, data, config, name=name, summary=summary)
    except InputError as e:
        _fail(str(e))
    ev = rel.evaluation
    accs = ", ".join(f"k={k}: {a:.3f}" for k, a in ev.accuracy_by_k.items())
    typer.echo(f"wrote {rel.path}: accuracy {ev.accuracy:.4f} at the default k={ev.default_k} ({accs})")


if __name__ == "__main__":
    app()
