"""scripts/train_default_gpu.sh end to end on the CPU, with a budget of seconds and a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from safetensors import safe_open

from probe.data.prosqa import load_items
from probe.model.evaluate import evaluate
from probe.model.checkpoint import load_checkpoint
from probe.model.tokenizer import is_rbs_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# a model and data small enough that two runs share 2 CPU cores within the budget; one evaluation, at the end
TINY = ("model.n_layer=1 model.n_head=2 model.n_embd=32 train_size=128 batch_size=32 num_workers=0 val_size=4 "
        "epochs_per_stage=1 num_epochs=8 warmup_steps=2 eval_every_epochs=8 precision=float32")


def test_the_gpu_script_trains_releases_and_packs(tmp_path, official_path):
    data = tmp_path / "valid8.json"
    data.write_text(json.dumps(json.loads(official_path.read_text())[:8]))
    out = tmp_path / "out"
    # The GPU machine has no plotly and no streamlit: the script must run without them.
    blocker = tmp_path / "gpu_machine"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('plotly', 'streamlit'):\n"
        "            raise ImportError(f'{name} is not installed on the GPU machine')\n"
        "sys.meta_path.insert(0, Absent())\n")
    env = {**os.environ, "DEVICE": "cpu", "MINUTES": "0.5", "DATA": str(data), "PYTHON": sys.executable,
           "RUNS": "coconut coconut_newest", "PROBE_SET": TINY, "PYTHONPATH": str(blocker)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "train_default_gpu.sh"), str(out)], env=env,
                          capture_output=True, text=True, errors="replace", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "SUMMARY.json").read_text())
    runs = summary["runs"]
    assert set(runs) == {"coconut", "coconut_newest"}
    best = summary["best_coconut"]
    other = ({"coconut", "coconut_newest"} - {best}).pop()
    assert runs[best]["accuracy"] >= runs[other]["accuracy"]
    assert summary["shipped_as"] == {best: "prosqa-coconut", other: "prosqa-coconut-alt"}
    for run in runs.values():  # the whole curriculum ran, or the record says the budget cut it
        assert run["epochs"] == 8 or run["cut_by_budget"]
        assert run["tokens_per_s"] > 0 and run["tflops"] > 0 and run["epoch_items"] >= 32
    # packed for the trip back: one tar per checkpoint, each under 16 MiB
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars == ["prosqa-coconut-alt.tar", "prosqa-coconut.tar"]
    assert all((out / t).stat().st_size < 16 * 2**20 for t in tars)
    with tarfile.open(out / "prosqa-coconut.tar") as tf:
        tf.extractall(tmp_path / "unpacked")
    ckpt = tmp_path / "unpacked" / "prosqa-coconut"
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    assert not (ckpt / "rbs").exists()  # RbS's copy of the weights stays behind: ship_default.sh writes it again
    model, tok = load_checkpoint(ckpt)
    assert model.config.supervision == "optimal" and model.config.data_format == "rbs" and is_rbs_tokenizer(tok)
    assert model.config.default_thoughts == 6
    res = evaluate(model, tok, load_items(data), progress=False)  # an independent measurement of the card
    assert res.accuracy == runs[best]["accuracy"]
    card = (ckpt / "README.md").read_text()
    assert card.startswith("# prosqa-coconut\n") and "chosen by validation accuracy" in card
    assert "| gold depth" in card
    assert f"supervision `optimal` ({'all' if best == 'coconut' else 'newest'} thoughts)" in card

    # scripts/ship_default.sh on what came back: the models swapped into a checkpoints folder, the retired
    # ones gone, and the default's tuned lens, frontier probe and SAE refit on it (each tied to its weights)
    # with the latent-search section in its card.
    from probe.readouts.lens import TunedLens
    from probe.readouts.probes import SavedProbe
    from probe.readouts.sae import SparseAutoencoder

    ckpts = tmp_path / "checkpoints"
    (ckpts / "prosqa-cot").mkdir(parents=True)
    (ckpts / "prosqa-coconut").mkdir()
    (ckpts / "prosqa-coconut" / "old.txt").write_text("the at-chance model")
    env = {**os.environ, "CHECKPOINTS": str(ckpts), "DATA": str(data), "PYTHON": sys.executable, "N": "30",
           "LENS_EPOCHS": "2", "SAE_EPOCHS": "2", "LIMIT": "4"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ship_default.sh"), str(out)], env=env,
                          capture_output=True, text=True, errors="replace", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in ckpts.iterdir()) == ["prosqa-coconut"]  # the alt run stays out
    shipped = ckpts / "prosqa-coconut"
    assert not (shipped / "old.txt").exists()
    model, tok = load_checkpoint(shipped)
    theirs, _ = load_checkpoint(shipped / "rbs" / "checkpoint", base=shipped / "rbs" / "config.json", tokenizer="rbs")
    assert all(torch.equal(a, b) for a, b in zip(theirs.base.state_dict().values(), model.base.state_dict().values()))
    TunedLens.load(shipped / "tuned_lens.safetensors", model)
    SavedProbe.load(shipped / "probes" / "frontier", model)
    SparseAutoencoder.load(shipped / "sae", model)
    card = (shipped / "README.md").read_text()
    assert "## Latent search" in card and "`probe analyze` on 4 items of valid8.json: `prosqa-coconut`" in card
    assert "thought k itself read through the unembedding" in card
