"""Never a silent wrong answer, never lost work: one writer per output, interruptions and resource limits leave
every output as it was (or whole), each refusal is one line, and every check that can come before the work does."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe.atomic import OutputRefused, atomic_directory, claim, interruptible, lock_file, replace_directory
from probe.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "TOKENIZERS_PARALLELISM": "false"}

# another run holding outputs: `probe.atomic.claim` on each path given, until its stdin closes
HOLDER = """import sys
from contextlib import ExitStack
from pathlib import Path
from probe.atomic import claim
with ExitStack() as stack:
    for p in sys.argv[1:]:
        stack.enter_context(claim(p, existing=True, directory=not Path(p).is_file()))
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(*paths: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)], env=ENV, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def leftovers(folder: Path) -> list[str]:
    """Hidden names in folder: temporaries, old copies, lock files."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def signal_guard():
    """Signals sent to this process: should the CLI not turn them into its one-line exit, the test fails (instead
    of pytest being stopped or killed)."""

    class Escaped(Exception):
        pass

    def escaped(signum, frame):
        raise Escaped(f"signal {signum} escaped the CLI")

    previous = {s: signal.signal(s, escaped) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


# ------------------------------------------------------------------------------------------ one writer per output

def test_a_claim_refuses_another_runs_output_and_an_existing_one(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    holder = hold(out)
    with pytest.raises(OutputRefused) as e:
        with claim(out, directory=True):
            pass
    assert str(e.value) == (f"--out {out}: another run is writing it (pid {holder.pid}); wait for it to end, or "
                            f"choose another path")
    holder.kill()  # a run killed outright: the system releases its lock, and its lock file is no obstacle
    holder.wait()
    assert lock_file(out).exists()
    with claim(out, directory=True) as held:
        assert lock_file(out).read_text().strip() == str(os.getpid())
        with atomic_directory(out) as tmp:
            (tmp / "report.json").write_text("{}")
    assert held.outcome() == "it was written before that"
    assert not lock_file(out).exists() and leftovers(out.parent) == []
    # an existing output: refused without overwrite; with it, only a directory of the command's own files
    with pytest.raises(OutputRefused, match="already exists; pass --overwrite to replace it"):
        with claim(out, directory=True):
            pass
    with claim(out, directory=True, overwrite=True, markers=("report.json",)):
        pass
    with pytest.raises(OutputRefused, match=r"holds something else \(no manifest.json\); --overwrite replaces only"):
        with claim(out, directory=True, overwrite=True, markers=("manifest.json",)):
            pass
    # the parents a claim made are removed again when the run leaves nothing in them
    with claim(tmp_path / "a" / "b" / "x.json") as held:
        assert (tmp_path / "a" / "b").is_dir()
    assert held.outcome() == "nothing was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_a_folder_that_refuses_the_lock_file_is_refused_before_the_work(tmp_path, monkeypatch):
    """Permissions can say yes where the file system says no (a read-only mount, an immutable folder, root):
    the claim's real test is making its lock file there."""
    real = os.open

    def refusing(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(30, "Read-only file system", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(OutputRefused) as e:
        with claim(tmp_path / "out.json", option="--json"):
            pass
    assert str(e.value) == f"--json {tmp_path / 'out.json'}: cannot write in {tmp_path} (Read-only file system)"


def commands(tmp_path: Path, data: Path) -> dict[str, tuple[list[str], str, Path]]:
    """Every command that writes: (its arguments, the option naming the output, the output)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: run\nout_dir: {tmp_path / 'unused'}\n")
    card = tmp_path / "ckpt"
    card.mkdir(exist_ok=True)
    (card / "README.md").write_text("# a card\n")
    f = d = lambda name: tmp_path / "outs" / name  # noqa: E731  (a file, a directory)
    data_ = ["--data", str(data)]
    return {
        "data generate": (["data", "generate", "--n", "2", "--out", str(f("gen.json"))], "--out", f("gen.json")),
        "train": (["train", "--config", str(cfg), "--out-dir", str(d("run"))], "--out-dir", d("run")),
        "eval": (["eval", *data_, "--json", str(f("eval.json"))], "--json", f("eval.json")),
        "release": (["release", "--ckpt", str(card), "--out", str(d("rel")), *data_, "--config", str(cfg)], "--out",
                    d("rel")),
        "decode": (["decode", *data_, "--index", "0", "--json", str(f("decode.json"))], "--json", f("decode.json")),
        "capture": (["capture", *data_, "--out", str(d("cap"))], "--out", d("cap")),
        "analyze": (["analyze", *data_, "--out", str(d("an"))], "--out", d("an")),
        "analyze --update-card": (["analyze", *data_, "--ckpt", str(card), "--update-card", "--out", str(d("an2"))],
                                  "--update-card", card / "README.md"),
        "tuned-lens": (["tuned-lens", "--out", str(f("lens.safetensors"))], "--out", f("lens.safetensors")),
        "rbs-notebook": (["rbs-notebook", *data_, "--json", str(f("notebook.json"))], "--json", f("notebook.json")),
        "intervene": (["intervene", *data_, "--out", str(d("iv"))], "--out", d("iv")),
        "findings": (["findings", "--analysis", str(tmp_path), "--out", str(f("findings.md"))], "--out",
                     f("findings.md")),
        "probes fit": (["probes", "fit", *data_, "--out", str(d("pf"))], "--out", d("pf")),
        "probes halt": (["probes", "halt", "--out", str(d("ph"))], "--out", d("ph")),
        "sae train": (["sae", "train", "--out", str(d("sae"))], "--out", d("sae")),
    }


@pytest.fixture
def no_work(monkeypatch):
    """Any command that begins its work (reads its data, generates items, loads a model, trains, releases, reads
    a report) fails the test: a refusal must come before all of it."""
    import probe.data.generate
    import probe.data.prosqa
    import probe.analyses.findings
    import probe.model.checkpoint
    import probe.release.build
    import probe.train.loop

    def work(*args, **kwargs):
        raise RuntimeError("the work began before the output was claimed")

    for module, name in ((probe.data.prosqa, "load_items"), (probe.data.generate, "generate_items"),
                         (probe.model.checkpoint, "load_checkpoint"), (probe.train.loop, "train"),
                         (probe.release.build, "release"), (probe.analyses.findings, "findings_markdown")):
        monkeypatch.setattr(module, name, work)


def test_every_writing_command_refuses_an_output_another_run_is_writing(tmp_path, official_path, no_work):
    runs = commands(tmp_path, official_path)
    holder = hold(*(out for _, _, out in runs.values()))
    try:
        for name, (args, option, out) in runs.items():
            r = runner.invoke(app, args)
            assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (name, r.output[-1500:])
            assert r.stderr.strip() == (f"error: {option} {out}: another run is writing it (pid {holder.pid}); "
                                        f"wait for it to end, or choose another path"), (name, r.stderr)
            assert r.stdout == "", name
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (tmp_path / "outs").exists()


def test_every_writing_command_refuses_an_existing_output_without_overwrite(tmp_path, official_path, no_work):
    runs = commands(tmp_path, official_path)
    for name, (args, option, out) in runs.items():
        if name == "analyze --update-card":
            continue  # the card is updated in place: that is what the option asks for
        if name == "train":
            (out / "epoch-001").mkdir(parents=True)
            continue
        if out.suffix:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("old")
        else:
            out.mkdir(parents=True)
            (out / "old").write_text("old")
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (name, r.output[-1500:])
        assert r.stderr.strip() == (f"error: {option} {out}: already exists; pass --overwrite to replace it, or choose "
                                    f"another path"), (name, r.stderr)
        # --overwrite never replaces what is not this command's output
        if not out.suffix and name != "train":
            r = runner.invoke(app, [*args, "--overwrite"])
            assert r.exit_code == 2 and "holds something else (no " in r.stderr, (name, r.stderr)
        assert (out.read_text() if out.suffix else (out / "old").read_text()) == "old", name
    args, _, out = runs["train"]
    r = runner.invoke(app, args)
    assert r.stderr.strip() == (f"error: --out-dir {out}: holds checkpoints already; pass --resume to continue it, "
                                f"or choose another --out-dir")
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "run.yaml"), "--out-dir", str(tmp_path / "none"),
                            "--resume"])
    assert r.stderr.strip() == (f"error: --out-dir {tmp_path / 'none'}: nothing to resume (no complete epoch-* "
                                "checkpoint)")
    assert leftovers(tmp_path / "outs") == [] and not (tmp_path / "none").exists()


def test_two_analyze_runs_into_one_folder_one_writes_the_other_is_refused(tmp_path, official_path):
    """The issue's case: the default and the pause control started together with the same --out."""
    out = tmp_path / "analysis"
    first = subprocess.Popen([sys.executable, "-m", "probe.cli", "analyze", "--data", str(official_path), "--limit",
                              "2", "--k-max", "1", "--out", str(out)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lock = lock_file(out)
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    pause = ROOT / "checkpoints" / "prosqa-pause"
    second = runner.invoke(app, ["analyze", "--ckpt", str(pause), "--data", str(official_path), "--limit", "2",
                                 "--k-max", "1", "--out", str(out)])
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert second.exit_code == 2 and second.stderr.strip() == (
        f"error: --out {out}: another run is writing it (pid {first.pid}); wait for it to end, or choose another path")
    assert json.loads((out / "report.json").read_text())["mode"] == "coconut"  # the first run's, whole
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_the_output_whole(tmp_path):
    out = tmp_path / "gen.json"
    for n in ("2", "3"):
        r = runner.invoke(app, ["data", "generate", "--n", n, "--out", str(out), "--overwrite"])
        assert r.exit_code == 0, r.output
        assert len(json.loads(out.read_text())) == int(n)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.json"]


# ------------------------------------------------------------------------------------------ interruptions

def test_sigterm_during_capture_leaves_nothing(tmp_path, official_path):
    """The issue's case: SIGTERM (timeout, Slurm, kill) while the shards are being written."""
    out = tmp_path / "trace"
    p = subprocess.Popen([sys.executable, "-m", "probe.cli", "capture", "--data", str(official_path), "--limit", "60",
                          "--shard-size", "1", "--max-new-tokens", "0", "--out", str(out)],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not any(t.glob("*.safetensors") for t in tmp_path.glob(".trace.tmp*")) and time.time() < deadline:
        assert p.poll() is None, p.communicate()
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error") or "Traceback" in line]
    assert lines == [f"error: interrupted (SIGTERM); --out {out}: nothing was written"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_analyze_replaces_its_output_keeps_the_old_one(tmp_path, official_path, monkeypatch,
                                                                    signal_guard):
    import probe.cli.analyze as thoughts

    out = tmp_path / "an"
    out.mkdir()
    for name in ("report.json", "summary.md", "frontier_mass.html"):  # an earlier run's output
        (out / name).write_text(f"the earlier {name}")
    args = ["analyze", "--data", str(official_path), "--limit", "2", "--k-max", "1", "--out", str(out)]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write = thoughts.write_html
    calls = []

    def interrupted_write(fig, path):
        calls.append(path)
        if len(calls) == 3:  # some figures of the new output are written, the rest are not
            os.kill(os.getpid(), signal.SIGINT)
        write(fig, path)

    monkeypatch.setattr(thoughts, "write_html", interrupted_write)
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 130, (r.exception, r.output[-1500:])
    assert r.stderr.splitlines()[-1] == f"error: interrupted (SIGINT); --out {out}: it is as it was before the run"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["an"]


def test_sigterm_while_train_writes_a_checkpoint_keeps_the_complete_ones_and_resume_goes_on(
        tmp_path, official_path, monkeypatch, signal_guard):
    import probe.train.state as run_state

    cfg = tmp_path / "tiny.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"name: tiny\nout_dir: {run}\nmodel: {{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2}}\n"
                   "train_size: 16\nbatch_size: 16\nnum_epochs: 3\nepochs_per_stage: 1\nmax_latent_stage: 1\n"
                   "keep_checkpoints: 1\n")
    save_file, saves = run_state.save_file, []

    def stopped_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the second checkpoint: its model is written, its optimizer is being written
            os.kill(os.getpid(), signal.SIGTERM)
        save_file(*args, **kwargs)

    monkeypatch.setattr(run_state, "save_file", stopped_save)
    r = runner.invoke(app, ["train", "--config", str(cfg)])
    assert r.exit_code == 143, (r.exception, r.output[-1500:])
    assert r.stderr.splitlines()[-1] == (f"error: interrupted (SIGTERM); out_dir ({cfg}) {run}: its complete "
                                         f"checkpoints are kept (last: epoch-001; --resume continues from it)")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "epoch-001"]
    monkeypatch.setattr(run_state, "save_file", save_file)
    r = runner.invoke(app, ["train", "--config", str(cfg), "--resume"])
    assert r.exit_code == 0, r.output[-1500:]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "epoch-003"]  # pruned whole, nothing hidden
    assert leftovers(tmp_path) == []


def test_a_signal_during_the_swap_waits_until_the_new_output_is_in_place(tmp_path, monkeypatch, signal_guard):
    """The renames that replace an output are not cut in two: the signal is raised once the new one is in place;
    and if the second rename fails, the old output is put back."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    rename = Path.rename

    def signalled(self, target):
        if Path(target).name == ".out.old":
            os.kill(os.getpid(), signal.SIGTERM)
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", signalled)
    with pytest.raises(KeyboardInterrupt) as e:
        with interruptible():
            with atomic_directory(out, replace=True) as tmp:
                (tmp / "f").write_text("new")
    assert e.value.name == "SIGTERM"
    assert (out / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    def failing(self, target):
        if Path(target) == out and self.name != ".out.old":
            raise OSError(28, "No space left on device", str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(OSError):
        replace_directory(src, out)
    assert (out / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ------------------------------------------------------------------------------------------ resources

def test_a_file_size_limit_during_capture_is_one_line_and_leaves_nothing(tmp_path, official_path):
    """The issue's case: `ulimit -f` while safetensors writes a shard (its error used to escape as a traceback)."""
    out = tmp_path / "trace"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    p = subprocess.run([sys.executable, "-m", "probe.cli", "capture", "--data", str(official_path), "--limit", "1",
                        "--max-new-tokens", "0", "--out", str(out)], env=ENV, capture_output=True, text=True,
                       preexec_fn=limit, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and p.stderr.splitlines()[-1] == (
        f"error: --out {out}: File too large: the file-size limit (ulimit -f) is reached; nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_naming_the_output(tmp_path, official_path, monkeypatch):
    """safetensors says ENOSPC in words only (a SafetensorError, not an OSError): it is read and named."""
    import probe.capture.trace as capture_mod
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(capture_mod, "save_file", full)
    out = tmp_path / "deep" / "trace"
    r = runner.invoke(app, ["capture", "--data", str(official_path), "--limit", "1", "--out", str(out)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output[-1500:]
    assert r.stderr.splitlines()[-1] == f"error: --out {out}: No space left on device; nothing was written"
    assert list(tmp_path.iterdir()) == []  # the folder the claim made for it is gone too


def _obey_permissions() -> None:
    """Run the command as a root that obeys folder permissions: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
    from the bounding set (prctl PR_CAPBSET_DROP), so that the exec'd process does not get them back."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_folder_is_refused_before_any_work(tmp_path, official_path):
    """The issue's case: `probe analyze --out` into a read-only folder was refused only after all the work."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        out = ro / "analysis"
        p = subprocess.run([sys.executable, "-m", "probe.cli", "analyze", "--data", str(official_path), "--limit", "2",
                            "--out", str(out)], env=ENV, capture_output=True, text=True, preexec_fn=_obey_permissions,
                           timeout=300)
        assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr[-2000:])
        # one line and nothing else: no progress bar, so no work began
        assert p.stderr == f"error: --out {out}: cannot write in {ro} (Permission denied)\n"
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
