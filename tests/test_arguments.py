"""One parser per kind of argument: layers and hook names, thought counts, item indices, devices, dtypes.

Each rule lives in one function; these tests pin what it accepts and the one line it gives otherwise, and
that the library's entry points go through it (so a command, a notebook and the app agree).
"""

from __future__ import annotations

import pytest
import torch

from probe.capture.trace import capture_batch
from probe.data.prosqa import DataError, item_at
from probe.model.hook_names import (
    FINAL, HookNameError, act_name, check_names, hook_names, layer_index, layer_of, parse_layers, point_of, select_hooks,
)
from probe.model.placement import PlacementError, parse_device, parse_dtype


def test_hook_names_build_and_parse_back():
    assert act_name("hook_resid_post", 3) == "blocks.3.hook_resid_post"
    assert act_name("attn.hook_pattern", -1, 4) == "blocks.3.attn.hook_pattern"
    for name in hook_names(3):
        if name != FINAL:
            assert act_name(point_of(name), layer_of(name)) == name
    assert (layer_of(FINAL), point_of(FINAL)) == (None, FINAL)
    assert len(hook_names(2)) == 2 * 5 + 1 and hook_names(2)[-1] == FINAL
    with pytest.raises(HookNameError, match="unknown hook point 'resid_post'"):
        act_name("resid_post", 0)
    with pytest.raises(HookNameError, match="layer -1 counts from the end; give n_layers"):
        act_name("hook_resid_post", -1)
    with pytest.raises(HookNameError, match=r"layer 4 is out of range for a model with 4 layers \(0..3, or -4..-1"):
        act_name("hook_resid_post", 4, 4)
    with pytest.raises(HookNameError, match="'blocks.x.hook_resid_post' is not a hook name"):
        layer_of("blocks.x.hook_resid_post")
    with pytest.raises(HookNameError, match=r"unknown hook name\(s\) \['blocks.2.hook_resid_post'\] for a model with 2"):
        check_names(["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], 2)


def test_layer_rule():
    assert [layer_index(l, 4) for l in (0, 3, -1, -4)] == [0, 3, 3, 0]
    for bad in (4, -5):
        with pytest.raises(HookNameError, match=f"layer {bad} is out of range"):
            layer_index(bad, 4)
    with pytest.raises(HookNameError, match="layer True is not an integer"):
        layer_index(True, 4)
    with pytest.raises(DataError, match="layer 9"):  # the caller's error class
        layer_index(9, 2, DataError)
    assert parse_layers("0, 2,-1") == [0, 2, -1] and parse_layers(None) is None
    for bad in ("1-2", "a", ",", "0,,1", "1,"):
        with pytest.raises(HookNameError, match="expected comma-separated integers"):
            parse_layers(bad)
    with pytest.raises(HookNameError, match="--layers: a layer is named twice in '0,1,0'"):
        parse_layers("0,1,0", "--layers")
    assert select_hooks(3, ["*hook_resid_post"], [-1, 0]) == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]


def test_a_trace_takes_point_and_layer_as_transformer_lens_does(tiny_model, word_tokenizer, official_items):
    names = [act_name("hook_resid_post", l) for l in range(2)]
    tr = capture_batch(tiny_model, word_tokenizer, official_items[:2], k=2, names=names)
    assert torch.equal(tr["hook_resid_post", -1], tr["blocks.1.hook_resid_post"])
    assert torch.equal(tr["hook_resid_post", 0], tr["blocks.0.hook_resid_post"])
    with pytest.raises(HookNameError, match="layer 2 is out of range"):
        tr["hook_resid_post", 2]
    with pytest.raises(KeyError, match="was not captured"):
        tr["hook_mlp_out", 0]


def test_thought_count_rule(tiny_model):
    cfg = tiny_model.config
    assert cfg.thought_count(None) == cfg.default_thoughts and cfg.thought_count(3) == 3
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        cfg.thought_count(-1)
    with pytest.raises(ValueError, match=r"k_max must be >= 2 \(a reason\), got 1"):
        cfg.thought_count(1, 2, "k_max", why="a reason")
    with pytest.raises(ValueError, match="k must be an integer, got 2.5"):
        cfg.thought_count(2.5)
    with pytest.raises(ValueError, match="k must be an integer, got True"):
        cfg.thought_count(True)


def test_item_index_rule(official_items):
    items = official_items[:3]
    assert item_at(items, 2) is items[2]
    for bad in (3, -1):
        with pytest.raises(DataError, match=rf"--index {bad} is out of range: valid.json has 3 items \(0..2\)"):
            item_at(items, bad, "valid.json", "--index")
    with pytest.raises(DataError, match=r"index 0 is out of range: the data has 0 items \(none\)"):
        item_at([], 0)


def test_devices_and_dtypes():
    assert parse_device("cpu") == "cpu" and parse_device(torch.device("cpu")) == "cpu"
    with pytest.raises(PlacementError, match="--device foo: not a device name; expected cpu, cuda or cuda:N"):
        parse_device("foo", "--device")
    with pytest.raises(PlacementError, match=r"device mps: expected cpu, cuda or cuda:N \(mps is not supported\)"):
        parse_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(PlacementError, match="device cuda:1: no CUDA device is available"):
            parse_device("cuda:1")
    assert parse_dtype("bfloat16") == torch.bfloat16 and parse_dtype(torch.float16) == torch.float16
    assert parse_dtype(None) is None
    with pytest.raises(PlacementError, match="--dtype: expected one of float32, bfloat16, float16, got 'float8'"):
        parse_dtype("float8", "--dtype")
    with pytest.raises(PlacementError, match="precision: expected one of float32, bfloat16, got 'float16'"):
        parse_dtype("float16", "precision", ("float32", "bfloat16"))


def test_the_library_entry_points_use_the_same_rules(tmp_path, tiny_model, word_tokenizer, official_items):
    from probe.model.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tiny_model, word_tokenizer, tmp_path / "ckpt")
    with pytest.raises(PlacementError, match="device foo: not a device name"):
        load_checkpoint(tmp_path / "ckpt", device="foo")
    with pytest.raises(PlacementError, match="dtype: expected one of float32, bfloat16, float16, got 'int8'"):
        load_checkpoint(tmp_path / "ckpt", dtype="int8")
    model, _ = load_checkpoint(tmp_path / "ckpt", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_atomic_writes_name_the_place_and_honour_the_umask(tmp_path):
    """What the atomic writers leave has the modes open() and mkdir() would give (mkstemp's are private), and
    a refused place is named as asked for, not by its temporary file."""
    import os

    from probe.atomic import atomic_directory, atomic_path, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert [oct((tmp_path / n).stat().st_mode & 0o777) for n in ("a.json", "b.bin", "d")] == ["0o644", "0o644", "0o755"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as e:
        atomic_write_text(tmp_path / "file" / "x.json", "{}")
    assert e.value.filename == str(tmp_path / "file" / "x.json") and e.value.strerror.endswith("is a file, not a directory")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OSError) as e:
        atomic_write_text(tmp_path / "adir", "{}")
    assert e.value.filename == str(tmp_path / "adir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "adir", "b.bin", "d", "file"]  # no temporary left
