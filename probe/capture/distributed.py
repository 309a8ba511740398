"""Capture past one process: each rank of a `torchrun` job captures a contiguous block of the data set into
its own TraceStore, and rank 0 merges them into one store (a manifest over every rank's shards).

    torchrun --nproc_per_node N -m probe.cli capture --data DATA --out DIR [probe capture's options]

Ranks find each other through torch.distributed (gloo on the CPU, nccl on GPUs); the result reads
back (TraceStore) exactly like a single-process capture of the same items.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from probe.artifacts import TRACE_MANIFEST
from probe.capture.trace import CaptureError, TraceStore, capture_to_disk
from probe.model.ranks import process_group, rank_slice, world
from probe.atomic import atomic_write_text, replace_directory
from probe.data.prosqa import ProsQAItem


def parts_dir(out: Path) -> Path:
    """Where the ranks write their stores before rank 0 merges them (beside out, on the shared file system)."""
    return out.parent / f".{out.name}.parts"


def merge_stores(parts: Sequence[Path], out: Path) -> TraceStore:
    """One store at out from per-rank stores (in rank order, all inside one directory that becomes out; what out
    held before is swapped out)."""
    stores = [TraceStore(p) for p in parts]
    if not stores:
        raise CaptureError("nothing to merge: no rank captured any item")
    first = stores[0].manifest
    for s in stores[1:]:
        for key in ("k", "names", "dtype", "n_layers", "d_model", "mode", "max_new_tokens"):
            if s.manifest.get(key) != first.get(key):
                raise CaptureError(f"{s.path}: {key} {s.manifest.get(key)!r} differs from {stores[0].path}'s {first.get(key)!r}")
    root = parts[0].parent
    if any(p.parent != root for p in parts):
        raise CaptureError("the rank stores must share one parent directory")
    shards = [{**sh, "file": f"{s.path.name}/{sh['file']}"} for s in stores for sh in s.manifest["shards"]]
    manifest = {**first, "n_items": sum(len(s) for s in stores), "shards": shards, "ranks": len(stores)}
    atomic_write_text(root / TRACE_MANIFEST, json.dumps(manifest, indent=1))
    replace_directory(root, out)
    return TraceStore(out)


def capture_distributed(model, tokenizer, items: Sequence[ProsQAItem], out: str | Path, *, timeout_s: int = 3600,
                        replace: bool = False, **capture_kw) -> TraceStore | None:
    """This rank's block of items captured, then (rank 0) every rank's merged into out; None on other ranks.
    replace: swap out what out holds (kept whole until the merged store is in place); without, it is an error."""
    rank, size, _ = world()
    out = Path(out)
    if out.exists() and not replace:
        raise CaptureError(f"{out}: already exists; choose a new directory")
    with process_group(str(model.device), timeout_s):
        parts = parts_dir(out)
        if rank == 0:
            shutil.rmtree(parts, ignore_errors=True)  # a failed earlier run's leftovers
            parts.mkdir(parents=True)
        dist.barrier()
        block = rank_slice(len(items), rank, size)
        progress = capture_kw.pop("progress", True) and rank == 0
        ok = True
        try:
            if len(block):
                capture_to_disk(model, tokenizer, list(items[block.start : block.stop]), parts / f"rank-{rank:05d}",
                                first_index=block.start, progress=progress, **capture_kw)
        except BaseException:
            ok = False
            raise
        finally:
            flags = [None] * size
            try:
                dist.all_gather_object(flags, ok)
            finally:  # a failed or interrupted rank, rank 0's own included: the parts go
                if rank == 0 and not (ok and all(flags)):
                    shutil.rmtree(parts, ignore_errors=True)
        if not all(flags):
            raise CaptureError(f"rank(s) {[r for r, f in enumerate(flags) if not f]} failed; nothing was written")
        store = None
        if rank == 0:
            done = [parts / f"rank-{r:05d}" for r in range(size) if len(rank_slice(len(items), r, size))]
            try:
                store = merge_stores(done, out)
            except BaseException:
                shutil.rmtree(parts, ignore_errors=True)
                raise
        dist.barrier()
        return store

