"""How long each interaction with the explorer takes on this machine (streamlit.testing's AppTest runs the
script as a browser session would; the times are the script runs, without the browser's drawing).

    python benchmarks/app_interactions.py [--threads 2]

Prints each interaction's seconds, cold (the first time: model loading or computing) and warm (the
same again: cached), and its ratio to the 2-second budget of issue 8.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

APP = str(Path(__file__).resolve().parents[1] / "apps" / "explorer.py")
BUDGET = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch
    from streamlit.testing.v1 import AppTest

    torch.set_num_threads(args.threads)
    at = AppTest.from_file(APP, default_timeout=600)

    def tab(name):
        return lambda: (at.session_state.__setitem__("tab", name), at.run())

    steps = [
        ("open the app (imports, default model, item 0)", at.run),
        ("move the thought slider to 3", lambda: at.slider(key="k").set_value(3).run()),
        ("colour by superposition coefficient",
         lambda: at.radio(key="colour").set_value("superposition coefficient").run()),
        ("colour by lens probability", lambda: at.radio(key="colour").set_value("lens probability").run()),
        ("switch to the tuned lens", lambda: at.radio(key="lens").set_value("tuned").run()),
        ("another item (index 5)", lambda: at.number_input(key="index").set_value(5).run()),
        ("lens tab", tab("lens")),
        ("superposition tab", tab("superposition")),
        ("superposition: attention view", lambda: at.radio(key="sp_view").set_value("attention").run()),
        ("superposition: decomposition view", lambda: at.radio(key="sp_view").set_value("decomposition").run()),
        ("probes & SAE tab", tab("probes & SAE")),
        ("interventions tab (mean of thought 1)", tab("interventions")),
        ("ablate thoughts 1-3", lambda: at.multiselect(key="iv_steps").set_value([1, 2, 3]).run()),
        ("steer", lambda: at.radio(key="iv_action").set_value("steer").run()),
        ("steer: alpha 4", lambda: at.slider(key="iv_alpha").set_value(4.0).run()),
        ("edit at layer 1", lambda: at.selectbox(key="iv_site").set_value("layer 1 residual").run()),
        ("data set tab", tab("data set")),
        ("data set: measure 50 items beside the pause control", lambda: at.button(key="ds_run").click().run()),
        ("data set: another figure", lambda: at.selectbox(key="ds_figure").set_value("parallelism").run()),
        ("another checkpoint (prosqa-coconut-mixed), graph tab",
         lambda: (at.selectbox(key="ckpt").set_value("prosqa-coconut-mixed"), tab("graph")())),
    ]
    rows = []
    for name, act in steps:
        t = time.perf_counter()
        act()
        cold = time.perf_counter() - t
        if at.exception:
            raise SystemExit(f"{name}: {at.exception[0].value}")
        t = time.perf_counter()
        at.run()  # the same state again: what a repeated interaction costs once cached
        warm = time.perf_counter() - t
        rows.append((name, cold, warm))
    width = max(len(r[0]) for r in rows)
    print(f"{'interaction':<{width}}  cold s  warm s  cold/{BUDGET:g}s  warm/{BUDGET:g}s")
    for name, cold, warm in rows:
        print(f"{name:<{width}}  {cold:6.2f}  {warm:6.2f}  {cold / BUDGET:9.2f}  {warm / BUDGET:9.2f}")


if __name__ == "__main__":
    main()
