"""One hook primitive: keep or edit chosen positions of one module as a Coconut forward passes through it.

A Coconut forward runs a sequence in segments (the positions up to a thought, then the next stretch), so a
module sees its columns in several calls. `PositionHook` counts the columns it has seen and acts on the
wanted ones in whichever call holds them, as baukit's `Trace` does for one call: a context manager over one
module that always removes itself.

`read_at`, as baukit's `TraceDict` over it, is the one way to read (or edit) hook points by name at given positions
of a batch of left-padded prompts: capture (probe.capture.trace), the residual reads of interventions and layer edits of
the thoughts (CoconutModel) use it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from probe.model.architecture import architecture

if TYPE_CHECKING:
    from probe.model.coconut import CoconutModel

# (rows, slots, values [n, ...]) -> the values to put in their place
Edit = Callable[[Tensor, Tensor, Tensor], Tensor]


class PositionHook:
    """Keep (or edit) the activations of one module at chosen columns of the whole sequence.

    module: a torch module (a decoder layer, its attention or MLP, the final norm).
    columns: [batch, n] long, columns of the full (padded) input sequence, negative for none. Kept values
        go to `kept[b, j]`; columns in no call stay zero.
    part: which element of a tuple output to read (a layer's hidden states are element 0, an eager
        attention's weights element 1); a tensor output is read whole.
    inputs: read the module's first input instead of its output (TransformerLens's hook_resid_pre).
    heads_first: the value is [batch, heads, seq, keys] (attention weights): its seq axis is 2 and it is
        kept as [batch, n, heads, width] with keys zero-padded to `width` (the sequence's length).
    edit: instead of keeping, replace the values at the columns by edit(rows, slots, values) (outputs only).
    dtype: the kept values' dtype (default: the module's).

    Raises ValueError when an edit is asked of the inputs, or the module returns no tensor at `part`
    (for attention weights: an attention implementation other than eager).
    """

    def __init__(self, module: nn.Module, columns: Tensor, *, part: int = 0, inputs: bool = False,
                 heads_first: bool = False, width: int | None = None, edit: Edit | None = None,
                 dtype: torch.dtype | None = None):
        if edit is not None and inputs:
            raise ValueError("PositionHook edits a module's output, not its input")
        self.module, self.columns, self.part, self.inputs = module, columns, part, inputs
        self.heads_first, self.width, self.edit, self.dtype = heads_first, width, edit, dtype
        self.kept: Tensor | None = None
        self._seen = 0
        self._handle = None

    def __enter__(self) -> "PositionHook":
        self._seen = 0
        if self.inputs:
            self._handle = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
        else:
            self._handle = self.module.register_forward_hook(self._post)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _pre(self, module, args, kwargs) -> None:
        self._act(args[0] if args else kwargs["hidden_states"])

    def _post(self, module, args, out):
        value = out[self.part] if isinstance(out, tuple) else out
        if not isinstance(value, Tensor):
            raise ValueError(f"{type(module).__name__} returned no tensor at output {self.part} "
                             "(attention weights exist only with eager attention)")
        new = self._act(value)
        if new is None:
            return None
        return (*out[: self.part], new, *out[self.part + 1 :]) if isinstance(out, tuple) else new

    def _act(self, value: Tensor) -> Tensor | None:
        x = value.transpose(1, 2) if self.heads_first else value  # [batch, seg, ...]
        start, seg = self._seen, x.shape[1]
        self._seen += seg
        cols = self.columns.to(x.device)
        rows, slots = torch.nonzero((cols >= start) & (cols < start + seg), as_tuple=True)
        if self.edit is not None:
            if not len(rows):
                return None
            at = cols[rows, slots] - start
            return x.index_put((rows, at), self.edit(rows, slots, x[rows, at]))
        if self.kept is None:
            tail = (x.shape[2], self.width) if self.heads_first else x.shape[2:]
            self.kept = x.new_zeros(x.shape[0], cols.shape[1], *tail, dtype=self.dtype or x.dtype)
        if len(rows):
            got = x[rows, cols[rows, slots] - start].detach().to(self.kept.dtype)
            if self.heads_first:
                self.kept[rows, slots, :, : got.shape[-1]] = got
            else:
                self.kept[rows, slots] = got
        return None


def padded_columns(positions: Tensor, mask: Tensor) -> Tensor:
    """[batch, n] long, on mask's device: the columns of a padded batch that hold given prompt positions.

    positions: [batch, n], counted within each unpadded prompt, negative for none (-1 in the result).
    mask: [batch, width], the batch's attention mask; a row's prompt starts at its first real column.
    """
    first = mask.long().argmax(-1, keepdim=True)  # left padding: the first real column
    positions = positions.to(mask.device)
    return torch.where(positions >= 0, positions + first, torch.full_like(positions, -1))


@contextmanager
def read_at(model: "CoconutModel", names: Sequence[str], positions: Tensor, mask: Tensor, *,
            dtype: torch.dtype | None = None, edit: Edit | None = None) -> Iterator[dict[str, Tensor]]:
    """Read hook points at given positions of a batch of left-padded prompts while the model runs on it.

    A PositionHook per name (`Architecture.hook_point`) over the forward passes in the block, so the
    positions are found in whichever segment of the latent loop holds them.
    names: hook names ("blocks.3.hook_resid_post", "blocks.3.attn.hook_pattern", FINAL, ...).
    positions: [batch, n] long, within each unpadded prompt, negative for none.
    mask: [batch, width], the attention mask of the batch the forward runs (CoconutModel.left_padded).
    dtype: the values' dtype (default: the module's).
    edit: instead of reading, replace the values at the positions by edit(rows, slots, values) (not at
        hook_resid_pre); the dict stays empty.
    Yields a dict, filled when the block ends: name -> [batch, n, ...] (a residual [batch, n, d_model]; a
    pattern [batch, n, heads, width], keys by prompt position, zero past a prompt's length); positions
    that are negative or that no forward reached are zeros.
    Raises HookNameError for a name that is no hook of this model (ArchitectureError: its modules cannot be
    found), ValueError for an edit at hook_resid_pre or a pattern read under a non-eager attention.
    """
    arch, cols, width = architecture(model), padded_columns(positions, mask), mask.shape[1]
    hooks = {}
    for name in names:
        module, options = arch.hook_point(name)
        if options.get("heads_first"):
            options["width"] = width  # a pattern's keys: every column of the batch
        hooks[name] = PositionHook(module, cols, edit=edit, dtype=dtype, **options)
    out: dict[str, Tensor] = {}
    with ExitStack() as stack:
        for hook in hooks.values():
            stack.enter_context(hook)
        yield out
    if edit is None:
        first = mask.long().argmax(-1).tolist()
        for name, hook in hooks.items():
            out[name] = hook.kept
            if hook.heads_first:  # keys: padded columns -> prompt positions
                out[name] = torch.zeros_like(hook.kept)
                for b, f in enumerate(first):
                    out[name][b, ..., : width - f] = hook.kept[b, ..., f:]
