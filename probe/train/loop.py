"""Training: the multi-stage curriculum of Coconut (Hao et al. 2024) under either supervision.

One YAML file configures a run; the same loop trains the paper's baselines (mode cot, no_cot,
pause_as_thought, no_thoughts) and, with `supervision: optimal`, the recipe of "Reasoning by
Superposition" (Zhu, Hao et al. 2025; probe.data.supervision). `train()` reads as nanoGPT's loop does:
set up (a new run, or the `RunState` of its latest checkpoint), make the plan, then one optimizer step
after another over the stream of batches, closing a record (evaluating where due) and saving where due.
Batch b of epoch e and its dropout are seeded from (seed, e, b), so a run resumed from any checkpoint
continues exactly. What differs past one process is in probe.train.distributed; the search summary an
evaluation logs is passed in (`search`), so that training imports no analysis.

On a GPU: bfloat16 autocast (`precision`), data prepared by CPU workers ahead of the model
(`num_workers`), the thought loop batched over rows (CoconutModel.forward), logits computed only at
supervised positions, evaluation every N steps, checkpoints inside the run, and a wall-clock
budget (`max_minutes`) that first times each stage's batches and the evaluation, then sizes the
epochs so that the whole curriculum, its learning-rate schedule and a final evaluated checkpoint fit.
"""

from __future__ import annotations

import math
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import torch
import yaml
from tqdm.auto import tqdm

from probe.artifacts import RUN_CHECKPOINTS, RUN_CONFIG
from probe.atomic import atomic_write_text
from probe.data.prosqa import ProsQAItem
from probe.data.stream import BatchStream, StreamSpec, batch_loader, generate_pool
from probe.model.ranks import rank_device, world
from probe.model.evaluate import evaluate
from probe.model.checkpoint import load_checkpoint
from probe.model.coconut import CoconutModel
from probe.model.placement import parse_device
from probe.train.state import Plan, RunState, latest_checkpoint, prune
from probe.train.config import ConfigError, TrainConfig
from probe.train.distributed import Ranks, training_job
from probe.train.start import build_model, check_data, load_data, run_record

BUDGET_MARGIN = 0.08  # of max_minutes, left unplanned for what calibration cannot see


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at an optimizer step of `total`: linear warmup, then constant or cosine decay to 10%."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------------------- the loss and its cost


def sequence_loss(model: CoconutModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over a batch's supervised units (collate's target_pos [batch, n] and target_ids [batch, n, set])
    of the mean negative log-probability of the unit's tokens; logits are computed at those columns only.

    For language labels (sets of one) this is the usual next-token cross-entropy over labelled tokens.
    """
    return unit_loss_sum(model, batch) / (batch["target_pos"] >= 0).sum()


def unit_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum, over a batch's supervised units, of each unit's mean negative log-probability (a scalar):
    sequence_loss times the number of units. Under data parallelism each rank sums its rows and divides by
    the global batch's units, so that averaging the ranks' gradients gives the single-process gradient."""
    pos, ids = batch["target_pos"], batch["target_ids"]
    out = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], logits_at=pos.clamp(min=0))
    logp = out.logits.float().log_softmax(-1)  # [batch, n, vocab]
    have = ids >= 0
    nll = -(logp.gather(-1, ids.clamp(min=0)) * have).sum(-1) / have.sum(-1).clamp(min=1)  # [batch, n]
    return (nll * (pos >= 0)).sum()


def flops_per_token(model: CoconutModel, context: float) -> float:
    """Training FLOPs per token (forward and backward): 6 N + 12 L d T, with N the non-embedding
    parameters, L layers, d the width and T the context (PaLM, Chowdhery et al. 2022, appendix B)."""
    embeds = {id(model.base.get_input_embeddings().weight)}
    embeds |= {id(p) for n, p in model.base.named_parameters() if "wpe" in n or "position" in n}
    n = sum(p.numel() for p in model.base.parameters() if id(p) not in embeds)
    layers = getattr(model.base.config, "n_layer", None) or model.base.config.num_hidden_layers
    return 6 * n + 12 * layers * model.d_model * context


def _autocast(cfg: TrainConfig, device: str):
    if cfg.precision == "bfloat16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- setup


@dataclass
class TrainResult:
    """Where a run ended and what it recorded (one dict per record: epoch ends and eval points)."""

    run_dir: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]


class Search(Protocol):
    """The latent-search summary that train() logs at each evaluation of a run with search_items: the CLI passes
    probe.analyses.analyze.search_summary (training imports no analysis). It returns a summary whose as_dict() is the
    record's "search"."""

    def __call__(self, model: CoconutModel, tokenizer: Any, items: list[ProsQAItem], *, batch_size: int) -> Any: ...


@dataclass
class _Run:
    """What train() works on: the config; the model, its tokenizer and where it trains (`ranks`: this process's
    device and its place among torchrun's ranks); the counters and records (`state`, saved in every checkpoint);
    the data; and the checkpoint it continues (None for a new run)."""

    cfg: TrainConfig
    model: CoconutModel
    tok: Any
    ranks: Ranks
    state: RunState
    val_items: list[ProsQAItem]
    pool: list[ProsQAItem] | None  # the training pool; None: drawn anew every epoch (fresh_data_every_epoch)
    resumed_from: Path | None


def _setup(cfg: TrainConfig, resume: bool, device: str) -> _Run:
    """A run ready for its loop: its data, then the model and state of its latest checkpoint (resume) or a new model
    (the run's config written beside its checkpoints), wrapped for the ranks. Raises ConfigError for nothing to
    resume or a run directory in use, DataError or LossyTokenizerError for data the run cannot train on."""
    run_dir = cfg.run_dir
    last = latest_checkpoint(run_dir) if resume else None
    if resume and last is None:
        raise ConfigError(f"{run_dir}: nothing to resume (no {RUN_CHECKPOINTS} checkpoint)")
    if last is None and run_dir.exists() and any(run_dir.glob(RUN_CHECKPOINTS)):
        raise ConfigError(f"{run_dir}: holds checkpoints already; pass resume, or choose another out_dir")
    val_items = load_data(cfg, cfg.val_data, cfg.val_size, train=False) if cfg.val_data else []
    # The pool before the model: its worker processes fork before anything touches a GPU.
    if cfg.train_data:
        pool = load_data(cfg, cfg.train_data, cfg.train_size, train=True)
    elif not cfg.fresh_data_every_epoch:
        pool = generate_pool(cfg.train_size, cfg.seed, workers=cfg.num_workers)
    else:
        pool = None
    if last is not None:
        model, tok = load_checkpoint(last, device=device)
        state = RunState.load(last)
    else:
        torch.manual_seed(cfg.seed)
        # a word tokenizer writes every name of the run's data (the generator's names and those of its files)
        model, tok = build_model(cfg, sorted({s for it in [*val_items, *(pool or [])] for s in it.idx_to_symbol}))
        model.to(device)
        init = {"path": cfg.load_model_path, **run_record(Path(cfg.load_model_path))} if cfg.load_model_path else None
        plan = Plan(cfg.epoch_items or cfg.train_size, cfg.batch_size, cfg.gradient_accumulation_steps,
                    cfg.num_epochs, cfg.start_epoch)
        state = RunState(asdict(cfg), plan, epoch=cfg.start_epoch, init=init)
    rank = world()[0]
    check_data(cfg, tok, model.config.data_format, pool, val_items, rank)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(asdict(cfg), sort_keys=False))
    return _Run(cfg, model, tok, Ranks.wrap(model, device, cfg.distributed), state, val_items, pool,
                resumed_from=last)


def _stream(run: _Run, plan: Plan) -> BatchStream:
    cfg = run.cfg
    spec = StreamSpec(
        seed=cfg.seed, batch_size=cfg.batch_size, epoch_items=plan.epoch_items,
        stages=tuple(cfg.stage(e) for e in range(cfg.num_epochs)), stage_spec=cfg.stage_spec,
        special=run.model.config.special, data_format=cfg.data_format, supervision=cfg.supervision,
        thought_loss=cfg.thought_loss, uniform_prob=cfg.uniform_prob, train_size=len(run.pool or []) or cfg.train_size,
        fresh_data_every_epoch=cfg.fresh_data_every_epoch, shuffle_nodes=cfg.shuffle_nodes,
    )
    return BatchStream(spec, run.tok, run.pool, (run.state.epoch, run.state.batch), cfg.num_epochs)


def _to(batch: dict[str, Any], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig, *, resume: bool = False, device: str = "cpu", progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None, search: Search | None = None,
) -> TrainResult:
    """Run the curriculum; record, evaluate and checkpoint where due; continue from the latest checkpoint if resume.

    on_record is called with each record as it closes; search (probe.analyses.analyze.search_summary; required when the
    config has search_items) gives the search summary that each evaluation logs.

    Under torchrun (`torchrun --nproc_per_node N -m probe.cli train ...`) every rank runs this with
    DistributedDataParallel (or FSDP): each takes its block of the rows of every batch, gradients are averaged so
    that a step equals the single-process step on the same batch, the evaluation is split over the ranks and
    summed, and rank 0 alone writes checkpoints and calls on_record (on cuda, each rank uses the GPU of its
    local rank; gloo on the CPU, nccl on GPUs). probe.train.distributed holds each of those rules.

    Raises ConfigError for a run that cannot start (nothing to resume, a used out_dir, a budget too small,
    a batch smaller than the number of ranks, search_items without search), PlacementError for a device absent
    here, LossyTokenizerError for a tokenizer that cannot write the training or validation data (without
    allow_lossy_tokenizer).
    """
    if cfg.search_items and search is None:
        raise ConfigError(f"search_items={cfg.search_items} logs the search summary at every evaluation: pass "
                          "train(search=probe.analyses.analyze.search_summary), as `probe train` does")
    _, size, _ = world()
    device = parse_device(rank_device(device))
    if size > 1 and cfg.batch_size < size:
        raise ConfigError(f"batch_size={cfg.batch_size} gives some of the {size} ranks no rows")
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
    with training_job(device):
        run = _setup(cfg, resume, device)
        state, budget = run.state, _plan(run, search)
        opt, last = _resumed_optimizer(run), run.resumed_from
        loader = batch_loader(_stream(run, state.plan), cfg.num_workers, pin_memory=device.startswith("cuda"))
        bar = tqdm(total=state.plan.total_steps, initial=state.step, desc=cfg.name, unit="step",
                   disable=not progress or run.ranks.rank != 0)
        meter = _Meter(state, device)
        run.model.train()
        for micro in _steps(loader, state.plan, cfg.gradient_accumulation_steps):
            epoch = micro[0]["epoch"]
            if micro[0]["batch"] == 0 and (opt is None or cfg.resets_optimizer(epoch)):
                opt = _optimizer(run.model, cfg)  # the run's first, or a fresh one at a stage change
            meter.add(_optimizer_step(run, opt, micro))
            bar.update(1)
            stop = budget.out_of_time(run.ranks, finished=state.epoch == cfg.num_epochs and state.batch == 0)
            due = _due(cfg, state, epoch, stop)
            if due.record:
                with meter.paused(state):  # evaluating is no training time
                    record = _record(run, epoch, due.evaluate, search, budget.take_calibration())
                    if stop:
                        record["cut_by_budget"] = f"stopped at step {state.step} of {state.plan.total_steps}"
                    bar.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                    **({"val": f"{record['val_accuracy']:.3f}"} if "val_accuracy" in record else {}))
                    if on_record and run.ranks.rank == 0:
                        on_record(record)
            if due.save:
                with meter.paused(state):  # nor is saving
                    last = _save(run, opt)
            if stop:
                break
        bar.close()
        if last is None:
            raise ConfigError(f"{cfg.run_dir}: num_epochs={cfg.num_epochs} leaves nothing to train")
        result = TrainResult(cfg.run_dir, last, state.history)
        # The DDP or FSDP wrapper, its optimizer and loader go while the process group is open: freed after it is
        # destroyed, gloo's teardown has hung a rank that the others had already left.
        del run, opt, loader, meter, budget
    return result


# ---------------------------------------------------------------------------- the plan


@dataclass
class _Budget:
    """A run's wall-clock budget (max_minutes): when it stops, and what fitting its plan measured."""

    deadline: float | None  # time.perf_counter() past which the run stops, saved and evaluated; None: no budget
    calibration: dict[str, Any]  # fit_plan's measurements, logged with the first record

    def out_of_time(self, ranks: Ranks, finished: bool) -> bool:
        """Whether the run stops now, short of its plan: past the deadline on any rank (the ranks stop together)."""
        if self.deadline is None:
            return False
        return ranks.any(time.perf_counter() > self.deadline and not finished)

    def take_calibration(self) -> dict[str, Any]:
        """The measurements, once (for the first record); {} after."""
        calibration, self.calibration = self.calibration, {}
        return calibration


def _plan(run: _Run, search: Search | None) -> _Budget:
    """The plan of the run (in its state) and its budget. With max_minutes a new run's plan is fitted to the time
    left (fit_plan: rank 0's timing, which every rank follows; a resumed run keeps the plan it saved), and the run
    stops by a deadline that leaves half the margin and one evaluation for a final evaluated checkpoint. Raises
    ConfigError for a run with nothing left to train or a budget that holds no batch."""
    cfg, state, started = run.cfg, run.state, time.perf_counter()
    calibration: dict[str, Any] = {}
    if cfg.max_minutes and run.resumed_from is None:
        state.plan, calibration = run.ranks.from_rank0(fit_plan(run, started, search))
    if state.epoch >= cfg.num_epochs:
        raise ConfigError(f"{cfg.run_dir}: num_epochs={cfg.num_epochs} leaves nothing to train")
    if not cfg.max_minutes:
        return _Budget(None, calibration)
    deadline = started + cfg.max_minutes * 60 * (1 - BUDGET_MARGIN / 2)
    if calibration:
        deadline -= calibration["seconds_per_eval"]
    return _Budget(deadline, calibration)


def _eval_points(cfg: TrainConfig, plan: Plan) -> int:
    """How many evaluations a run makes (for the budget)."""
    if cfg.eval_every_steps:
        return plan.total_steps // cfg.eval_every_steps + 1
    return sum((e + 1) % cfg.eval_every_epochs == 0 or e + 1 == cfg.num_epochs
               for e in range(cfg.start_epoch, cfg.num_epochs))


def fit_plan(run: _Run, started: float, search: Search | None = None) -> tuple[Plan, dict[str, Any]]:
    """Size epoch_items so that the run fits max_minutes, counted from `started` (time.perf_counter(), when setup
    ended).

    Times forward and backward (no optimizer step: the weights do not change) on the first batch of
    each stage the run will meet, and one evaluation (with its search summary), then solves for the items per
    epoch. Returns the plan and the measurements (seconds per item by stage, seconds per evaluation).
    Raises ConfigError when not even one batch per epoch fits.
    """
    cfg, model, device = run.cfg, run.model, run.ranks.device
    stream = _stream(run, run.state.plan)
    first_epoch: dict[int, int] = {}
    for e in range(cfg.start_epoch, cfg.num_epochs):
        first_epoch.setdefault(cfg.stage(e), e)
    per_item: dict[int, float] = {}
    model.train()
    for i, (stage, epoch) in enumerate(sorted(first_epoch.items())):
        batch = stream.batch(epoch, 0)
        tensors = _to(batch, device)
        for rep in range(2 if i == 0 else 1):  # the first call warms up kernels and allocators
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(cfg, device):
                loss = sequence_loss(model, tensors)
            loss.backward()
            _sync(device)
            per_item[stage] = (time.perf_counter() - t0) / len(tensors["input_ids"])
        model.zero_grad(set_to_none=True)
    t_eval = 0.0
    if run.val_items:
        t0 = time.perf_counter()
        with run.ranks.whole():
            evaluate(model, run.tok, run.val_items, stage=cfg.stage(cfg.num_epochs - 1),
                     batch_size=cfg.eval_batch_size, progress=False)
            _search(run, search)
        t_eval = time.perf_counter() - t0
        model.train()
    left = cfg.max_minutes * 60 * (1 - BUDGET_MARGIN) - (time.perf_counter() - started)
    cost = sum(per_item[cfg.stage(e)] for e in range(cfg.start_epoch, cfg.num_epochs))  # seconds per epoch item
    plan = run.state.plan
    for _ in range(3):  # the number of evaluations depends on the plan
        items = int((left - _eval_points(cfg, plan) * t_eval) / cost)
        plan = replace(plan, epoch_items=max(cfg.batch_size, items // cfg.batch_size * cfg.batch_size))
    if items < cfg.batch_size:
        raise ConfigError(f"max_minutes={cfg.max_minutes} holds {max(items, 0)} items per epoch, fewer than one batch "
                          f"of {cfg.batch_size} (setup and timing took {time.perf_counter() - started:.0f} s); "
                          "allow more minutes or fewer epochs")
    return plan, {"seconds_per_item": per_item, "seconds_per_eval": t_eval, "seconds_left": left,
                  "evaluations": _eval_points(cfg, plan)}


# ---------------------------------------------------------------------------- the step


def _optimizer(model: CoconutModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _resumed_optimizer(run: _Run) -> torch.optim.Optimizer | None:
    """The optimizer a resumed run goes on with, its checkpoint's state loaded; None for a new run, or for a resumed
    one whose next epoch starts a fresh optimizer (at a stage change)."""
    if run.resumed_from is None or (run.state.batch == 0 and run.cfg.resets_optimizer(run.state.epoch)):
        return None
    opt = _optimizer(run.model, run.cfg)
    run.ranks.load_optimizer(run.model, opt, run.resumed_from)
    return opt


def _steps(loader, plan: Plan, accumulation: int) -> Iterator[list[dict[str, Any]]]:
    """The stream's micro-batches grouped into optimizer steps (a step never crosses an epoch's end)."""
    micro: list[dict[str, Any]] = []
    for batch in loader:
        micro.append(batch)
        if len(micro) == accumulation or batch["batch"] + 1 == plan.batches_per_epoch:
            yield micro
            micro = []


def _optimizer_step(run: _Run, opt: torch.optim.Optimizer, micro: list[dict[str, Any]]) -> torch.Tensor:
    """Forward and backward over one step's micro-batches (each with its own seeded dropout; each rank its rows),
    then clip, set the learning rate and step; the state moves past the step. Returns [summed micro-batch losses,
    gradient norm before clipping] (float64, on the device, no sync)."""
    cfg, state, ranks = run.cfg, run.state, run.ranks
    total = torch.zeros((), dtype=torch.float64, device=ranks.device)
    for i, batch in enumerate(micro):
        torch.manual_seed(hash((cfg.seed, batch["epoch"], batch["batch"])) % 2**62)
        units = int((batch["target_pos"] >= 0).sum())  # of the whole batch, on every rank
        rows, weight = ranks.rows(len(batch["input_ids"]))
        tensors = _to({k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, ranks.device)
        with ranks.grad_sync(i == len(micro) - 1):
            with _autocast(cfg, ranks.device):
                loss = weight * unit_loss_sum(ranks.forward, tensors) / units
            (loss * ranks.size / cfg.gradient_accumulation_steps).backward()
        total += loss.detach().double()
        state.pending["batches"] += 1
        state.pending["tokens"] += batch["n_tokens"]
        state.pending["sequences"] += len(batch["input_ids"])
    ranks.sum(total)  # the ranks' shares of each batch's loss
    norm = ranks.clip_grad_norm(run.model, cfg.max_grad_norm)
    state.pending["steps"] += 1
    for g in opt.param_groups:
        g["lr"] = lr_at(state.step, state.plan.total_steps, cfg)
    opt.step()
    opt.zero_grad(set_to_none=True)
    state.step += 1
    last = micro[-1]
    state.epoch, state.batch = (last["epoch"] + 1, 0) if last["batch"] + 1 == state.plan.batches_per_epoch \
        else (last["epoch"], last["batch"] + 1)
    return torch.stack([total, norm.detach().double()])


class _Meter:
    """The open record's loss and gradient-norm sums, kept on the device between records (read once per record, not
    per step: no sync in the loop), and the clock of its training time. state.pending holds them on disk."""

    def __init__(self, state: RunState, device: str):
        self.device = device
        self._restart(state)

    def add(self, sums: torch.Tensor) -> None:
        """Add one step's [loss, gradient norm] sums."""
        self.sums += sums

    @contextmanager
    def paused(self, state: RunState) -> Iterator[None]:
        """The sums and the training time so far written into state.pending for the block (a record, which empties
        it, or a checkpoint, which saves it); the block's own time is no training time."""
        state.pending["loss"], state.pending["grad_norm"] = self.sums.tolist()
        state.pending["seconds"] += time.perf_counter() - self.t0
        yield
        self._restart(state)

    def _restart(self, state: RunState) -> None:
        self.sums = torch.tensor([state.pending["loss"], state.pending["grad_norm"]], dtype=torch.float64,
                                 device=self.device)
        self.t0 = time.perf_counter()


class _Due(NamedTuple):
    record: bool  # close the record
    evaluate: bool  # ... with an evaluation
    save: bool  # write a checkpoint


def _due(cfg: TrainConfig, state: RunState, epoch: int, stop: bool) -> _Due:
    """What is due after an optimizer step of epoch, the state now past it (stop: the budget ran out). A record at
    every epoch end, every eval_every_steps steps and at a stop; it evaluates at every eval_every_steps step, at the
    run's end and at a stop, and without eval_every_steps at every eval_every_epochs-th epoch end. A checkpoint at
    every epoch end, every save_every_steps steps and at a stop."""
    end_of_epoch = state.batch == 0
    finished = state.epoch == cfg.num_epochs and end_of_epoch
    evals = bool(cfg.eval_every_steps) and state.step % cfg.eval_every_steps == 0
    evaluate_now = evals or finished or stop or (
        not cfg.eval_every_steps and end_of_epoch and (epoch + 1) % cfg.eval_every_epochs == 0)
    save = end_of_epoch or stop or bool(cfg.save_every_steps and state.step % cfg.save_every_steps == 0)
    return _Due(end_of_epoch or evals or stop, evaluate_now, save)


# ---------------------------------------------------------------------------- the record, evaluation and saving


def _record(run: _Run, epoch: int, evaluate_now: bool, search: Search | None,
            calibration: dict[str, Any]) -> dict[str, Any]:
    """Close the pending record (the training since the last one), evaluating if due; append it to the history."""
    cfg, state, p = run.cfg, run.state, run.state.pending
    seconds = max(p["seconds"], 1e-9)
    tokens_per_s = p["tokens"] / seconds
    record: dict[str, Any] = {
        "epoch": epoch + 1, "step": state.step, "stage": cfg.stage(epoch), "train_loss": p["loss"] / max(1, p["batches"]),
        "grad_norm": p["grad_norm"] / max(1, p["steps"]),  # mean over the record's steps, before clipping
        "tokens_per_s": tokens_per_s,
        "tflops": flops_per_token(run.model, p["tokens"] / max(1, p["sequences"])) * tokens_per_s / 1e12,
        "seconds": seconds, "global_step": state.step, "lr": lr_at(max(0, state.step - 1), state.plan.total_steps, cfg),
        "hardware": _hardware(run.ranks.device),
    }
    if calibration:
        record["calibration"] = calibration
        record["epoch_items"] = state.plan.epoch_items
    if evaluate_now and run.val_items:
        record.update(_evaluate(run, cfg.stage(epoch), search))
    state.history.append(record)
    state.seconds += seconds
    state.pending = RunState.empty_pending()
    return record


def _evaluate(run: _Run, stage: int, search: Search | None) -> dict[str, Any]:
    """The validation accuracy and mean number of thoughts at a stage (each rank evaluates its block of the items;
    the counts are summed over the ranks), and the search summary where the run logs one."""
    mine = run.ranks.block(run.val_items)
    with run.ranks.whole():
        res = evaluate(run.model, run.tok, mine, stage=stage, batch_size=run.cfg.eval_batch_size,
                       progress=False).items if mine else []
        summary = _search(run, search)  # every rank runs the same forwards: FSDP gathers each layer inside them
    counts = run.ranks.sum(torch.tensor([sum(r.correct for r in res), sum(r.n_thoughts for r in res), len(res)],
                                        dtype=torch.float64, device=run.ranks.device))
    out: dict[str, Any] = {"val_accuracy": float(counts[0] / counts[2]),
                           "val_mean_thoughts": float(counts[1] / counts[2])}
    if summary is not None:
        out["search"] = summary
    run.model.train()
    return out


def _search(run: _Run, search: Search | None) -> dict[str, Any] | None:
    """The latent-search summary on the first search_items validation items (None where the run logs none)."""
    n = run.cfg.search_items
    if search is None or not n or not run.val_items or not run.model.config.stage_spec.markers:
        return None
    return search(run.model, run.tok, run.val_items[:n], batch_size=run.cfg.eval_batch_size).as_dict()


def _save(run: _Run, opt: torch.optim.Optimizer) -> Path:
    """A checkpoint of the run where it stands (rank 0 writes it; with FSDP the whole states are gathered to it
    first), the newest keep_checkpoints kept; no rank goes on (or ends) before it is in place. Returns its path."""
    cfg, state = run.cfg, run.state
    full = run.ranks.full_states(run.model, opt)  # with FSDP a collective: every rank takes part
    if run.ranks.rank == 0:
        state.save(cfg.run_dir, run.model, run.tok, opt, metadata={"run": cfg.name, **(state.history or [{}])[-1]},
                   **full)
        prune(cfg.run_dir, cfg.keep_checkpoints)
    run.ranks.barrier()
    return cfg.run_dir / state.name


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
