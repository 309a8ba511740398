"""`probe eval`: accuracy by the official rule (or RbS's), at each number of thoughts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import FIGURE_SUFFIX
from probe.cli.common import (
    ALLOW_LOSSY_OPTION, app, BASE_OPTION, _claim, CKPT_OPTION, _Data, DATA_OPTION, DEVICE_OPTION, DTYPE_OPTION, _fail,
    _int_option, _load, _need_items, one_line_errors, OVERWRITE_OPTION, _source, TOKENIZER_OPTION, write_html,
)


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
    from probe.model.evaluate import GOLD, evaluate

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
        from probe.readouts.probes import SavedProbe, halting_eval

        result = halting_eval(model, tok, items, SavedProbe.load(halt, model, "halt"),
                              threshold=threshold, batch_size=batch_size)
    else:
        res = evaluate(model, tok, items, k=k if k in (None, GOLD) else _int_option("--k", k), batch_size=batch_size)
    if halt is not None:
        if json_out:
            from probe.viz.figures import halting_figure

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
