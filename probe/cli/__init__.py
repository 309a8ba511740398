"""`probe`: the command line. Each sub-command is a thin layer over a library function.

common.py holds the app and what the commands share; each other module registers its commands on it.
"""

from probe.cli import core, thoughts, intervene, probes  # noqa: F401, I001  (registers the commands, in this order)
from probe.cli.common import _num, app

__all__ = ["app", "_num"]
