"""Peak memory of the explorer's first load, beside loading the default model alone, each in a fresh process.

    python benchmarks/app_memory.py

Three processes side by side (one thread each; their peaks do not depend on each other):
the floor (imports of torch, transformers and probe, and the default checkpoint loaded), the app's
first load (streamlit.testing's AppTest runs apps/explorer.py as a browser session would: the default
model, item 0, the graph tab), and the app after one visit to every tab. Prints each peak resident
set and what the app adds to the floor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, resource, sys
import torch
mode, after = sys.argv[1], {}
if mode == "floor":
    import streamlit, plotly, probe.capture.trace, probe.readouts.lens, probe.analyses.frontier  # noqa: F401  (what the app imports)
    from probe.model.checkpoint import load_checkpoint
    load_checkpoint("checkpoints/prosqa-coconut")
else:
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file("apps/explorer.py", default_timeout=600)
    at.run()
    if mode == "every tab":
        for tab in ("lens", "superposition", "probes & SAE", "interventions", "data set", "graph"):
            at.session_state["tab"] = tab
            at.run()
            after[tab] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if at.exception:
        raise SystemExit(str(at.exception[0].value))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "after": after}))
"""

MODES = ("floor", "first load", "every tab")


def main() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RUN, m], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for m in MODES]
    peak, after = {}, {}
    for m, p in zip(MODES, procs):
        out, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"{m}: failed\n{err[-2000:]}")
        res = json.loads(out.strip().splitlines()[-1])
        peak[m], after = res["peak_mb"], after or res["after"]
    floor = peak["floor"]
    print(f"{'floor (imports + the default model)':<40} {floor:7.1f} MB")
    for m in MODES[1:]:
        print(f"{'app, ' + m:<40} {peak[m]:7.1f} MB  (+{peak[m] - floor:6.1f} MB, {peak[m] / floor:.2f}x the floor)")
    print("peak after each tab's first visit: " + ", ".join(f"{t} {mb:.0f} MB" for t, mb in after.items()))


if __name__ == "__main__":
    main()
