"""`probe train`: the curriculum, on one process or under torchrun."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, _claim, _device, _fail, InputError, one_line_errors, _release_claims,
)


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
    from probe.analyses.analyze import search_summary
    from probe.model.ranks import world
    from probe.train.loop import train as run
    from probe.train.config import TrainConfig, parse_overrides

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
    from probe.train.state import latest_checkpoint

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
    from probe.train.state import latest_checkpoint

    log = cfg.run_dir / RANK_ERROR.format(rank=rank)
    atomic_write_text(log, "".join(traceback.format_exception(error)))
    peer = isinstance(error, dist.DistError) or any(s in str(error) for s in PEER_GONE)
    if not peer:
        last = latest_checkpoint(cfg.run_dir)
        typer.secho(f"error: rank {rank} of {size}: {type(error).__name__}: {error}; the run stops (traceback: {log}; "
                    f"last complete checkpoint: {last or 'none'})", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


PEER_GONE = ("closed by peer", "remote worker", "Connection reset by peer", "communicator was aborted")
