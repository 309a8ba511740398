"""`probe findings`: the findings table from analyze and intervene reports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probe.artifacts import REPORT
from probe.cli.common import (
    app, _claim, InputError, one_line_errors, OVERWRITE_OPTION,
)


def _report(path: Optional[Path], option: str, command: str) -> Optional[dict]:
    """A command's report.json (the directory it wrote, or the file), checked to be that command's and to hold what
    the findings table reads (probe.analyses.findings.check_report)."""
    from probe.analyses.findings import check_report
    from probe.formats import read_json

    if path is None:
        return None
    file = path / REPORT if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{option} {path}: no {REPORT} there")
    try:
        return check_report(read_json(file, what=REPORT), command, str(file))
    except ValueError as e:
        raise InputError(f"{option} {e}") from None


@app.command("findings")
@one_line_errors
def findings_cmd(
    analysis: Optional[list[Path]] = typer.Option(None, "--analysis", help="The directory `probe analyze` wrote "
                                                                           "(repeat it: their models side by side)."),
    interventions: Optional[list[Path]] = typer.Option(None, "--interventions",
                                                       help="The directory `probe intervene` wrote (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table to this markdown file."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """The findings table: every model of the two reports side by side, the papers' figures beside them."""
    from probe.atomic import atomic_write_text
    from probe.analyses.findings import findings_markdown

    _claim(out, overwrite=overwrite)
    table = findings_markdown([_report(p, "--analysis", "analyze") for p in analysis or []],
                              [_report(p, "--interventions", "intervene") for p in interventions or []])
    typer.echo(table)
    if out is not None:
        atomic_write_text(out, table)
        typer.echo(f"wrote {out}")
