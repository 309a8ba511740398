"""The `probe` app and what its commands share: loading, input errors, option parsing."""

from __future__ import annotations

import functools
import math
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


# Every input error of the library (DataError, CheckpointError, TokenizerError, ConfigError, ...) is a ValueError.
InputError = ValueError


def one_line_errors(command):
    """The CLI's one handler for bad input, on every command: an input error of the library (a ValueError) or a
    path the system refuses (an OSError: a missing directory, no permission, a file where a directory must be)
    ends the command with one `error:` line on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))

    return run


def _dtype(name: Optional[str], option: str = "--dtype"):
    from probe.model.placement import parse_dtype

    return parse_dtype(name, option)


def _device(name: str) -> str:
    from probe.model.placement import parse_device

    return parse_device(name, "--device")


def _default_ckpt(ckpt: Optional[Path]) -> Path:
    from probe.model.checkpoint import default_checkpoint

    return ckpt if ckpt is not None else default_checkpoint()


def _load(ckpt: Optional[Path], base: Optional[Path], device: str, dtype: Optional[str] = None):
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(_default_ckpt(ckpt), base=base, device=_device(device), dtype=_dtype(dtype))


BASE_OPTION = typer.Option(None, "--base", help="Base model directory, for official checkpoints.")
DTYPE_OPTION = typer.Option(None, "--dtype", help="Model dtype: float32 (the checkpoint's, default), bfloat16 or "
                                                  "float16 (on the GPU; README, 'Precision', states the tolerance).")
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
CKPT_OPTION = typer.Option(None, "--ckpt", help="Our checkpoint directory, or an official state-dict file "
                                                "(default: the shipped checkpoints/prosqa-coconut).")
DATA_OPTION = typer.Option(..., "--data", help="ProsQA JSON file (official format).")


def _items(data: Optional[Path], n: int, seed: int, limit: Optional[int] = None):
    """Items from a file, or n generated ones (seed) when no file is given."""
    from probe.data.generate import generate_items
    from probe.data.prosqa import load_items

    return load_items(data, limit=limit) if data else generate_items(n, seed=seed)


def _need_items(items, need: int, data: Optional[Path], why: str, limit: Optional[int] = None) -> None:
    """Refuse, before a model loads, fewer items than a command needs: one line naming the data (the file, with its
    --limit, or the generated items' --n), how many items it holds and why `need` are needed."""
    if len(items) >= need:
        return
    source = f"--n {len(items)} (generated items)" if data is None else \
        f"--data {data}" + (f" --limit {limit}" if limit is not None else "")
    held = f"{len(items)} item{'' if len(items) == 1 else 's'}" if items else "no items"
    _fail(f"{source}: {held}; {why}")


def _new_out(out: Path) -> None:
    if out.exists():
        _fail(f"--out {out}: already exists; choose a new directory")
    _writable_place("--out", out)


def _writable_place(option: str, path: Optional[Path]) -> None:
    """Refuse, before any work, an output path that cannot be written: a directory given for a file, or a
    parent that is a file."""
    from probe.atomic import check_place

    if path is not None:
        try:
            check_place(path, directory=option == "--out")
        except OSError as e:
            _fail(f"{option} {e.filename}: {e.strerror}")


def _item(data: Path, index: int):
    from probe.data.prosqa import item_at, load_items

    return item_at(load_items(data), index, str(data), "--index")


def _layers(spec: Optional[str]) -> Optional[list[int]]:
    from probe.model.hook_names import parse_layers

    return parse_layers(spec, "--layers")


def _num(v: float | None) -> str:
    """A score for people: three decimals, or '-' where it is undefined (None or nan)."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _int_option(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        _fail(f"{option}: expected an integer, got {text.strip()!r}")


def _float_option(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        _fail(f"{option}: expected a number, got {text.strip()!r}")


def write_html(fig, path: Path) -> None:
    """Write a plotly figure as an HTML page that loads plotly.js from plotly.min.js in its folder (4.8 MB, once per
    folder, instead of embedded in every page). The script file is (re)written when it is missing or is not this
    plotly's; both are renamed into place."""
    from plotly.offline import get_plotlyjs

    from probe.atomic import atomic_path, atomic_write_text

    path = Path(path)
    script, js = path.parent / "plotly.min.js", get_plotlyjs()
    if not script.is_file() or script.stat().st_size != len(js.encode()) or script.read_text() != js:
        atomic_write_text(script, js)
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs="directory")
