"""Where a model runs and in what precision: the one parser of device names and of dtype names.

Every command, the library's entry points (load_checkpoint, train, release, capture) and the app read a
device or a dtype through these two functions, so a name is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PlacementError(ValueError):
    """A device that does not exist here, or a dtype we do not run in."""


def parse_device(name: str | torch.device, setting: str = "device") -> str:
    """A device name checked against this machine: "cpu", "cuda" or "cuda:N" (N < the number of GPUs).

    Returns the name as torch writes it ("cuda:0" stays "cuda:0", "cuda" stays "cuda"). Raises
    PlacementError, its line starting with `setting` (e.g. "--device"), for text torch cannot read, a kind
    of device we do not run on, or a GPU that is absent.
    """
    where = f"{setting} {name}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise PlacementError(f"{where}: not a device name; expected cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return str(device)
    if device.type != "cuda":
        raise PlacementError(f"{where}: expected cpu, cuda or cuda:N ({device.type} is not supported)")
    if not torch.cuda.is_available():
        raise PlacementError(f"{where}: no CUDA device is available")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise PlacementError(f"{where}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return str(device)


def parse_dtype(name: str | torch.dtype | None, setting: str = "dtype",
                allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype | None:
    """A dtype from its name ("float32", "bfloat16", "float16") or a torch.dtype; None stays None.

    allowed narrows the names a setting takes (a training precision takes float32 or bfloat16). Raises
    PlacementError, its line starting with `setting` (e.g. "--dtype"), naming the value and the choices.
    """
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        match = [n for n, d in DTYPES.items() if d == name]
        name = match[0] if match else str(name)
    if name not in allowed:
        raise PlacementError(f"{setting}: expected one of {', '.join(allowed)}, got {name!r}")
    return DTYPES[name]
