"""`probe`: the command line. Each sub-command is a thin layer over a library function."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-file bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


app = typer.Typer(help="Interpretability toolkit for Coconut (continuous thought) models.", no_args_is_help=True)
data_app = typer.Typer(help="ProsQA data: generate and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main() -> None:
    """Interpretability toolkit for Coconut (continuous thought) models."""
    _quiet_transformers()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# Every input error of the library (DataError, CheckpointError, TokenizerError, ConfigError)
# is a ValueError; the CLI reports it as one line instead of a traceback.
InputError = ValueError


def _dtype(name: Optional[str]):
    import torch

    if name is None:
        return None
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        _fail(f"--dtype: expected one of {', '.join(table)}, got {name!r}")
    return table[name]


def _device(name: str) -> str:
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {name}: no CUDA device is available")
    return name


@data_app.command("generate")
def data_generate(
    n: int = typer.Option(..., "--n", min=1, help="Number of items."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path = typer.Option(..., "--out", help="Output JSON file (official ProsQA format)."),
) -> None:
    """Generate ProsQA items with the paper's construction."""
    from probe.data.generate import dataset_stats, generate_items
    from probe.data.prosqa import save_items

    items = generate_items(n, seed=seed, progress=True)
    save_items(items, out)
    s = dataset_stats(items)
    typer.echo(f"wrote {n} items to {out}: mean nodes {s.mean_nodes:.2f}, edges {s.mean_edges:.2f}, steps {s.mean_steps:.2f}")


@data_app.command("stats")
def data_stats(path: Path = typer.Argument(..., help="A ProsQA JSON file.")) -> None:
    """Validate a ProsQA file and print its statistics."""
    from probe.data.generate import dataset_stats
    from probe.data.prosqa import load_items

    try:
        items = load_items(path)
    except InputError as e:
        _fail(str(e))
    s = dataset_stats(items)
    typer.echo(json.dumps({"n": len(items), **{k: v for k, v in vars(s).items()}}, indent=1, default=str))


@app.command()
def train(
    config: Path = typer.Option(..., "--config", help="A training YAML file."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Train a Coconut model (or a baseline) with the multi-stage curriculum."""
    from probe.train import TrainConfig, train as run

    try:
        cfg = TrainConfig.from_yaml(config)
        result = run(cfg, resume=resume, device=_device(device), on_epoch=lambda r: typer.echo(json.dumps(r)))
    except InputError as e:
        _fail(str(e))
    typer.echo(f"last checkpoint: {result.last_checkpoint}")


def _default_ckpt(ckpt: Optional[Path]) -> Path:
    from probe.model.checkpoint import default_checkpoint

    return ckpt if ckpt is not None else default_checkpoint()


def _load(ckpt: Optional[Path], base: Optional[Path], device: str, dtype: Optional[str] = None):
    from probe.model.checkpoint import load_checkpoint

    return load_checkpoint(_default_ckpt(ckpt), base=base, device=_device(device), dtype=_dtype(dtype))


CKPT_HELP = "Our checkpoint directory, or an official state-dict file (default: the shipped checkpoints/prosqa-coconut)."


@app.command("eval")
def eval_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    device: str = typer.Option("cpu", "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write per-item predictions here (with --halt: the "
                                                                 "halting result, and its figure beside it as .html)."),
    halt: Optional[Path] = typer.Option(None, "--halt", help="A halting probe (probe probes halt): stop each "
                                                             "item's thoughts when it fires."),
    threshold: float = typer.Option(0.5, "--threshold", help="With --halt: stop when P(right answer) reaches this."),
) -> None:
    """Accuracy by the official rule (greedy, at most 128 new tokens, answer after the last '#')."""
    from probe.data.prosqa import atomic_write_text, load_items
    from probe.evaluate import evaluate

    try:
        items = load_items(data, limit=limit)
        model, tok = _load(ckpt, base, device, dtype)
        if halt is not None:
            from probe.probes import SavedProbe, halting_eval, model_weights_hash

            result = halting_eval(model, tok, items, SavedProbe.load(halt, model_weights_hash(model)),
                                  threshold=threshold, batch_size=batch_size)
        else:
            res = evaluate(model, tok, items, k=k, batch_size=batch_size)
    except InputError as e:
        _fail(str(e))
    if halt is not None:
        if json_out:
            from probe.viz import halting

            atomic_write_text(json_out, json.dumps(result.as_dict(), indent=1))
            halting(result.as_dict()).write_html(json_out.with_suffix(".html"), include_plotlyjs=True)
        fixed = ", ".join(f"k={k}: {a:.3f}" for k, a in result.fixed.items())
        typer.echo(f"halting probe: accuracy {result.accuracy:.4f} with {result.mean_thoughts:.2f} thoughts on average "
                   f"(fixed {fixed})")
        return
    if json_out:
        atomic_write_text(json_out, json.dumps(res.to_json(), indent=1))
    typer.echo(
        f"accuracy {res.accuracy:.4f} ({sum(r.correct for r in res.items)}/{res.n}), "
        f"mean generated tokens {res.mean_generated_tokens:.1f}"
    )


@app.command()
def release(
    ckpt: Path = typer.Option(..., "--ckpt", help="A checkpoint written by `probe train` (epoch-XXX)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the released checkpoint to."),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file to measure accuracy on (the validation split)."),
    config: list[Path] = typer.Option(..., "--config", help="The training config of each phase, oldest first."),
    name: Optional[str] = typer.Option(None, "--name", help="Title of the model card (default: the --out name)."),
    summary: str = typer.Option("", "--summary", help="A paragraph for the top of the model card."),
) -> None:
    """Evaluate a trained checkpoint at every forced k; write it without optimizer state, with its model card."""
    from probe.release import release as run

    try:
        rel = run(ckpt, out, data, config, name=name, summary=summary)
    except InputError as e:
        _fail(str(e))
    ev = rel.evaluation
    accs = ", ".join(f"k={k}: {a:.3f}" for k, a in ev.accuracy_by_k.items())
    typer.echo(f"wrote {rel.path}: accuracy {ev.accuracy:.4f} at the default k={ev.default_k} ({accs})")


def _items(data: Optional[Path], n: int, seed: int, limit: Optional[int] = None):
    """Items from a file, or n generated ones (seed) when no file is given."""
    from probe.data.generate import generate_items
    from probe.data.prosqa import load_items

    return load_items(data, limit=limit) if data else generate_items(n, seed=seed)


def _new_out(out: Path) -> None:
    if out.exists():
        _fail(f"--out {out}: already exists; choose a new directory")


def _item(data: Path, index: int):
    from probe.data.prosqa import load_items

    items = load_items(data)
    if not 0 <= index < len(items):
        _fail(f"--index {index} is out of range: {data} has {len(items)} items (0..{len(items) - 1})")
    return items[index]


def _layers(spec: Optional[str]) -> Optional[list[int]]:
    if spec is None:
        return None
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        _fail(f"--layers: expected comma-separated integers such as 0,2,-1, got {spec!r}")


@app.command()
def decode(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    index: int = typer.Option(..., "--index", help="Which item of the file."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    lens: str = typer.Option("logit", "--lens", help="logit or tuned."),
    lens_file: Optional[Path] = typer.Option(None, "--lens-file",
                                             help="A tuned lens (default: tuned_lens.safetensors in the checkpoint)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers, e.g. 0,2,-1 (default: all)."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    top: int = typer.Option(5, "--top", min=1, help="Top tokens per layer."),
    device: str = typer.Option("cpu", "--device"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the readings as JSON here."),
) -> None:
    """What every thought holds at every layer (logit or tuned lens), with frontier nodes marked."""
    from probe.data.prosqa import atomic_write_text
    from probe.decode import decode_item
    from probe.lens import TunedLens

    if lens not in ("logit", "tuned"):
        _fail(f"--lens: expected logit or tuned, got {lens!r}")
    try:
        item = _item(data, index)
        model, tok = _load(ckpt, base, device)
        tuned = None
        if lens == "tuned":
            path = lens_file or _default_ckpt(ckpt) / "tuned_lens.safetensors"
            tuned = TunedLens.load(path, model)
        res = decode_item(model, tok, item, index=index, k=k, lens=tuned, layers=_layers(layers), top=top)
    except InputError as e:
        _fail(str(e))
    _print_decoded(res)
    if json_out:
        atomic_write_text(json_out, json.dumps(res.to_json(), indent=1))


def _print_decoded(res) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    console.print(f"[bold]item {res.index}[/bold]: {res.question}")
    for step in [*res.thoughts, res.answer_step]:
        what = "first answer position" if step.is_answer else f"thought {step.k}"
        frontier = set(step.frontier)
        table = Table(title=f"{what} ({res.lens} lens) · frontier_{step.k}: {', '.join(step.frontier) or '-'}",
                      title_justify="left")
        table.add_column("layer", justify="right")
        table.add_column("top tokens (* = frontier node)")
        table.add_column("frontier mass", justify="right")
        for r in step.layers:
            tops = "  ".join(f"{'*' if t in frontier else ''}{t} {p:.2f}" for t, p in r.top)
            table.add_row(str(r.layer), tops, f"{r.frontier_mass:.3f}")
        console.print(table)
    mark = "[green]correct[/green]" if res.correct else f"[red]wrong[/red] (expected: {res.answer})"
    console.print(f"answer: {res.prediction} {mark}")


@app.command("capture")
def capture_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    out: Path = typer.Option(..., "--out", help="New directory for the safetensors shards and manifest.json."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    hooks: Optional[list[str]] = typer.Option(None, "--hooks", help="Hook-name globs, e.g. '*hook_resid_post' (repeatable)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: all)."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage dtype: float32, bfloat16 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Items per shard file."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Stream every thought of a data set, at every layer, to disk (safetensors shards + manifest)."""
    from probe.capture import architecture, capture_to_disk, select_hooks
    from probe.data.prosqa import load_items

    try:
        items = load_items(data, limit=limit)
        model, tok = _load(ckpt, base, device)
        names = select_hooks(architecture(model).n_layers, hooks, _layers(layers))
        store = capture_to_disk(model, tok, items, out, k=k, names=names, dtype=_dtype(dtype), batch_size=batch_size,
                                shard_size=shard_size, source={"ckpt": str(_default_ckpt(ckpt)), "data": str(data)})
    except InputError as e:
        _fail(str(e))
    size = sum(f.stat().st_size for f in store.path.iterdir()) / 2**20
    typer.echo(f"wrote {len(store)} items, k={store.k}, {len(store.names)} hooks, {store.n_shards} shard(s), "
               f"{size:.1f} MB to {store.path}")


@app.command("analyze")
def analyze_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    out: Path = typer.Option(..., "--out", help="New directory for report.json and one HTML figure per measure."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    control: Optional[Path] = typer.Option(None, "--control",
                                           help="A control checkpoint (pause-as-thought or CoT) measured the same way."),
    control_base: Optional[Path] = typer.Option(None, "--control-base", help="Base model directory of the control."),
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1, help="Thoughts to study (default: the checkpoint's)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N items."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device"),
    update_card: bool = typer.Option(False, "--update-card",
                                     help="Also write the summary into the checkpoint's model card (README.md)."),
) -> None:
    """The latent-search measures (values, height, parallelism, categories, superposition, attention) with plots."""
    from probe.analyze import analyze, markdown_summary, replace_card_section
    from probe.data.prosqa import atomic_directory, atomic_write_text, load_items
    from probe.viz import FIGURES

    _new_out(out)
    try:
        items = load_items(data, limit=limit)
        model, tok = _load(ckpt, base, device)
        main = analyze(model, tok, items, k_max=k_max, batch_size=batch_size, checkpoint=str(_default_ckpt(ckpt)))
        ctrl = None
        if control is not None:
            c_model, c_tok = _load(control, control_base, device)
            ctrl = analyze(c_model, c_tok, items, k_max=main.k_max, batch_size=batch_size, checkpoint=str(control))
    except InputError as e:
        _fail(str(e))
    report = main.report()
    if ctrl is not None:
        report["control"] = ctrl.report()
    summary = markdown_summary(report, data=data.name)
    with atomic_directory(out) as tmp:
        atomic_write_text(tmp / "report.json", json.dumps(report, indent=1))
        atomic_write_text(tmp / "summary.md", summary)
        for name, figure in FIGURES.items():
            figure(main, ctrl).write_html(tmp / f"{name}.html", include_plotlyjs=True)
    _print_analysis(main, ctrl)
    typer.echo(f"wrote {out}/report.json, summary.md and {len(FIGURES)} figures")
    if update_card:
        card = Path(main.checkpoint) / "README.md"
        if not card.is_file():
            _fail(f"--update-card: {card} does not exist (only our checkpoint directories have a model card)")
        atomic_write_text(card, replace_card_section(card.read_text(), summary))
        typer.echo(f"updated {card}")


def _num(v: float | None) -> str:
    """A score for people: three decimals, or '-' where it is undefined (None or nan)."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _print_analysis(main, ctrl) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    table = Table(title="frontier measures by thought k (model | control)", title_justify="left")
    for col in ("k", "frontier mass", "top-1", "top-3", "<t,optimal>", "<t,frontier>", "<t,reachable>",
                "<t,unreachable>", "accuracy"):
        table.add_column(col, justify="right")

    def cell(fn) -> str:
        return " | ".join(_num(fn(a)) for a in (main, ctrl) if a is not None)

    for i, k in enumerate(main.steps):
        table.add_row(
            str(k),
            cell(lambda a: float(np.nanmean(a.frontier_mass[:, i])) if np.isfinite(a.frontier_mass[:, i]).any() else None),
            cell(lambda a: a.parallelism[k].mean["top1"]), cell(lambda a: a.parallelism[k].mean["top3"]),
            *[cell(lambda a, j=j: float(a.inner_product.mean[i, j])) for j in range(4)],
            cell(lambda a: a.accuracy_by_k.get(k)),
        )
    Console(width=160).print(table)
    typer.echo(f"accuracy at the checkpoint's own k: {main.accuracy:.4f}"
               + (f" (control {ctrl.accuracy:.4f})" if ctrl is not None else ""))


@app.command("intervene")
def intervene_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format)."),
    out: Path = typer.Option(..., "--out", help="New directory for report.json and the figures."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    control: list[Path] = typer.Option([], "--control", help="A control checkpoint (pause, CoT) run the same way; "
                                       "repeat for several."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Thoughts (default: the checkpoint's)."),
    sites: str = typer.Option("thought,1", "--sites",
                              help="Where to ablate and patch: 'thought' (the thoughts fed back) and/or layers."),
    kinds: str = typer.Option(",".join(("zero", "mean", "random", "other")), "--ablations"),
    steer_step: int = typer.Option(1, "--steer-step", min=1, help="The thought to steer."),
    steer_layer: int = typer.Option(-1, "--steer-layer", help="The residual layer to steer at."),
    alphas: str = typer.Option("0,0.25,0.5,1,2,4", "--alphas", help="Doses, in mean residual norms."),
    probe_dir: Optional[Path] = typer.Option(None, "--probe", help="A saved frontier probe of the main checkpoint "
                                             "at the steering layer (default: one fit on the items)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="Only the first N items."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Causal tests of the thoughts: fewer thoughts, ablation, counterfactual patching, steering; beside controls."""
    from probe.data.prosqa import atomic_directory, atomic_write_text, load_items
    from probe.interventions import ABLATIONS, run_interventions
    from probe.probes import SavedProbe, model_weights_hash
    from probe.viz import INTERVENTION_FIGURES

    _new_out(out)
    site_list = [None if x.strip() == "thought" else _int_option("--sites", x) for x in sites.split(",") if x.strip()]
    kind_list = [x.strip() for x in kinds.split(",") if x.strip()]
    if bad := [x for x in kind_list if x not in ABLATIONS]:
        _fail(f"--ablations: unknown {bad}; expected some of {', '.join(ABLATIONS)}")
    alpha_list = [_float_option("--alphas", x) for x in alphas.split(",") if x.strip()]
    reports = []
    try:
        items = load_items(data, limit=limit)
        runs = [(_default_ckpt(ckpt), base)] + [(c, None) for c in control]
        for i, (path, b) in enumerate(runs):
            model, tok = _load(ckpt if i == 0 else path, b, device)
            probe = None
            if probe_dir is not None and i == 0:
                probe = SavedProbe.load(probe_dir, model_weights_hash(model))
            typer.echo(f"{path}:")
            rep = run_interventions(model, tok, items, k if i == 0 else reports[0].k, site_list, kind_list,
                                    steer_step, steer_layer, alpha_list, probe, batch_size, seed,
                                    checkpoint=str(path))
            reports.append(rep)
    except InputError as e:
        _fail(str(e))
    from probe.analyze import finite

    dicts = [finite(r.as_dict()) for r in reports]
    with atomic_directory(out) as tmp:
        atomic_write_text(tmp / "report.json", json.dumps({"data": str(data), "reports": dicts}, indent=1))
        for name, figure in INTERVENTION_FIGURES.items():
            figure(dicts).write_html(tmp / f"{name}.html", include_plotlyjs=True)
    _print_interventions(dicts)
    typer.echo(f"wrote {out}/report.json and {len(INTERVENTION_FIGURES)} figures")


def _int_option(option: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        _fail(f"{option}: expected an integer, got {text.strip()!r}")


def _float_option(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        _fail(f"{option}: expected a number, got {text.strip()!r}")


def _print_interventions(reports: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for rep in reports:
        table = Table(title=f"{rep['checkpoint']} ({rep['mode']}, {rep['n']} items, k={rep['k']})",
                      title_justify="left")
        table.add_column("test")
        table.add_column("accuracy")
        table.add_column("unedited")
        table.add_column("answers changed")
        for j, acc in rep["accuracy_by_k"].items():
            table.add_row(f"{j} thoughts", _num(acc), "", "")
        for site_label, runs in rep["ablations"].items():
            for r in runs:
                if r["name"].endswith(" all"):
                    table.add_row(f"{site_label}: {r['name']}", _num(r["accuracy"]), _num(r["baseline_accuracy"]),
                                  _num(r["answers_changed"]))
        for site_label, runs in rep["patching"].items():
            r = runs[0]
            table.add_row(f"{site_label}: patch all from A; names A's root / A's concept",
                          f"{_num(r['names_a_root'])} / {_num(r['follows_a'])}",
                          f"{_num(r['baseline_names_a_root'])} / {_num(r['baseline_follows_a'])}", _num(r["changed"]))
        for p in rep["steering"]["points"]:
            if p["alpha"] == max(q["alpha"] for q in rep["steering"]["points"]):
                table.add_row(f"steer {p['direction']} alpha={p['alpha']:g}: value(v) / to v's option",
                              f"{_num(p['value'])} / {_num(p['to_option'])}", "", _num(p["changed"]))
        console.print(table)


probes_app = typer.Typer(help="Linear probes on thoughts, with control tasks; the halting probe.", no_args_is_help=True)
sae_app = typer.Typer(help="Sparse autoencoders on thoughts (SAELens file format).", no_args_is_help=True)
app.add_typer(probes_app, name="probes")
app.add_typer(sae_app, name="sae")


@probes_app.command("fit")
def probes_fit(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    data: Path = typer.Option(..., "--data", help="ProsQA JSON file (official format); folds are over its items."),
    target: str = typer.Option("frontier", "--target", help="frontier, reachable, value or depth."),
    layer: int = typer.Option(-1, "--layer", help="Residual stream after this layer (negative: from the end)."),
    out: Path = typer.Option(..., "--out", help="New directory for the probe, report.json and scores.html."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    control: Optional[Path] = typer.Option(None, "--control", help="A control checkpoint probed the same way."),
    control_base: Optional[Path] = typer.Option(None, "--control-base"),
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1, help="Thoughts to probe (default: the checkpoint's)."),
    folds: int = typer.Option(5, "--folds", min=2),
    limit: Optional[int] = typer.Option(None, "--limit", min=2),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Cross-validated linear probes (and their control task) for every thought k at one layer."""
    from probe.data.prosqa import atomic_directory, atomic_write_text
    from probe.probes import fit_probes
    from probe.viz import probe_scores

    _new_out(out)
    try:
        items = _items(data, 0, 0, limit)
        model, tok = _load(ckpt, base, device)
        rep = fit_probes(model, tok, items, target, layer=layer, k_max=k_max, folds=folds, seed=seed)
        report = {"checkpoint": str(_default_ckpt(ckpt)), "data": str(data), "n_items": len(items), **rep.as_dict()}
        if control is not None:
            c_model, c_tok = _load(control, control_base, device)
            c_rep = fit_probes(c_model, c_tok, items, target, layer=layer, k_max=max(rep.scores), folds=folds,
                               seed=seed)
            report["control"] = {"checkpoint": str(control), **c_rep.as_dict()}
    except InputError as e:
        _fail(str(e))
    from probe.analyze import finite

    report = finite(report)
    with atomic_directory(out) as tmp:
        rep.probe.write_into(tmp)
        atomic_write_text(tmp / "report.json", json.dumps(report, indent=1))
        probe_scores(report, report.get("control")).write_html(tmp / "scores.html", include_plotlyjs=True)
    key = "auroc" if rep.probe.kind == "classification" else "r2"
    for k, sc in report["steps"].items():
        extra = f" | control checkpoint {_num(report['control']['steps'][k][key])}" if control is not None else ""
        typer.echo(f"thought {k}: {key} {_num(sc[key])}, control task {_num(sc['control_' + key])}, "
                   f"selectivity {_num(sc['selectivity'])}{extra}")
    typer.echo(f"wrote {out}")


@probes_app.command("halt")
def probes_halt(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    out: Path = typer.Option(..., "--out", help="New directory for the halting probe and report.json."),
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to train on (default: generated items)."),
    n: int = typer.Option(1000, "--n", min=2, help="Generated items to train on, when no --data."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the generated items."),
    layer: int = typer.Option(-1, "--layer"),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    k_max: Optional[int] = typer.Option(None, "--k-max", min=2, help="The most thoughts (default: the checkpoint's)."),
    folds: int = typer.Option(5, "--folds", min=2),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Train the halting probe: from thought k, will forcing <|end-latent|> now give the right answer?"""
    from probe.data.prosqa import atomic_directory, atomic_write_text
    from probe.probes import fit_halting_probe

    _new_out(out)
    try:
        items = _items(data, n, seed)
        model, tok = _load(ckpt, base, device)
        saved, scores = fit_halting_probe(model, tok, items, layer=layer, k_max=k_max, folds=folds)
    except InputError as e:
        _fail(str(e))
    from probe.analyze import finite

    with atomic_directory(out) as tmp:
        saved.write_into(tmp)
        atomic_write_text(tmp / "report.json", json.dumps(finite({
            "checkpoint": str(_default_ckpt(ckpt)), "data": str(data) if data else f"generated n={n} seed={seed}",
            "hook": saved.hook, **saved.metrics}), indent=1))
    cv = scores.as_dict()
    typer.echo(f"halting probe on {saved.hook}: cross-validated AUROC {cv['auroc']:.3f} (control {cv['control_auroc']:.3f}), "
               f"right answers among (item, k) pairs {saved.metrics['positive_rate']:.1%}; wrote {out}")


@sae_app.command("train")
def sae_train(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    out: Path = typer.Option(..., "--out", help="New directory: cfg.json + sae_weights.safetensors (SAELens), report."),
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to train on (default: generated items)."),
    n: int = typer.Option(2000, "--n", min=10, help="Generated items, when no --data."),
    seed: int = typer.Option(12345, "--seed"),
    layer: Optional[int] = typer.Option(None, "--layer", help="A layer's residual at the thought positions "
                                                               "(default: the thoughts fed back)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    d_sae: int = typer.Option(512, "--d-sae", min=1),
    k: int = typer.Option(8, "--k", min=1, help="Active features per row (TopK)."),
    activation: str = typer.Option("topk", "--activation", help="topk, or relu (with --l1)."),
    l1: float = typer.Option(0.0, "--l1", min=0.0),
    epochs: int = typer.Option(50, "--epochs", min=1),
    k_max: Optional[int] = typer.Option(None, "--k-max", min=1),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Train a sparse autoencoder on every thought of a data set; report FVU, L0, dead features and what fires."""
    import numpy as np

    from probe.analyze import finite
    from probe.data.prosqa import atomic_directory, atomic_write_text
    from probe.frontier import GROUPS
    from probe.probes import model_weights_hash, resid_hook
    from probe.sae import SparseAutoencoder, feature_reports, thought_rows
    from probe.viz import sae_features

    _new_out(out)
    try:
        items = _items(data, n, seed)
        model, tok = _load(ckpt, base, device)
        hook = resid_hook(model, layer) if layer is not None else None
        rows = thought_rows(model, tok, items, hook=hook, k_max=k_max)
        n_items = len(items)
        held = np.arange(len(rows.X)) >= int(0.9 * n_items) * rows.k_max  # the last 10% of items, held out
        sae = SparseAutoencoder(d_sae=d_sae, k=k, activation=activation, l1_coeff=l1, epochs=epochs, device=device)
        sae.fit(rows.X[~held])
    except InputError as e:
        _fail(str(e))
    train_m, held_m = sae.metrics(rows.X[~held]), sae.metrics(rows.X[held])
    feats = feature_reports(sae.encode(rows.X).numpy(), rows.frontier, rows.present, rows.names, rows.groups, GROUPS)
    ranked = sorted((f for f in feats if f.best_name is not None and np.isfinite(f.best_auroc)),
                    key=lambda f: -f.best_auroc)
    report = finite({"checkpoint": str(_default_ckpt(ckpt)), "hook": rows.hook, "n_items": n_items,
                     "rows": len(rows.X), **train_m.as_dict(), "held_out": held_m.as_dict(),
                     "features": [vars(f) for f in ranked[:50]]})
    with atomic_directory(out) as tmp:
        sae.write_into(tmp, rows.hook, model_name=_default_ckpt(ckpt).name,
                       extra={"model_hash": model_weights_hash(model), "k_max": rows.k_max, "n_items": n_items})
        atomic_write_text(tmp / "report.json", json.dumps(report, indent=1))
        sae_features(feats).write_html(tmp / "features.html", include_plotlyjs=True)
    typer.echo(f"SAE on {rows.hook} ({len(rows.X)} thoughts of {n_items} items): fvu {train_m.fvu:.3f} "
               f"(held out {held_m.fvu:.3f}), L0 {train_m.l0:.1f}, dead {train_m.dead_fraction:.1%}")
    for f in ranked[:5]:
        typer.echo(f"  feature {f.feature}: frontier AUROC {f.best_auroc:.3f} for {f.best_name}, fires {f.frequency:.1%}")
    typer.echo(f"wrote {out}")


@app.command("tuned-lens")
def tuned_lens_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help=CKPT_HELP),
    out: Path = typer.Option(..., "--out", help="The lens file to write (.safetensors)."),
    data: Optional[Path] = typer.Option(None, "--data", help="ProsQA JSON to fit on (default: generated items)."),
    n: int = typer.Option(1000, "--n", min=1, help="Generated items to fit on, when no --data."),
    seed: int = typer.Option(12345, "--seed", help="Seed of the generated items."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model directory, for official checkpoints."),
    k: Optional[int] = typer.Option(None, "--k", min=0, help="Thoughts to force (default: the checkpoint's)."),
    epochs: int = typer.Option(20, "--epochs", min=1),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Fit a tuned lens (one affine translator per layer) to a checkpoint's thoughts."""
    from probe.capture import architecture, capture, select_hooks
    from probe.lens import TunedLens, mean_kl_to_final

    try:
        items = _items(data, n, seed)
        model, tok = _load(ckpt, base, device)
        names = select_hooks(architecture(model).n_layers, ["*hook_resid_post"])
        split = max(1, len(items) // 10)
        held = capture(model, tok, items[:split], k=k, names=names)
        train = capture(model, tok, items[split:], k=k, names=names)
        lens = TunedLens.for_model(model).fit(train, model, epochs=epochs)
        lens.save(out)
    except InputError as e:
        _fail(str(e))
    before, after = mean_kl_to_final(held, model), mean_kl_to_final(held, model, lens)
    for l, (a, b) in enumerate(zip(before.tolist(), after.tolist())):
        typer.echo(f"layer {l}: held-out KL to the final distribution, logit lens {a:.4f}, tuned lens {b:.4f}")
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
