"""PositionHook: keeps or edits chosen columns of one module however the forward splits the sequence, and always
removes itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probe.model.hooks import PositionHook


class Doubler(nn.Module):
    """A module whose output is (2x, x): a tuple, as a decoder layer returns."""

    def forward(self, x):
        return 2 * x, x


def run_in_segments(module, x, cuts):
    """Call the module on consecutive column ranges, as the latent loop runs a sequence."""
    bounds = [0, *cuts, x.shape[1]]
    return torch.cat([module(x[:, a:b])[0] for a, b in zip(bounds, bounds[1:])], dim=1)


def test_keeps_the_wanted_columns_of_every_segment():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    cols = torch.tensor([[0, 4, -1], [5, 2, 3]])
    module = Doubler()
    with PositionHook(module, cols) as hook:
        run_in_segments(module, x, [2, 3])
    want = torch.zeros(2, 3, 3)
    for b in range(2):
        for j, c in enumerate(cols[b].tolist()):
            if c >= 0:
                want[b, j] = 2 * x[b, c]
    torch.testing.assert_close(hook.kept, want)
    with PositionHook(module, cols, part=1, dtype=torch.float16) as hook:
        module(x)
    assert hook.kept.dtype == torch.float16 and torch.equal(hook.kept[1, 0], x[1, 5].half())
    assert not module._forward_hooks


def test_reads_inputs_and_heads_first_values():
    lin = nn.Linear(3, 3)
    x = torch.randn(1, 4, 3)
    with PositionHook(lin, torch.tensor([[3, 1]]), inputs=True) as hook:
        lin(x[:, :2]), lin(x[:, 2:])
    torch.testing.assert_close(hook.kept[0], x[0, [3, 1]])
    pattern = torch.rand(1, 2, 4, 4)  # [batch, heads, seq, keys]
    holder = nn.Identity()
    with PositionHook(holder, torch.tensor([[2]]), heads_first=True, width=6) as hook:
        holder(pattern)
    assert hook.kept.shape == (1, 1, 2, 6)
    torch.testing.assert_close(hook.kept[0, 0, :, :4], pattern[0, :, 2])
    assert (hook.kept[..., 4:] == 0).all()


def test_edits_the_wanted_columns_and_removes_itself_on_failure():
    x = torch.ones(2, 5, 2)
    module = Doubler()
    seen = []

    def edit(rows, slots, values):
        seen.append((rows.tolist(), slots.tolist()))
        return values + 10 * (slots[:, None] + 1)

    with PositionHook(module, torch.tensor([[1, 4], [-1, 0]]), edit=edit):
        out = run_in_segments(module, x, [2])
    want = 2 * torch.ones(2, 5, 2)
    want[0, 1] += 10
    want[0, 4] += 20
    want[1, 0] += 20
    torch.testing.assert_close(out, want)
    assert sorted(seen) == [([0], [1]), ([0, 1], [0, 1])]
    with pytest.raises(RuntimeError, match="boom"):
        with PositionHook(module, torch.tensor([[0]])):
            raise RuntimeError("boom")
    assert not module._forward_hooks
    with pytest.raises(ValueError, match="edits a module's output, not its input"):
        PositionHook(module, torch.tensor([[0]]), inputs=True, edit=edit)
    sdpa_like = nn.Identity()  # an attention that returns no weights, as sdpa does
    with pytest.raises(ValueError, match="returned no tensor at output 1"):
        with PositionHook(sdpa_like, torch.tensor([[0]]), part=1):
            sdpa_like((torch.ones(1, 2, 2), None))
