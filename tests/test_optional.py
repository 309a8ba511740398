"""The core never needs the optional TransformerLens extra: importing every other module, and the CLI, leaves it
unimported."""

from __future__ import annotations

import subprocess
import sys


def test_the_core_does_not_import_transformer_lens():
    code = (
        "import importlib, pkgutil, sys\n"
        "import probe\n"
        "names = [m.name for m in pkgutil.walk_packages(probe.__path__, 'probe.')\n"
        "         if m.name != 'probe.capture.tl' and not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "from probe.cli import app\n"
        "assert len(names) > 30, names\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformer_lens'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
