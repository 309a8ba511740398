"""Capture past one process: `torchrun --nproc_per_node 2 -m probe.cli capture` on the CPU (gloo) gives the same
data set as a single-process `probe capture` of the same items."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from typer.testing import CliRunner

from probe.capture.trace import TraceStore
from probe.cli import app
from probe.capture.distributed import merge_stores
from probe.model.ranks import rank_slice

pytestmark = pytest.mark.xdist_group("torchrun")  # pytest -n 2: one torchrun job at a time

ROOT = Path(__file__).resolve().parents[1]


def test_rank_slices_cover_the_data_set_once_in_order():
    for n, size in ((10, 2), (7, 3), (2, 4), (0, 2)):
        blocks = [rank_slice(n, r, size) for r in range(size)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError, match="rank 2 is out of range for a world of 2"):
        rank_slice(5, 2, 2)


def _run(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# Shards of 5: each rank's block is whole shards, so the batches are those of one process (bitwise equal);
# shards of 3 cut the blocks elsewhere, so the batches differ (equal within float tolerance).
@pytest.mark.parametrize("batch, shard", [(5, 5), (4, 3)])
def test_torchrun_two_processes_equal_one(tmp_path, official_path, batch, shard):
    common = ["--data", str(official_path), "--limit", "10", "--batch-size", str(batch), "--shard-size", str(shard),
              "--hooks", "*hook_resid_post", "--hooks", "blocks.1.attn.hook_pattern"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs (OMP_NUM_THREADS=1): a matmul's sums depend on the thread count
    try:
        one = CliRunner().invoke(app, ["capture", "--out", str(tmp_path / "one"), *common])  # one process: this one
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output[-2000:]
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "probe.cli", "capture", "--out", str(tmp_path / "two"), *common])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "wrote 10 items" in two.stdout and two.stdout.count("wrote") == 1  # rank 0 reports, once
    a, b = TraceStore(tmp_path / "one"), TraceStore(tmp_path / "two")
    assert len(b) == 10 and b.manifest["ranks"] == 2 and b.names == a.names
    owners = [s["file"].split("/")[0] for s in b.manifest["shards"]]
    assert owners == sorted(owners) and set(owners) == {"rank-00000", "rank-00001"}  # rank 0's shards, then 1's
    ta, tb = a.load(), b.load()
    assert tb.indices.tolist() == list(range(10))
    exact = shard == 5
    for name in ta.cache:
        if exact:
            assert torch.equal(ta[name], tb[name]), name
        else:
            torch.testing.assert_close(ta[name], tb[name], atol=1e-4, rtol=1e-4, equal_nan=True)
    for field in ("prompt_ids", "positions", "fact", "node", "answer_ids"):
        assert torch.equal(getattr(ta, field), getattr(tb, field)), field
    assert not list(tmp_path.glob(".two*"))  # the parts directory became the store


def test_merge_refuses_parts_that_do_not_match(tmp_path, official_path):
    from probe.capture.trace import capture_to_disk
    from probe.data.prosqa import load_items
    from probe.model.checkpoint import load_checkpoint

    model, tok = load_checkpoint(ROOT / "checkpoints" / "prosqa-coconut")
    items = load_items(official_path, limit=4)
    parts = tmp_path / "parts"
    capture_to_disk(model, tok, items[:2], parts / "rank-00000", names=["blocks.0.hook_resid_post"], progress=False)
    capture_to_disk(model, tok, items[2:], parts / "rank-00001", first_index=2, names=["blocks.1.hook_resid_post"],
                    progress=False)
    from probe.capture.trace import CaptureError

    with pytest.raises(CaptureError, match=r"rank-00001: names \['blocks.1.hook_resid_post'\] differs"):
        merge_stores([parts / "rank-00000", parts / "rank-00001"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(parts / "rank-00001")
    capture_to_disk(model, tok, items[2:], parts / "rank-00001", first_index=2, names=["blocks.0.hook_resid_post"],
                    progress=False)
    store = merge_stores([parts / "rank-00000", parts / "rank-00001"], tmp_path / "out")
    assert len(store) == 4 and store.load().indices.tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["ranks"] == 2


def test_torchrun_into_an_existing_directory_fails_with_one_message_and_writes_nothing(tmp_path, official_path):
    (tmp_path / "two").mkdir()
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "probe.cli", "capture", "--out", str(tmp_path / "two"), "--data", str(official_path), "--limit", "4"])
    assert two.returncode != 0 and "two: already exists; pass --overwrite to replace it" in two.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"] and not any((tmp_path / "two").iterdir())
