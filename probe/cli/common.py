"""The `probe` app and what its commands share: loading, input errors, option parsing."""

from __future__ import annotations

import functools
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import typer

from probe.artifacts import HF_CONFIG, PLOTLY_JS

if TYPE_CHECKING:
    from probe.atomic import Claim, Interrupted


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


def _fail(message: str, code: int = 2) -> None:
    _close_bars()
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def _close_bars() -> None:
    """End the progress bars a failed command left open, so that its error line starts a line of its own."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


# Every input error of the library (DataError, CheckpointError, TokenizerError, ConfigError, ...) is a ValueError.
InputError = ValueError


class _Command:
    """What one running command holds: its outputs' claims, released when it ends."""

    def __init__(self) -> None:
        self.stack = ExitStack()
        self.claims: list[Claim] = []


_running: Optional[_Command] = None


def one_line_errors(command):
    """The CLI's one handler, on every command: an input error of the library (a ValueError), a path the system
    refuses (an OSError: a missing directory, no permission, a full disk, a file-size limit) or an interruption
    (Ctrl-C, SIGTERM as `timeout`, Slurm and `kill` send, SIGHUP) ends the command with one `error:` line on
    stderr, never a traceback: exit code 2, or 128 + the signal's number. The line says what became of each output
    the command claimed (`_claim`): the atomic writers leave nothing half-written, so it is as it was or whole."""
    from probe.atomic import Interrupted, interruptible

    @functools.wraps(command)
    def run(*args, **kwargs):
        global _running
        outer, _running = _running, _Command()
        try:
            with interruptible():
                with _running.stack:
                    try:
                        return command(*args, **kwargs)
                    except Interrupted as e:
                        _fail(_interrupted(e, _running.claims), code=128 + e.signum)
                    except InputError as e:
                        _fail(str(e))
                    except OSError as e:
                        _fail(_os_error(e, _running.claims))
        except Interrupted as e:  # one that came while the claims were being released
            _fail(_interrupted(e, []), code=128 + e.signum)
        finally:
            _running = outer

    return run


def _interrupted(e: "Interrupted", claims: list["Claim"]) -> str:
    """One line for an interruption: the signal, and what became of each claimed output."""
    return "; ".join([f"interrupted ({e.name})", *(f"{c.option} {c.path}: {c.outcome()}" for c in claims)])


def _os_error(e: OSError, claims: list["Claim"]) -> str:
    """One line for an OSError: the output it concerns named by its option, with what became of it."""
    if not e.strerror:
        return str(e)
    mine = [c for c in claims if e.filename and c.covers(e.filename)] or (claims if not e.filename and
                                                                          len(claims) == 1 else [])
    if not mine:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    c = mine[0]
    what = e.strerror if not e.filename or Path(e.filename) == Path(c.path) else f"{e.filename}: {e.strerror}"
    return f"{c.option} {c.path}: {what}; {c.outcome()}"


def _claim(path: Optional[Path], option: str = "--out", *, overwrite: bool = False, directory: bool = False,
           markers: tuple[str, ...] = (), existing: bool = False,
           kept: Optional[Callable[[], str]] = None) -> Optional["Claim"]:
    """Claim an output for the running command (probe.atomic.claim), before any work: refused in one line when
    another run is writing it, when it exists and --overwrite was not given (or, with markers, holds something
    other than this command's output), or when its place cannot be written. Held until the command ends; None
    for no path."""
    from probe.atomic import claim

    if path is None:
        return None
    if _running is None:
        raise RuntimeError("_claim runs inside a command wrapped by one_line_errors")
    held = _running.stack.enter_context(claim(path, option=option, overwrite=overwrite, directory=directory,
                                              markers=markers, existing=existing, kept=kept))
    _running.claims.append(held)
    return held


def _release_claims() -> None:
    """Release the running command's claims now: for a command that leaves by os._exit, past its own cleanup."""
    if _running is not None:
        _running.stack.close()


OVERWRITE_OPTION = typer.Option(False, "--overwrite", help="Replace the output if it exists (the old one stays "
                                                           "whole until the new one is written).")


def _dtype(name: Optional[str], option: str = "--dtype"):
    from probe.model.placement import parse_dtype

    return parse_dtype(name, option)


def _device(name: str) -> str:
    from probe.model.placement import parse_device

    return parse_device(name, "--device")


def _default_ckpt(ckpt: Optional[Path]) -> Path:
    from probe.model.checkpoint import default_checkpoint

    return ckpt if ckpt is not None else default_checkpoint()


@dataclass(frozen=True)
class _Data:
    """The items a command runs a model over: how its one line names them (`_source`), the index of the first in
    its file, and whether a tokenizer that cannot write them may run anyway (--allow-lossy-tokenizer)."""

    items: Sequence
    source: str
    allow_lossy: bool = False
    first_index: int = 0


def _source(data: Optional[Path], n: Optional[int] = None) -> str:
    """How one line names a command's items: "--data FILE", or "--n N (generated items)"."""
    return f"--data {data}" if data is not None else f"--n {n} (generated items)"


def _load(ckpt: Optional[Path], base: Optional[Path], device: str, dtype: Optional[str], tokenizer: Optional[str],
          data: _Data, whose: str = "the tokenizer"):
    """The model and tokenizer of --ckpt (default: the shipped one), with --base and --tokenizer for an official
    state-dict file (probe.model.checkpoint.load_checkpoint; its CheckpointError is the command's error, in one
    line or, for a state dict that does not fit, at most three), checked to write the data before any forward
    (probe.data.render.check_tokenizer_writes: refused in one line, or with --allow-lossy-tokenizer a warning);
    `whose` names the tokenizer in that line ("the tokenizer of --control DIR"). What the loader did to read
    another tool's file (a wrapper prefix dropped) is said once on stderr, as a `note:` line."""
    from probe.data.render import check_tokenizer_writes
    from probe.model.checkpoint import load_checkpoint

    notes: list[str] = []
    model, tok = load_checkpoint(_default_ckpt(ckpt), base=base, device=_device(device), dtype=_dtype(dtype),
                                 tokenizer=tokenizer, notes=notes)
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    warning = check_tokenizer_writes(data.items, tok, model.config.data_format, source=data.source,
                                     allow_lossy=data.allow_lossy, whose=whose, first_index=data.first_index)
    if warning:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    return model, tok


BASE_OPTION = typer.Option(None, "--base", help="For an official state-dict file: its base model directory "
                                                f"({HF_CONFIG} and tokenizer), or a config JSON file (then give "
                                                "--tokenizer).")
TOKENIZER_OPTION = typer.Option(None, "--tokenizer", help="'rbs' for RbS's built-in vocabulary, or a tokenizer "
                                                          "directory; for an official state-dict file with --base.")
CONTROL_BASE_OPTION = typer.Option(None, "--control-base", help="The control's --base.")
CONTROL_TOKENIZER_OPTION = typer.Option(None, "--control-tokenizer", help="The control's --tokenizer.")
DTYPE_OPTION = typer.Option(None, "--dtype", help="Model dtype: float32 (the checkpoint's, default), bfloat16 or "
                                                  "float16 (on the GPU; README, 'Precision', states the tolerance).")
DEVICE_OPTION = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
CKPT_OPTION = typer.Option(None, "--ckpt", help="Our checkpoint directory, or an official state-dict file "
                                                "(default: the shipped checkpoints/prosqa-coconut).")
ALLOW_LOSSY_OPTION = typer.Option(False, "--allow-lossy-tokenizer", help="Run even where the tokenizer cannot write "
                                  "the data (it loses or changes a word: an unknown token, lowercasing, a stripped "
                                  "accent), which is refused before any work: for those who know what they do.")
DATA_OPTION = typer.Option(..., "--data", help="ProsQA JSON file: the official format, or RbS's (items with "
                                               "neighbor_k; told by that field).")


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
    source = _source(data, len(items)) + (f" --limit {limit}" if data is not None and limit is not None else "")
    held = f"{len(items)} item{'' if len(items) == 1 else 's'}" if items else "no items"
    _fail(f"{source}: {held}; {why}")



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
    script, js = path.parent / PLOTLY_JS, get_plotlyjs()
    if not script.is_file() or script.stat().st_size != len(js.encode()) or script.read_text() != js:
        atomic_write_text(script, js)
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs="directory")


def note_duplicates(merged: int) -> None:
    """Say (stderr) how many items a fit merged with an earlier copy of themselves (prosqa.Duplicates.merged);
    nothing when none."""
    if merged:
        typer.secho(f"note: {merged} item(s) are copies of an earlier item (same graph, question and options: "
                    f"prosqa.item_key); every copy was kept on its original's side of each split "
                    f"(duplicates_merged {merged})", fg=typer.colors.YELLOW, err=True)
