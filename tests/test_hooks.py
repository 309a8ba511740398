"""PositionHook: keeps or edits chosen columns of one module however the forward splits the sequence, and always
removes itself. read_at: hook names read at prompt positions of a left-padded batch as each prompt alone gives them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probe.model.hook_names import FINAL, HookNameError
from probe.model.hooks import PositionHook, padded_columns, read_at


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


def test_padded_columns_count_from_each_rows_first_real_column():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    got = padded_columns(torch.tensor([[0, 1, -1], [0, 3, -1]]), mask)
    assert got.tolist() == [[2, 3, -1], [0, 3, -1]]


def test_read_at_reads_a_left_padded_batch_as_each_prompt_alone(tiny_model):
    c = tiny_model.config
    prompts = [[5, 6, 7, 8, 9, c.start_id, c.latent_id, c.latent_id, c.end_id],
               [7, 8, c.start_id, c.latent_id, c.latent_id, c.end_id]]
    positions = torch.tensor([[5, 6, 8, -1], [2, 3, 5, 0]])  # the positions emitting each thought, the end, ...
    names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out",
             "blocks.1.attn.hook_pattern", FINAL]
    tiny_model.base.set_attn_implementation("eager")

    def read(ps, pos):
        ids, mask = tiny_model.left_padded(ps)
        with torch.no_grad(), read_at(tiny_model, names, pos, mask) as acts:
            out = tiny_model(ids, mask)
        return acts, out

    batch, out = read(prompts, positions)
    torch.testing.assert_close(batch[FINAL][0, :2], out.thoughts[0])  # a thought is FINAL at the position before it
    assert (batch["blocks.1.hook_resid_post"][0, 3] == 0).all()  # no position: zeros
    for b, p in enumerate(prompts):
        alone, _ = read([p], positions[b : b + 1])
        for n in names:
            got = batch[n][b]
            if n.endswith("hook_pattern"):  # keys by prompt position, zero past the prompt
                assert got.shape[-1] == len(prompts[0]) and (got[..., len(p):] == 0).all()
                got = got[..., : len(p)]
            torch.testing.assert_close(got, alone[n][0], atol=1e-5, rtol=1e-4)
    with pytest.raises(HookNameError, match="out of range for a model with 2 layers"):
        with read_at(tiny_model, ["blocks.2.hook_resid_post"], positions, torch.ones(2, 9)):
            pass
