"""A torchrun entry for tests/test_train_distributed.py: `probe` with one fault injected, chosen by FAULT.

FAULT=step: rank 1 raises in its second optimizer step. FAULT=save: rank 0 receives SIGTERM (as torchrun
sends it to the ranks of a failed run) while it writes its first checkpoint.
"""

import os
import signal

import probe.train.state as run_state
import probe.train.loop as train_mod
from probe.cli import app

RANK = int(os.environ.get("RANK", 0))
FAULT = os.environ.get("FAULT", "")

step, write = train_mod._optimizer_step, run_state.write_checkpoint


def failing_step(run, opt, micro):
    if FAULT == "step" and RANK == 1 and run.state.step == 1:
        raise RuntimeError("injected failure on rank 1")
    return step(run, opt, micro)


def stopped_write(*args, **kwargs):
    write(*args, **kwargs)  # the model is written; the optimizer and the state are not yet
    if FAULT == "save" and RANK == 0:
        os.kill(os.getpid(), signal.SIGTERM)


train_mod._optimizer_step = failing_step
run_state.write_checkpoint = stopped_write
app()
