"""A training run's state on disk: one directory holds everything a resume needs, written atomically.

A run checkpoint is our checkpoint format (loadable by every command) plus `optimizer.safetensors`,
`optimizer.json` and `trainer_state.json` (a `RunState`). It is written into a temporary
directory and renamed into place, so a run killed mid-save leaves the previous checkpoint whole.
Names say where the run stood: `epoch-003` after three whole epochs, `epoch-003-step-0000420`
inside the fourth, at optimizer step 420; they sort in training order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from probe.artifacts import (OPTIMIZER_GROUPS, OPTIMIZER_WEIGHTS, RUN_CHECKPOINT, RUN_CHECKPOINT_STEP,
                             RUN_CHECKPOINTS, TRAINER_STATE)
from probe.atomic import atomic_directory, remove_directory
from probe.data.stream import batches_per_epoch
from probe.formats import read_field, read_json_object
from probe.model.checkpoint import CheckpointError, write_checkpoint



@dataclass(frozen=True)
class Plan:
    """How long a run is: items per epoch and the optimizer steps they make.

    epoch_items is the config's, or what a wall-clock budget fitted (train.fit_plan).
    """

    epoch_items: int
    batch_size: int
    gradient_accumulation_steps: int
    num_epochs: int
    start_epoch: int

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.epoch_items, self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.batches_per_epoch // self.gradient_accumulation_steps)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * (self.num_epochs - self.start_epoch)


@dataclass
class RunState:
    """Where a run stands: the next micro-batch (epoch, batch), the optimizer steps done, the record so far.

    pending holds the running sums of the record in progress (loss and gradient norm as float64 sums,
    steps, batches, sequences, tokens, seconds), so that a resumed run writes the same records as an
    uninterrupted one.
    """

    config: dict[str, Any]
    plan: Plan
    epoch: int
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    init: dict[str, Any] | None = None
    pending: dict[str, float] = field(default_factory=lambda: RunState.empty_pending())
    seconds: float = 0.0  # training seconds of the closed records

    @staticmethod
    def empty_pending() -> dict[str, float]:
        return {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "batches": 0, "sequences": 0, "tokens": 0, "seconds": 0.0}

    @property
    def name(self) -> str:
        """The checkpoint directory name of this position."""
        if self.batch == 0:
            return RUN_CHECKPOINT.format(epoch=self.epoch)
        return RUN_CHECKPOINT_STEP.format(epoch=self.epoch, step=self.step)

    def save(self, run_dir: Path, model, tokenizer, optimizer: torch.optim.Optimizer, metadata: dict[str, Any],
             weights: dict[str, torch.Tensor] | None = None, optimizer_state: dict[str, Any] | None = None) -> Path:
        """Write model, tokenizer, optimizer and this state as one directory under run_dir, atomically.

        weights (the base's, by name) and optimizer_state (a state_dict by parameter index) replace what the
        model and optimizer hold: a sharded (FSDP) run passes the whole states gathered on rank 0.
        """
        path = run_dir / self.name
        with atomic_directory(path, replace=True) as tmp:
            write_checkpoint(model, tokenizer, tmp, metadata=metadata, state_dict=weights)
            sd = optimizer_state or optimizer.state_dict()
            tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
            save_file(tensors, str(tmp / OPTIMIZER_WEIGHTS))
            (tmp / OPTIMIZER_GROUPS).write_text(json.dumps({"param_groups": sd["param_groups"]}))
            (tmp / TRAINER_STATE).write_text(json.dumps({**asdict(self), "plan": asdict(self.plan)}, indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "RunState":
        """The state of a run checkpoint; CheckpointError when it has none or it is unreadable."""
        file = Path(path) / TRAINER_STATE
        if not file.is_file():
            raise CheckpointError(f"{path}: no {TRAINER_STATE} (not a checkpoint written by `probe train`)")
        raw = read_json_object(file, CheckpointError, TRAINER_STATE)
        if "plan" not in raw and "global_step" in raw:  # the state `probe train` wrote before a run could resume
            raise CheckpointError(f"{file}: written by a coconut-probe from before runs could resume (global_step, no "
                                  "plan): the checkpoint loads and `probe release` reads its history, but no run goes "
                                  f"on from it; start a new run from it (config `load_model_path: {path}`)")
        try:
            raw["plan"] = Plan(**raw["plan"])
            raw["pending"] = {**cls.empty_pending(), **raw.get("pending", {})}  # a state written before a sum existed
            return cls(**raw)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{file}: not a readable run state ({type(e).__name__}: {e})") from None


def read_optimizer(path: Path) -> dict[str, Any]:
    """A run checkpoint's optimizer state_dict (state by parameter index, and param_groups). Raises CheckpointError
    naming a file that is missing or unreadable."""
    try:
        tensors = load_file(str(path / OPTIMIZER_WEIGHTS))
    except Exception as e:  # a missing file, or safetensors' own error types for a corrupt one
        raise CheckpointError(f"{path / OPTIMIZER_WEIGHTS}: cannot read the optimizer state ({type(e).__name__}: "
                              f"{e}); the run cannot be resumed from this checkpoint") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = path / OPTIMIZER_GROUPS
    return {"state": state, "param_groups": read_field(read_json_object(groups, CheckpointError, OPTIMIZER_GROUPS),
                                                       "param_groups", list, str(groups), CheckpointError)}


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Restore an optimizer's state from a run checkpoint (onto the device of its parameters)."""
    optimizer.load_state_dict(read_optimizer(path))


def run_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete checkpoints, oldest first."""
    return sorted(p for p in Path(run_dir).glob(RUN_CHECKPOINTS) if (p / TRAINER_STATE).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    done = run_checkpoints(run_dir)
    return done[-1] if done else None


def prune(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints of a run (each renamed away first, so that an interruption
    never leaves one half removed under its name)."""
    for p in run_checkpoints(run_dir)[:-keep]:
        remove_directory(p)
