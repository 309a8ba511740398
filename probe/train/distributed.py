"""Training past one process (`torchrun ... -m probe.cli train`): every rule that differs between one process and
many, in one place.

A `Ranks` is this process's place in the job: its device, its rank of size, and the module its loss runs through
(the model; under torchrun its DistributedDataParallel wrapper, or the model itself sharded by FSDP2's
`fully_shard`). Each of its methods is the plain single-process step for a world of one, so that probe.train.loop's
loop reads the same for one process and for many:

- each rank takes its contiguous block of the rows of every batch (`rows`) and of the validation items (`block`);
- gradients are averaged once per optimizer step (`grad_sync`), sums of losses and counts are summed (`sum`), the
  ranks stop together (`any`), and follow rank 0's plan (`from_rank0`);
- with FSDP the parameters are gathered for what runs outside the forward (`whole`: evaluation), the whole model
  and optimizer state is gathered to rank 0 for a checkpoint in the single-process layout (`full_states`), and a
  resume loads the optimizer state back into the shards (`load_optimizer`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from probe.atomic import interruptible
from probe.model.ranks import process_group, rank_slice, world
from probe.model.architecture import find_architecture
from probe.train.state import load_optimizer, read_optimizer

T = TypeVar("T")


@contextmanager
def training_job(device: str) -> Iterator[None]:
    """The block of a training run: as it is for one process; under torchrun inside the job's process group, with
    SIGTERM raised as an exception (torchrun stops the other ranks of a failed run with it: atomic.interruptible,
    so that a checkpoint being written is removed, never left half-written)."""
    if world()[1] == 1:
        yield
        return
    with interruptible(), process_group(device):
        yield


@dataclass
class Ranks:
    """Where this process trains: its device, its rank of size, and what runs the forward of the loss."""

    device: str
    forward: torch.nn.Module  # the model, its DistributedDataParallel wrapper, or the model itself sharded (FSDP)
    rank: int = 0
    size: int = 1
    sharded: bool = False  # FSDP: the model's parameters are sharded over the ranks

    @classmethod
    def wrap(cls, model: torch.nn.Module, device: str, distributed: str) -> "Ranks":
        """This process's place in the job (torchrun's environment), the model wrapped for it: alone, as it is;
        with more ranks, by DistributedDataParallel (distributed "ddp") or sharded by fully_shard ("fsdp")."""
        rank, size, _ = world()
        if size == 1:
            return cls(device, model)
        if distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # Each decoder layer is its own unit (gathered for its call in every segment of the latent loop), and
            # the root holds the rest for the whole forward, the thought loop inside it.
            for layer in find_architecture(model.base).layers:
                fully_shard(layer)
            fully_shard(model)
            return cls(device, model, rank, size, sharded=True)
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return cls(device, DistributedDataParallel(model, device_ids=ids), rank, size)

    # ------------------------------------------------------------------------ shares of the work

    def rows(self, n: int) -> tuple[slice, float]:
        """This rank's rows of a batch of n, and the weight of its loss: its contiguous block, or where a short
        last batch leaves it none, the first row at weight 0 (so that every rank runs the same graph)."""
        block = rank_slice(n, self.rank, self.size)
        return (slice(block.start, block.stop), 1.0) if len(block) else (slice(0, 1), 0.0)

    def block(self, items: Sequence[T]) -> Sequence[T]:
        """This rank's contiguous block of items (evaluation is split over the ranks, then summed)."""
        block = rank_slice(len(items), self.rank, self.size)
        return items[block.start : block.stop]

    # ------------------------------------------------------------------------ collectives

    def grad_sync(self, sync: bool) -> ContextManager:
        """The block of a backward, which averages the gradients over the ranks only if sync (once per optimizer
        step, on its last micro-batch)."""
        if self.sharded:
            self.forward.set_requires_gradient_sync(sync)
        elif self.size > 1 and not sync:
            return self.forward.no_sync()
        return nullcontext()

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float | None) -> torch.Tensor:
        """The gradient norm of the whole model before clipping (a scalar tensor), the gradients clipped to
        max_norm (None: not clipped)."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or math.inf)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """tensor summed over the ranks, in place (returned)."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """Whether flag holds on any rank (how the ranks agree to stop together)."""
        if self.size == 1:
            return flag
        t = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def from_rank0(self, obj: T) -> T:
        """Rank 0's obj, on every rank (every rank follows rank 0's timing)."""
        if self.size == 1:
            return obj
        shared = [obj]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def barrier(self) -> None:
        """Every rank waits for the others here (none goes on before rank 0's checkpoint is in place)."""
        if self.size > 1:
            dist.barrier()

    # ------------------------------------------------------------------------ whole states (FSDP)

    @contextmanager
    def whole(self) -> Iterator[None]:
        """The model's parameters gathered on every rank (FSDP) for what runs outside its forward: evaluation."""
        if not self.sharded:
            yield
            return
        self.forward.unshard()
        try:
            yield
        finally:
            self.forward.reshard()

    def full_states(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """What RunState.save writes in place of the model's and optimizer's own states: nothing unless sharded;
        with FSDP the whole states gathered on rank 0's CPU, in our checkpoint's layout (the base's weights by name;
        the optimizer's state by parameter index, as a single process numbers them), {} on the other ranks.
        With FSDP a collective: every rank calls it."""
        if not self.sharded:
            return {}
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=opts)
        optim = get_optimizer_state_dict(model, opt, options=opts)
        if self.rank != 0:  # the gathered states land on rank 0 only
            return {}
        index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        # one name per tensor, as a single process saves a tied unembedding (named_parameters drops the twin)
        own = {n for n, _ in model.base.named_parameters()} | {n for n, _ in model.base.named_buffers()}
        return {"weights": {k.removeprefix("base."): v for k, v in weights.items() if k.removeprefix("base.") in own},
                "optimizer_state": _rekeyed(optim, index)}

    def load_optimizer(self, model: torch.nn.Module, opt: torch.optim.Optimizer, checkpoint: Path) -> None:
        """A run checkpoint's optimizer state (by parameter index) loaded into opt: as it is, or with FSDP into
        the sharded optimizer."""
        if not self.sharded:
            load_optimizer(opt, checkpoint)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = dict(enumerate(name for name, _ in model.named_parameters()))
        full = _rekeyed(read_optimizer(checkpoint), names)
        set_optimizer_state_dict(model, opt, full, options=StateDictOptions(full_state_dict=True))


def _rekeyed(sd: dict[str, Any], key: dict) -> dict[str, Any]:
    """An optimizer state_dict with its parameters renamed by `key` (index -> name, or name -> index)."""
    return {"state": {key[p]: st for p, st in sd["state"].items()},
            "param_groups": [{**g, "params": [key[p] for p in g["params"]]} for g in sd["param_groups"]]}
