"""Floor 8, cli: `probe`, the command line. Each sub-command is a thin layer over a library function; it may
import every floor, and nothing of probe imports it.

common.py holds the app and what the commands share; each other module is named for the command it registers
on it (data: `probe data generate|stats`; probes: `probe probes fit|halt`; sae: `probe sae train`).
"""

from probe.cli import (  # noqa: F401, I001  (each module registers its commands, in this order)
    train, eval, plant, release, decode, capture, analyze, tuned_lens, rbs_notebook, intervene, findings, data, probes,
    sae,
)
from probe.cli.common import _num, app

__all__ = ["app", "_num"]
