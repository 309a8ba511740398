"""Every input the toolkit reads, by kind (docs/formats.md, "Data files, our checkpoint directories, trace stores,
lenses, probes and reports"): each sibling a user may hold is read as its writer wrote it, compared with an independent
reading, or refused in one line that names the file (and the field) and says what to do; through the CLI, one
`error:` line on stderr and exit code 2. Files are built by hand; the only model is a tiny random GPT-2 (and the
shipped checkpoint where a command needs one)."""

from __future__ import annotations

import codecs
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import hashed_as, tiny_base
from probe.capture.trace import CaptureError, TraceStore, capture, capture_to_disk
from probe.cli import app
from probe.data.prosqa import DataError, item_key, items_from_json, load_items
from probe.data.rbs import load_rbs, to_rbs_json
from probe.capture.distributed import merge_stores
from probe.readouts.lens import LensError, TunedLens
from probe.model.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import special_tokens
from probe.readouts.probes import ProbeError, SavedProbe
from probe.release.build import lineage
from probe.train.state import RunState

runner = CliRunner()
CHECKPOINTS = DEFAULT_CHECKPOINT.parent


def one_line(args: list[str]) -> str:
    """The one line a command refuses its input with (exit code 2, no traceback), without its `error: `."""
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, (args, r.output[-2000:])
    return lines[0].removeprefix("error: ")


# ---------------------------------------------------------------------------- data files

# Item 0 of the Emergence of Superposition repository's prosqa_valid_graph_4_bfs_shuffled.json (Ber666/emergence-of-
# superposition, data/), verbatim: official validation item 0 with its node ids shuffled and neighbor_k the reachable
# sets at depths 0..4.
EOS_BFS_SHUFFLED_0 = {
    "question": "Every shumpus is a rempus. Every shumpus is a yimpus. Every terpus is a fompus. Every terpus is a "
                "gerpus. Every gerpus is a brimpus. Alex is a rempus. Every rorpus is a scrompus. Every rorpus is a "
                "yimpus. Every terpus is a brimpus. Every brimpus is a lempus. Tom is a terpus. Every shumpus is a "
                "timpus. Every yimpus is a boompus. Davis is a shumpus. Every gerpus is a lorpus. Davis is a fompus. "
                "Every shumpus is a boompus. Every shumpus is a rorpus. Every terpus is a lorpus. Every boompus is a "
                "timpus. Every fompus is a yerpus. Tom is a dumpus. Every rempus is a rorpus. Is Tom a lempus or "
                "scrompus?",
    "answer": "Tom is a lempus.",
    "steps": ["Tom is a terpus.", "Every terpus is a brimpus.", "Every brimpus is a lempus."],
    "idx_to_symbol": ["lempus", "yerpus", "boompus", "dumpus", "shumpus", "Alex", "rorpus", "rempus", "timpus",
                      "terpus", "gerpus", "yimpus", "Tom", "Davis", "scrompus", "lorpus", "fompus", "brimpus"],
    "edges": [[13, 4], [12, 9], [4, 7], [5, 7], [9, 16], [13, 16], [7, 6], [4, 6], [9, 10], [10, 15], [9, 15], [16, 1],
              [6, 11], [4, 11], [4, 2], [11, 2], [6, 14], [10, 17], [9, 17], [2, 8], [4, 8], [17, 0], [12, 3]],
    "root": 12, "target": 0, "neg_target": 14,
    "neighbor_k": {"0": [12], "1": [3, 9, 12], "2": [3, 12, 9, 16, 10, 15, 17], "3": [12, 9, 16, 10, 15, 1, 17, 0, 3],
                   "4": [12, 9, 16, 10, 15, 1, 17, 0, 3]},
}


def test_the_emergence_repositorys_shuffled_bfs_item_is_official_item_0_with_its_reachable_sets(tmp_path,
                                                                                                 official_items):
    path = tmp_path / "prosqa_valid_graph_4_bfs_shuffled.json"
    path.write_text(json.dumps([EOS_BFS_SHUFFLED_0]))
    f = load_rbs(path)
    assert f.kind == "reachable" and item_key(f.items[0].item) == item_key(official_items[0])
    # by hand from the question: Tom is a terpus and a dumpus; terpus -> fompus, gerpus, brimpus, lorpus
    name = f.items[0].item.name
    assert [sorted(map(name, s)) for s in f.items[0].neighbors[:3]] == [
        ["Tom"], ["Tom", "dumpus", "terpus"], ["Tom", "brimpus", "dumpus", "fompus", "gerpus", "lorpus", "terpus"]]


DATA_LAYOUTS = {  # how another tool writes the official list (raw: its decoded items)
    "JSON Lines (datasets.Dataset.to_json)": lambda raw: ("\n".join(json.dumps(x) for x in raw) + "\n").encode(),
    "UTF-8 with a byte-order mark": lambda raw: codecs.BOM_UTF8 + json.dumps(raw).encode(),
    "UTF-16 with a byte-order mark (Windows PowerShell)": lambda raw: json.dumps(raw).encode("utf-16"),
    "UTF-16-LE without a byte-order mark": lambda raw: json.dumps(raw).encode("utf-16-le"),
    "fields beyond the official ones": lambda raw: json.dumps([{**x, "id": i, "source": "generator"}
                                                                for i, x in enumerate(raw)]).encode(),
}


@pytest.mark.parametrize("layout", sorted(DATA_LAYOUTS))
def test_a_data_file_in_another_layout_reads_as_the_official_list(layout, tmp_path, official_path):
    raw = json.loads(official_path.read_text())[:3]
    path = tmp_path / "data.json"
    path.write_bytes(DATA_LAYOUTS[layout](raw))
    assert load_items(path) == items_from_json(raw)
    r = runner.invoke(app, ["data", "stats", str(path)])
    assert r.exit_code == 0 and json.loads(r.stdout)["n"] == 3 and json.loads(r.stdout)["format"] == "official"


OFFICIAL = "the official format, facebookresearch/coconut's data/prosqa_*.json, is a JSON list of items"
DATA_REFUSED = {  # name: (the file's bytes from the official items, the line after "{path}: ")
    "an object wrapping the list": (lambda raw, rbs: json.dumps({"data": raw}),
                                    "expected a JSON list of ProsQA items, got an object holding a list under 'data'; "
                                    f"{OFFICIAL}: write that list alone as the file"),
    "one item, not in a list": (lambda raw, rbs: json.dumps(raw[0]),
                                "expected a JSON list of ProsQA items, got one item (an object with field "
                                f"'question'); {OFFICIAL}: write it as [item]"),
    "an object of other JSON": (lambda raw, rbs: json.dumps({"name": "gpt2", "vocab_size": 50257}),
                                "expected a JSON list of ProsQA items, got an object (keys 'name', 'vocab_size'); "
                                f"{OFFICIAL}"),
    "a number": (lambda raw, rbs: "3", f"expected a JSON list of ProsQA items, got a number; {OFFICIAL}"),
    "two lists on two lines": (lambda raw, rbs: json.dumps(raw[:1]) + "\n" + json.dumps(raw[1:2]),
                               "line 1: holds a JSON list; the file holds neither one JSON value nor one object per "
                               "line (JSON Lines)"),
    "cut short": (lambda raw, rbs: json.dumps(raw)[:50],
                  "not a valid JSON file (Unterminated string starting at: line 1 column 15 (char 14))"),
    "not text": (lambda raw, rbs: b"\x80" + json.dumps(raw).encode(),
                 "not a valid JSON file (not text in UTF-8, UTF-16 or UTF-32: 'utf-8' codec can't decode byte 0x80 in "
                 "position 0: invalid start byte)"),
    "GSM8K items (Coconut's other data)": (
        lambda raw, rbs: json.dumps([{"question": "Natalia sold clips to 48 of her friends in April, and then she sold "
                                                  "half as many clips in May. How many clips did she sell?",
                                      "steps": ["<<48/2=24>>", "<<48+24=72>>"], "answer": "72"}]),
        "item 0: holds only question, steps and answer, as the items of Coconut's other data sets (GSM8K, ProntoQA) "
        "do: not a ProsQA item, which also names its graph (idx_to_symbol, edges, root, target, neg_target); give a "
        "ProsQA file (facebookresearch/coconut's data/prosqa_*.json, or `probe data generate`)"),
    "an index written as a string": (lambda raw, rbs: json.dumps([raw[0], {**raw[1], "root": str(raw[1]["root"])}]),
                                     "item 1: field 'root' must be an integer, got '1'"),
    "official items, then an RbS item": (lambda raw, rbs: json.dumps([raw[0], rbs[1]]),
                                         "item 1 carries neighbor_k but item 0 does not; a file holds one format, the "
                                         "official one (no item carries neighbor_k) or RbS's (every item does)"),
    "RbS items, then an official item": (lambda raw, rbs: json.dumps([rbs[0], raw[1]]),
                                         "item 1 lacks neighbor_k but item 0 carries it; a file holds one format, the "
                                         "official one (no item carries neighbor_k) or RbS's (every item does)"),
    "a directory": (None, "is a directory; give the ProsQA data file itself"),
}


@pytest.mark.parametrize("name", sorted(DATA_REFUSED))
def test_a_data_file_that_cannot_be_read_faithfully_is_refused_in_one_line(name, tmp_path, official_path,
                                                                          official_items):
    raw = json.loads(official_path.read_text())[:3]
    write, message = DATA_REFUSED[name]
    path = tmp_path / "data.json"
    if write is None:
        path.mkdir()
    else:
        content = write(raw, [to_rbs_json(it) for it in official_items[:3]])
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as e:
        load_items(path)
    assert str(e.value) == f"{path}: {message}"
    assert one_line(["data", "stats", str(path)]) == f"{path}: {message}"


# ---------------------------------------------------------------------------- our checkpoint directories


def _copy(source, path):
    """A checkpoint directory's small files, its weights linked (a test breaks one file of the copy)."""
    path.mkdir()
    for f in source.iterdir():
        if f.name == "model.safetensors":
            (path / f.name).symlink_to(f)
        elif f.is_file():
            (path / f.name).write_bytes(f.read_bytes())
    return path


def _set(field, value):
    return lambda meta: meta.update({field: value})


def _drop(field):
    def drop(d):
        del d[field]
    return drop


NEWER = "written by a newer coconut-probe (this one reads {} up to {}); update coconut-probe to read it"
COCONUT_JSON_REFUSED = {  # name: (what is done to coconut.json, the line after "{coconut.json}: ")
    "a newer format_version": (_set("format_version", 2), "format_version 2: " + NEWER.format("format_version", 1)),
    "format_version as a string": (_set("format_version", "1"), "format_version '1' is not a version number (1, 2, "
                                                                "...); the file was edited or damaged"),
    "no format_version": (_drop("format_version"), "no format_version; every coconut-probe that writes this file "
                                                   "records one, so this one was not written by coconut-probe (or "
                                                   "was edited)"),
    "a list": (lambda meta: [meta], "holds a JSON list, not the object a coconut.json holds"),
    "a token id as a string": (_set("start_id", "67"), "field 'start_id' must be an integer, got '67'"),
    "no end_id": (_drop("end_id"), "no field 'end_id'"),
    "no thoughts per step": (_set("c_thought", 0), "field 'c_thought' must be at least 1, got 0"),
    "a negative last stage": (_set("max_latent_stage", -1), "field 'max_latent_stage' must be at least 0, got -1"),
    "pad_latent_to_max as a string": (_set("pad_latent_to_max", "yes"),
                                      "field 'pad_latent_to_max' must be true or false, got 'yes'"),
    "an unknown supervision": (_set("supervision", "bfs"),
                               "field 'supervision' is 'bfs'; this toolkit knows 'language', 'optimal'"),
    "an unknown data format": (_set("data_format", "rbs2"), "field 'data_format' is 'rbs2'; this toolkit knows "
                                                            "'sentences', 'edges', 'graph', 'rbs'"),
}


@pytest.mark.parametrize("name", sorted(COCONUT_JSON_REFUSED))
def test_a_coconut_json_that_cannot_be_read_is_refused_in_one_line(name, tmp_path, official_path):
    edit, message = COCONUT_JSON_REFUSED[name]
    ckpt = _copy(DEFAULT_CHECKPOINT, tmp_path / "ckpt")
    meta = json.loads((ckpt / "coconut.json").read_text())
    (ckpt / "coconut.json").write_text(json.dumps(edit(meta) or meta))
    assert one_line(["decode", "--ckpt", str(ckpt), "--data", str(official_path), "--index", "0"]) == \
        f"{ckpt / 'coconut.json'}: {message}"


def test_a_release_from_before_supervision_and_a_run_from_before_resuming_read_as_they_were_written(tmp_path):
    """checkpoints/prosqa-coconut's coconut.json has no `supervision` (it came later): it reads as "language", the
    only supervision there was. checkpoints/in-progress's epoch-010 is a `probe train` checkpoint whose trainer state
    predates resumable runs (global_step, no plan): it loads, release reads its history, and resuming from it is
    refused with what to do."""
    assert "supervision" not in json.loads((DEFAULT_CHECKPOINT / "coconut.json").read_text())
    assert load_checkpoint(DEFAULT_CHECKPOINT)[0].config.supervision == "language"
    run = CHECKPOINTS / "in-progress" / "prosqa-stage0"
    old = run / "epoch-010"
    state = json.loads((old / "trainer_state.json").read_text())
    assert "plan" not in state and "global_step" in state
    model, _ = load_checkpoint(old)
    assert model.config == CoconutConfig.from_dict(json.loads((old / "coconut.json").read_text()))
    phases = lineage(old, [run / "config.yaml"])
    assert [p.history for p in phases] == [state["history"]]
    with pytest.raises(CheckpointError) as e:
        RunState.load(old)
    assert str(e.value) == (f"{old / 'trainer_state.json'}: written by a coconut-probe from before runs could resume "
                            "(global_step, no plan): the checkpoint loads and `probe release` reads its history, but "
                            f"no run goes on from it; start a new run from it (config `load_model_path: {old}`)")
    broken = _copy(old, tmp_path / "broken")
    (broken / "trainer_state.json").write_text('{"history": [')
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    assert one_line(["release", "--ckpt", str(broken), "--out", str(tmp_path / "out"), "--data", str(config),
                     "--config", str(config)]) == \
        f"{broken / 'trainer_state.json'}: not a valid JSON file (Expecting value: line 1 column 14 (char 13))"


# ---------------------------------------------------------------------------- trace stores


@pytest.fixture(scope="module")
def tiny(word_tokenizer):
    sp = special_tokens(word_tokenizer)
    return CoconutModel(tiny_base("gpt2", len(word_tokenizer), sp.eos_id), CoconutConfig.from_special(sp))


HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tiny, word_tokenizer, official_items, tmp_path_factory):
    """A store of 5 items in shards of 2, 2 and 1, and the same items captured in memory."""
    path = tmp_path_factory.mktemp("store") / "t"
    capture_to_disk(tiny, word_tokenizer, official_items[:5], path, k=2, names=[HOOK], shard_size=2, progress=False)
    return path, capture(tiny, word_tokenizer, official_items[:5], k=2, names=[HOOK], progress=False)


def _same(a, b) -> None:
    """The same items' traces: ids and positions exactly, activations up to the rounding of another batching."""
    for name in ("indices", "positions", "prompt_ids"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for x, y in ((a.thoughts, b.thoughts), (a.logits, b.logits), (a[HOOK], b[HOOK])):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_a_store_merged_from_ranks_and_one_from_before_first_index_read_as_one_capture(store, tiny, word_tokenizer,
                                                                                       official_items, tmp_path):
    """What a torchrun capture leaves (each rank's store of its block, merged by rank 0: shards under rank-N/) reads
    as the single capture; so does a manifest written before first_index and max_new_tokens existed."""
    path, mem = store
    parts = tmp_path / ".t.parts"
    for rank, (start, stop) in enumerate(((0, 3), (3, 5))):
        capture_to_disk(tiny, word_tokenizer, official_items[start:stop], parts / f"rank-{rank:05d}", k=2,
                        names=[HOOK], shard_size=2, first_index=start, progress=False)
    merged = merge_stores([parts / "rank-00000", parts / "rank-00001"], tmp_path / "merged")
    assert merged.manifest["ranks"] == 2
    assert merged.manifest["shards"][0]["file"] == "rank-00000/shard-00000.safetensors"
    _same(merged.load(), mem)
    old = tmp_path / "old"
    shutil.copytree(path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["first_index"], manifest["max_new_tokens"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    _same(TraceStore(old).load(), mem)


def _manifest(edit):
    def change(path):
        m = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps(edit(m) or m))
    return change


def _shard(edit):
    def change(path):
        file = path / "shard-00001.safetensors"
        tensors = load_file(str(file))
        save_file(edit(tensors) or tensors, str(file))
    return change


def _truncate(path):
    file = path / "shard-00001.safetensors"
    file.write_bytes(file.read_bytes()[:-16])


STORE_REFUSED = {  # name: (what is done to the store, the message with {store} and {manifest})
    "a newer format": (_manifest(_set("format", 2)), "{manifest}: format 2: " + NEWER.format("format", 1)),
    "a list": (_manifest(lambda m: [m]), "{manifest}: holds a JSON list, not the object a trace store manifest holds"),
    "no shards": (_manifest(_drop("shards")), "{manifest}: no field 'shards'"),
    "names not strings": (_manifest(_set("names", [1])),
                          "{manifest}: field 'names' must be a list of strings, got [1]"),
    "n_items its shards do not add up to": (_manifest(_set("n_items", 7)),
                                            "{manifest}: n_items is 7 but its shards hold 5; the manifest was edited "
                                            "or belongs to other shards: capture the data again"),
    "a shard outside the store": (_manifest(lambda m: m["shards"][0].update(file="../t/shard-00000.safetensors")),
                                  "{manifest}: shards[0] names '../t/shard-00000.safetensors', outside the store; a "
                                  "store's shards lie inside it"),
    "a shard file missing": (lambda p: (p / "shard-00002.safetensors").unlink(),
                             "{store}: missing shard file(s) ['shard-00002.safetensors']"),
    "a truncated shard": (_truncate, "{store}/shard-00001.safetensors: cannot read the shard (SafetensorError: Error "
                                     "while deserializing header: incomplete metadata, file not fully covered); the "
                                     "file is damaged or truncated: copy the store again or capture the data again"),
    "another store's shard": (_shard(lambda t: {k: v[:1] for k, v in t.items()}),
                              "{store}/shard-00001.safetensors: the shard holds 1 items but the manifest says 2; it is "
                              "not this store's shard: capture the data again"),
    "a shard without its indices": (_shard(_drop("trace.indices")),
                                    "{store}/shard-00001.safetensors: the shard holds no tensor trace.indices (1 "
                                    "missing); it is not this store's shard, or was damaged: capture the data again"),
}


@pytest.mark.parametrize("name", sorted(STORE_REFUSED))
def test_a_trace_store_that_cannot_be_read_is_refused_in_one_line(name, store, tmp_path):
    change, message = STORE_REFUSED[name]
    path = tmp_path / "t"
    shutil.copytree(store[0], path)
    change(path)
    with pytest.raises(CaptureError) as e:
        TraceStore(path).load()
    assert str(e.value) == message.format(store=path, manifest=path / "manifest.json")


# ---------------------------------------------------------------------------- tuned lens files


@pytest.fixture(scope="module")
def lens_file(tiny, tmp_path_factory):
    lens = TunedLens.for_model(tiny)
    torch.manual_seed(1)
    with torch.no_grad():
        for t in lens.translators:
            t.weight.add_(0.1 * torch.randn_like(t.weight))
    return lens.save(tmp_path_factory.mktemp("lens") / "lens.safetensors")


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


LENS_REFUSED = {  # name: (tensors, header) -> (tensors, header); the line after "{file}: "
    "a newer format": (lambda t, h: (t, {**h, "format": "coconut-probe tuned lens 3"}),
                       "tuned lens format 3: " + NEWER.format("tuned lens format", 2)),
    "a format that is no number": (lambda t, h: (t, {**h, "format": "coconut-probe tuned lens two"}),
                                   "tuned lens format 'two' is not a version number (1, 2, ...); the file was edited "
                                   "or damaged"),
    "a translator missing": (lambda t, h: ({k: v for k, v in t.items() if k != "1.bias"}, h),
                             "holds no tensor 1.bias (1 missing of the 4 its 2 layers need); the file is damaged: fit "
                             "the lens again"),
    "a translator too many": (lambda t, h: ({**t, "2.bias": t["1.bias"].clone()}, h),
                              "holds tensor 2.bias, which none of its 2 layers has; the file was edited or damaged: "
                              "fit the lens again"),
    "a translator of another width": (lambda t, h: ({**t, "0.bias": t["0.bias"][:8].clone()}, h),
                                      "tensor 0.bias has shape [8], but the lens's d_model 32 needs [32]; the file is "
                                      "damaged: fit the lens again"),
}


@pytest.mark.parametrize("name", sorted(LENS_REFUSED))
def test_a_lens_file_that_cannot_be_read_is_refused_in_one_line(name, lens_file, tiny, tmp_path):
    edit, message = LENS_REFUSED[name]
    tensors, header = edit(load_file(str(lens_file)), _header(lens_file))
    path = tmp_path / "lens.safetensors"
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(LensError) as e:
        TunedLens.load(path, tiny)
    assert str(e.value) == f"{path}: {message}"


THEIRS = ("not read: its unembed_hash (the unembedding as numpy prints it: its corners, to one decimal) cannot tell "
          "this model from one fine-tuned from it, where coconut-probe ties a lens to the exact final norm and "
          "unembedding; fit a lens for this checkpoint with "
          "`probe tuned-lens --ckpt CHECKPOINT --out FILE.safetensors`")
TUNED_LENS_LIBRARY = {  # version: (its config.json, what the refusal calls it)
    "0.1.1 and later": ({"base_model_name_or_path": "gpt2", "d_model": 128, "num_hidden_layers": 4, "bias": True,
                         "base_model_revision": None, "unembed_hash": "0" * 64, "lens_type": "linear_tuned_lens"},
                        "tuned-lens 0.1.1 or later, lens_type 'linear_tuned_lens', base_model_name_or_path 'gpt2'"),
    "0.1.0": ({"base_model_name_or_path": "gpt2", "d_model": 128, "num_hidden_layers": 4, "bias": True,
               "base_model_revision": None, "unemebd_hash": "0" * 64, "lens_type": "linear_tuned_lens"},
              "tuned-lens 0.1.0, lens_type 'linear_tuned_lens', base_model_name_or_path 'gpt2'"),
    "0.0.x": ({"bias": True, "extra_layers": 0, "include_input": True, "reuse_unembedding": True, "d_model": 128,
               "num_layers": 4, "vocab_size": 70}, "tuned-lens 0.0.x"),
}


@pytest.mark.parametrize("version", sorted(TUNED_LENS_LIBRARY))
def test_a_lens_the_tuned_lens_library_wrote_is_refused_by_name_and_version(version, tmp_path, official_path):
    """AlignmentResearch/tuned-lens's TunedLens.save: a directory of config.json and params.pt (torch.save of the
    translators: h + W h + b per hidden state, the embeddings' first). Its layout would map onto ours, but its
    unembed_hash cannot tie it to one model (tuned_lens.utils.tensor_hash: np.array_str at precision 1, which
    summarises a matrix past 1000 elements to its corners), so it is refused by name, the given directory or file."""
    config, called = TUNED_LENS_LIBRARY[version]
    theirs = tmp_path / "lens"
    theirs.mkdir()
    (theirs / "config.json").write_text(json.dumps(config))
    torch.save({f"{i}.{k}": torch.zeros(128, 128) if k == "weight" else torch.zeros(128) for i in range(4)
                for k in ("weight", "bias")}, theirs / "params.pt")
    for given in (theirs, theirs / "params.pt"):
        assert one_line(["decode", "--data", str(official_path), "--index", "0", "--lens", "tuned", "--lens-file",
                         str(given)]) == f"{given}: a lens written by the tuned-lens library ({called}), {THEIRS}"


def test_a_checkpoint_directory_given_as_a_lens_file_is_named_with_the_file_inside(official_path):
    inside = DEFAULT_CHECKPOINT / "tuned_lens.safetensors"
    assert one_line(["decode", "--data", str(official_path), "--index", "0", "--lens", "tuned", "--lens-file",
                     str(DEFAULT_CHECKPOINT)]) == (f"{DEFAULT_CHECKPOINT}: is a directory; give the tuned lens file "
                                                   f"itself (a checkpoint's is {inside})")


# ---------------------------------------------------------------------------- probe files


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    saved = SavedProbe(target="frontier", kind="classification", hook=HOOK, steps=[1, 2], names=["a", "b", "c"],
                       coef=torch.randn(2, 3, 8, generator=g).double().numpy(),
                       intercept=torch.randn(2, 3, generator=g).double().numpy(), model_hash="h" * 64,
                       metrics={"1": {"auroc": 0.9}})
    return saved.save(tmp_path_factory.mktemp("probe") / "pr")


def test_a_probe_json_with_a_key_it_does_not_know_reads_the_same_probe(probe_dir, tmp_path):
    path = tmp_path / "pr"
    shutil.copytree(probe_dir, path)
    meta = json.loads((path / "probe.json").read_text())
    (path / "probe.json").write_text(json.dumps({**meta, "written_by": "a later script"}))
    a, b = SavedProbe.load(probe_dir), SavedProbe.load(path, hashed_as("h" * 64))
    X = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).double().numpy()
    assert (a.steps, a.names, a.hook, a.metrics) == (b.steps, b.names, b.hook, b.metrics)
    assert (a.read(X, 2, ["c", "a"]) == b.read(X, 2, ["c", "a"])).all()


def _meta(edit):
    def change(path):
        m = json.loads((path / "probe.json").read_text())
        (path / "probe.json").write_text(json.dumps(edit(m) or m))
    return change


def _weights(edit):
    def change(path):
        t = load_file(str(path / "probe.safetensors"))
        save_file({k: v.contiguous() for k, v in (edit(t) or t).items()}, str(path / "probe.safetensors"))
    return change


PROBE_REFUSED = {  # name: (what is done to the probe directory, the message with {json} and {weights})
    "a newer format": (_meta(_set("format", 2)), "{json}: format 2: " + NEWER.format("format", 1)),
    "no format": (_meta(_drop("format")), "{json}: no format; every coconut-probe that writes this file records one, "
                                          "so this one was not written by coconut-probe (or was edited)"),
    "a list": (_meta(lambda m: [m]), "{json}: holds a JSON list, not the object a probe.json holds"),
    "no model hash": (_meta(_drop("model_hash")), "{json}: no field 'model_hash'"),
    "thoughts as strings": (_meta(_set("steps", ["1", "2"])),
                            "{json}: field 'steps' must be a list of integers, got ['1', '2']"),
    "an unknown kind": (_meta(_set("kind", "svm")),
                        "{json}: field 'kind' is 'svm'; this toolkit knows 'classification', 'regression'"),
    "no coef": (_weights(_drop("coef")),
                "{weights}: holds no tensor 'coef'; the file is damaged: fit the probe again"),
    "an intercept of another shape": (_weights(lambda t: {**t, "intercept": t["intercept"][:, :2]}),
                                      "{weights}: intercept has shape [2, 2], expected [2, 3] (one per thought and "
                                      "name of probe.json)"),
}


@pytest.mark.parametrize("name", sorted(PROBE_REFUSED))
def test_a_probe_file_that_cannot_be_read_is_refused_in_one_line(name, probe_dir, tmp_path):
    change, message = PROBE_REFUSED[name]
    path = tmp_path / "pr"
    shutil.copytree(probe_dir, path)
    change(path)
    with pytest.raises(ProbeError) as e:
        SavedProbe.load(path, hashed_as("h" * 64))
    assert str(e.value) == message.format(json=path / "probe.json", weights=path / "probe.safetensors")


def test_a_frontier_probe_given_as_the_halting_probe_is_named_with_the_command_that_writes_one(official_path):
    frontier = DEFAULT_CHECKPOINT / "probes" / "frontier"
    assert one_line(["eval", "--data", str(official_path), "--limit", "1", "--halt", str(frontier)]) == (
        f"{frontier / 'probe.json'}: a 'frontier' probe, not the 'halt' probe asked for; give one that `probe probes "
        "halt` wrote")


# ---------------------------------------------------------------------------- reports read by probe findings


def _reports():
    from test_findings import analysis, interventions

    return analysis("prosqa-coconut", "coconut", 1.0), interventions()


AGAIN = "; the file was edited or damaged: run `probe {}` again"
REPORT_REFUSED = {  # name: (option, what is done to that report, the line after "{report.json}: ")
    "an analysis without its checkpoint": ("--analysis", _drop("checkpoint"),
                                           "has no field 'checkpoint'" + AGAIN.format("analyze")),
    "a control without its checkpoint": ("--analysis", lambda a: a.update(control={"mode": "pause_as_thought"}),
                                         "control has no field 'checkpoint'" + AGAIN.format("analyze")),
    "a measure as a list": ("--analysis", _set("frontier_value_mass", [0.1, 0.2]),
                            "frontier_value_mass must be an object keyed by thought or layer, got [0.1, 0.2]" +
                            AGAIN.format("analyze")),
    "a value as text": ("--analysis", lambda a: a["accuracy_by_k"].update({"1": "90%"}),
                        "accuracy_by_k.1 must be a number or null, got '90%'" + AGAIN.format("analyze")),
    "accuracies keyed by words": ("--interventions", lambda i: i["reports"][0].update(accuracy_by_k={"zero": 0.5}),
                                  "reports[0].accuracy_by_k has the key 'zero', not a thought or layer number" +
                                  AGAIN.format("intervene")),
    "a steering point without alpha": ("--interventions",
                                       lambda i: _drop("alpha")(i["reports"][0]["steering"]["points"][0]),
                                       "reports[0].steering.points[0] has no field 'alpha'" +
                                       AGAIN.format("intervene")),
    "no model's report": ("--interventions", _set("reports", []), "its 'reports' list is empty: no model was run"),
}


@pytest.mark.parametrize("name", sorted(REPORT_REFUSED))
def test_a_report_findings_cannot_read_is_refused_in_one_line(name, tmp_path):
    option, edit, message = REPORT_REFUSED[name]
    report = _reports()[option == "--interventions"]
    edit(report)
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert one_line(["findings", option, str(tmp_path)]) == f"{option} {tmp_path / 'report.json'}: {message}"


def test_a_report_that_lacks_a_measure_reads_with_a_dash_there(tmp_path):
    """A report of a coconut-probe that measured less (no superposition; a patching run without its names row): those
    cells are dashes, as for a model not measured, and every other cell is as before."""
    from probe.analyses.findings import findings_markdown

    analysis, interventions = _reports()
    del analysis["superposition"]
    for run in interventions["reports"][0]["patching"]["thought"]:
        run.pop("names_a_root", None)
    for name, report in (("an", analysis), ("iv", interventions)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    r = runner.invoke(app, ["findings", "--analysis", str(tmp_path / "an"), "--interventions", str(tmp_path / "iv")])
    assert r.exit_code == 0, r.output
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in r.stdout.splitlines()
            if line.startswith("| ") and " | " in line}
    assert rows["share of thought k's NNLS decomposition on frontier_k (R²), k = 1 / 2"] == "- (-) / - (-)"
    assert rows["all thoughts patched A -> B (%): B names A's person / A's concept"] == "- / 90.0 (unpatched 0.0 / 5.0)"
    whole = _reports()
    assert rows["frontier value mass, k = 1 / 2"] == \
        {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in findings_markdown(*whole).splitlines()
         if line.startswith("| ")}["frontier value mass, k = 1 / 2"]
