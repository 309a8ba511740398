"""Training: the multi-stage curriculum of Coconut (Hao et al. 2024) under either supervision.

One YAML file configures a run; the same loop trains the paper's baselines (mode cot, no_cot,
pause_as_thought, no_thoughts) and, with `supervision: optimal`, the recipe of "Reasoning by
Superposition" (Zhu, Hao et al. 2025; probe.data.supervision). `train()` sets up (a new run, or
the `RunState` of its latest checkpoint), then runs the stream of batches epoch by epoch,
recording (and evaluating) and saving where due. Batch b of epoch e and its dropout are seeded
from (seed, e, b), so a run resumed from any checkpoint continues exactly.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import yaml
from tqdm.auto import tqdm

from probe.artifacts import RUN_CHECKPOINTS, RUN_CONFIG
from probe.atomic import atomic_write_text, interruptible
from probe.data.prosqa import ProsQAItem
from probe.data.stream import BatchStream, StreamSpec, batch_loader, generate_pool
from probe.distributed import process_group, rank_device, rank_slice, world
from probe.analyze import search_summary
from probe.evaluate import evaluate
from probe.model.architecture import find_architecture
from probe.model.checkpoint import load_checkpoint
from probe.model.coconut import CoconutModel
from probe.model.placement import parse_device
from probe.run_state import Plan, RunState, latest_checkpoint, load_optimizer, prune, read_optimizer
from probe.train_config import ConfigError, TrainConfig
from probe.train_start import build_model, check_data, load_data, run_record

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


@dataclass
class _Run:
    """What train() works on."""

    cfg: TrainConfig
    model: CoconutModel
    tok: Any
    state: RunState
    resumed_from: Path | None
    val_items: list[ProsQAItem]
    pool: list[ProsQAItem] | None
    device: str
    hardware: str = ""
    started: float = field(default_factory=time.perf_counter)
    rank: int = 0  # under torchrun: this process's rank, of world_size
    world_size: int = 1
    ddp: Any = None  # what runs the forward with world_size > 1: the DDP wrapper of model, or model itself (FSDP)
    sharded: bool = False  # FSDP: model's parameters are sharded over the ranks


def _setup(cfg: TrainConfig, resume: bool, device: str) -> _Run:
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
    rank, size, _ = world()
    check_data(cfg, tok, model.config.data_format, pool, val_items, rank)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(asdict(cfg), sort_keys=False))
    run = _Run(cfg, model, tok, state, last, val_items, pool, device, _hardware(device), rank=rank, world_size=size)
    if size > 1 and cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Each decoder layer is its own unit (gathered for its call in every segment of the latent loop), and
        # the root holds the rest for the whole forward, the thought loop inside it.
        for layer in find_architecture(model.base).layers:
            fully_shard(layer)
        fully_shard(model)
        run.ddp, run.sharded = model, True
    elif size > 1:
        from torch.nn.parallel import DistributedDataParallel

        run.ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                          else None)
    return run


@contextmanager
def _whole(run: _Run) -> Iterator[None]:
    """The model's parameters gathered on every rank (FSDP) for what runs outside its forward: evaluation."""
    if not run.sharded:
        yield
        return
    run.model.unshard()
    try:
        yield
    finally:
        run.model.reshard()


def _grad_sync(run: _Run, sync: bool):
    """Whether this backward averages the gradients over the ranks (once per optimizer step)."""
    if run.sharded:
        run.model.set_requires_gradient_sync(sync)
    return run.ddp.no_sync() if run.ddp is not None and not run.sharded and not sync else nullcontext()


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


def _eval_points(cfg: TrainConfig, plan: Plan) -> int:
    """How many evaluations a run makes (for the budget)."""
    if cfg.eval_every_steps:
        return plan.total_steps // cfg.eval_every_steps + 1
    return sum((e + 1) % cfg.eval_every_epochs == 0 or e + 1 == cfg.num_epochs
               for e in range(cfg.start_epoch, cfg.num_epochs))


def fit_plan(run: _Run) -> tuple[Plan, dict[str, float]]:
    """Size epoch_items so that the run fits max_minutes (counted from the start of train()).

    Times forward and backward (no optimizer step: the weights do not change) on the first batch of
    each stage the run will meet, and one evaluation, then solves for the items per epoch. Returns
    the plan and the measurements (seconds per item by stage, seconds per evaluation).
    Raises ConfigError when not even one batch per epoch fits.
    """
    cfg, model, device = run.cfg, run.model, run.device
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
        with _whole(run):
            evaluate(model, run.tok, run.val_items, stage=cfg.stage(cfg.num_epochs - 1),
                     batch_size=cfg.eval_batch_size, progress=False)
            _search(run)
        t_eval = time.perf_counter() - t0
        model.train()
    left = cfg.max_minutes * 60 * (1 - BUDGET_MARGIN) - (time.perf_counter() - run.started)
    cost = sum(per_item[cfg.stage(e)] for e in range(cfg.start_epoch, cfg.num_epochs))  # seconds per epoch item
    plan = run.state.plan
    for _ in range(3):  # the number of evaluations depends on the plan
        items = int((left - _eval_points(cfg, plan) * t_eval) / cost)
        plan = replace(plan, epoch_items=max(cfg.batch_size, items // cfg.batch_size * cfg.batch_size))
    if items < cfg.batch_size:
        raise ConfigError(f"max_minutes={cfg.max_minutes} holds {max(items, 0)} items per epoch, fewer than one batch "
                          f"of {cfg.batch_size} (setup and timing took {time.perf_counter() - run.started:.0f} s); "
                          "allow more minutes or fewer epochs")
    return plan, {"seconds_per_item": per_item, "seconds_per_eval": t_eval, "seconds_left": left,
                  "evaluations": _eval_points(cfg, plan)}


# ---------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig, *, resume: bool = False, device: str = "cpu", progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run the curriculum; record, evaluate and checkpoint where due; continue from the latest checkpoint if resume.

    Under torchrun (`torchrun --nproc_per_node N -m probe.cli train ...`) every rank runs this with
    DistributedDataParallel: each takes its block of the rows of every batch, gradients are averaged so that
    a step equals the single-process step on the same batch, the evaluation is split over the ranks and
    summed, and rank 0 alone writes checkpoints and calls on_record (on cuda, each rank uses the GPU of its
    local rank; gloo on the CPU, nccl on GPUs).

    Raises ConfigError for a run that cannot start (nothing to resume, a used out_dir, a budget too small,
    a batch smaller than the number of ranks), PlacementError for a device absent here, LossyTokenizerError for a
    tokenizer that cannot write the training or validation data (without allow_lossy_tokenizer).
    """
    _, size, _ = world()
    device = parse_device(rank_device(device))
    if size > 1 and cfg.batch_size < size:
        raise ConfigError(f"batch_size={cfg.batch_size} gives some of the {size} ranks no rows")
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
    if size == 1:
        return _train(cfg, resume, device, progress, on_record)
    # torchrun stops the other ranks of a failed run with SIGTERM: as an exception (atomic.interruptible, the
    # CLI's own where it runs), so that a checkpoint being written is removed, never left half-written.
    with interruptible(), process_group(device):
        return _train(cfg, resume, device, progress, on_record)


def _train(cfg: TrainConfig, resume: bool, device: str, progress: bool,
           on_record: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    run = _setup(cfg, resume, device)
    state, model = run.state, run.model
    calibration: dict[str, Any] = {}
    if cfg.max_minutes and run.resumed_from is None:
        state.plan, calibration = fit_plan(run)
        if run.world_size > 1:  # every rank follows rank 0's timing
            shared = [state.plan, calibration]
            dist.broadcast_object_list(shared, src=0)
            state.plan, calibration = shared
    plan = state.plan
    if state.epoch >= cfg.num_epochs:
        raise ConfigError(f"{cfg.run_dir}: num_epochs={cfg.num_epochs} leaves nothing to train")
    deadline = run.started + cfg.max_minutes * 60 * (1 - BUDGET_MARGIN / 2) if cfg.max_minutes else None
    if deadline and calibration:
        deadline -= calibration["seconds_per_eval"]
    opt = None
    if run.resumed_from is not None and not (state.batch == 0 and cfg.resets_optimizer(state.epoch)):
        opt = _optimizer(model, cfg)
        if run.sharded:
            _load_sharded_optimizer(run, opt)
        else:
            load_optimizer(opt, run.resumed_from)
    loader = batch_loader(_stream(run, plan), cfg.num_workers, pin_memory=device.startswith("cuda"))
    # running sums on the device (read once per record, not per step): loss, and the gradient norm before clipping
    sums = torch.tensor([state.pending["loss"], state.pending["grad_norm"]], dtype=torch.float64, device=device)
    bar = tqdm(total=plan.total_steps, initial=state.step, desc=cfg.name, unit="step",
               disable=not progress or run.rank != 0)
    last, t0 = run.resumed_from, time.perf_counter()
    model.train()
    for micro in _steps(loader, plan, cfg.gradient_accumulation_steps):
        epoch = micro[0]["epoch"]
        if micro[0]["batch"] == 0 and (opt is None or cfg.resets_optimizer(epoch)):
            opt = _optimizer(model, cfg)
        sums += _optimizer_step(run, opt, micro)
        state.epoch, state.batch = (epoch + 1, 0) if micro[-1]["batch"] + 1 == plan.batches_per_epoch \
            else (epoch, micro[-1]["batch"] + 1)
        bar.update(1)
        end_of_epoch, finished = state.batch == 0, state.epoch == cfg.num_epochs and state.batch == 0
        out_of_time = deadline is not None and time.perf_counter() > deadline and not finished
        if deadline is not None and run.world_size > 1:  # the ranks stop together
            flag = torch.tensor(int(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag)
        evals = bool(cfg.eval_every_steps) and state.step % cfg.eval_every_steps == 0
        if end_of_epoch or evals or out_of_time:  # close the record, evaluating where due
            state.pending["loss"], state.pending["grad_norm"] = sums.tolist()
            state.pending["seconds"] += time.perf_counter() - t0
            due = evals or finished or out_of_time or (
                not cfg.eval_every_steps and end_of_epoch and (epoch + 1) % cfg.eval_every_epochs == 0)
            record = _record(run, epoch, evaluate_now=due, calibration=calibration)
            if out_of_time:
                record["cut_by_budget"] = f"stopped at step {state.step} of {plan.total_steps}"
            sums.zero_()
            calibration = {}
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                            **({"val": f"{record['val_accuracy']:.3f}"} if "val_accuracy" in record else {}))
            if on_record and run.rank == 0:
                on_record(record)
            t0 = time.perf_counter()
        if end_of_epoch or out_of_time or (cfg.save_every_steps and state.step % cfg.save_every_steps == 0):
            state.pending["loss"], state.pending["grad_norm"] = sums.tolist()
            state.pending["seconds"] += time.perf_counter() - t0
            full = _full_states(run, opt) if run.sharded else {}  # a collective: every rank takes part
            if run.rank == 0:
                state.save(cfg.run_dir, model, run.tok, opt, metadata={"run": cfg.name, **(state.history or [{}])[-1]},
                           **full)
                prune(cfg.run_dir, cfg.keep_checkpoints)
            if run.world_size > 1:
                dist.barrier()  # no rank goes on (or ends) before the checkpoint is in place
            last = cfg.run_dir / state.name
            t0 = time.perf_counter()
        if out_of_time:
            break
    bar.close()
    if last is None:
        raise ConfigError(f"{cfg.run_dir}: num_epochs={cfg.num_epochs} leaves nothing to train")
    return TrainResult(cfg.run_dir, last, state.history)


def _steps(loader, plan: Plan, accumulation: int) -> Iterator[list[dict[str, Any]]]:
    """The stream's micro-batches grouped into optimizer steps (a step never crosses an epoch's end)."""
    micro: list[dict[str, Any]] = []
    for batch in loader:
        micro.append(batch)
        if len(micro) == accumulation or batch["batch"] + 1 == plan.batches_per_epoch:
            yield micro
            micro = []


def _optimizer_step(run: _Run, opt: torch.optim.Optimizer, micro: list[dict[str, Any]]) -> torch.Tensor:
    """Forward and backward over one step's micro-batches (each with its own seeded dropout), then clip,
    set the learning rate and step. Returns [summed micro-batch losses, gradient norm before clipping]
    (float64, on the device, no sync)."""
    cfg, state, model = run.cfg, run.state, run.model
    total = torch.zeros((), dtype=torch.float64, device=run.device)
    for i, batch in enumerate(micro):
        torch.manual_seed(hash((cfg.seed, batch["epoch"], batch["batch"])) % 2**62)
        units = int((batch["target_pos"] >= 0).sum())  # of the whole batch, on every rank
        rows, weight = _rows(len(batch["input_ids"]), run)
        tensors = _to({k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, run.device)
        with _grad_sync(run, i == len(micro) - 1):
            with _autocast(cfg, run.device):
                loss = weight * unit_loss_sum(run.ddp or model, tensors) / units
            (loss * run.world_size / cfg.gradient_accumulation_steps).backward()
        total += loss.detach().double()
        state.pending["batches"] += 1
        state.pending["tokens"] += batch["n_tokens"]
        state.pending["sequences"] += len(batch["input_ids"])
    if run.world_size > 1:
        dist.all_reduce(total)  # the ranks' shares of each batch's loss
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor
    state.pending["steps"] += 1
    for g in opt.param_groups:
        g["lr"] = lr_at(state.step, state.plan.total_steps, cfg)
    opt.step()
    opt.zero_grad(set_to_none=True)
    state.step += 1
    return torch.stack([total, norm.detach().double()])


def _full_states(run: _Run, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """FSDP: the whole model and optimizer state gathered on rank 0's CPU, in our checkpoint's layout (the base's
    weights by name; the optimizer's state by parameter index, as a single process numbers them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(run.model, options=opts)
    optim = get_optimizer_state_dict(run.model, opt, options=opts)
    if run.rank != 0:  # the gathered states land on rank 0 only
        return {}
    index = {name: i for i, (name, _) in enumerate(run.model.named_parameters())}
    # one name per tensor, as a single process saves a tied unembedding (named_parameters drops the twin)
    own = {n for n, _ in run.model.base.named_parameters()} | {n for n, _ in run.model.base.named_buffers()}
    return {"weights": {k.removeprefix("base."): v for k, v in weights.items() if k.removeprefix("base.") in own},
            "optimizer_state": _rekeyed(optim, index)}


def _load_sharded_optimizer(run: _Run, opt: torch.optim.Optimizer) -> None:
    """FSDP: a checkpoint's optimizer state (by parameter index) loaded into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = dict(enumerate(name for name, _ in run.model.named_parameters()))
    full = _rekeyed(read_optimizer(run.resumed_from), names)
    set_optimizer_state_dict(run.model, opt, full, options=StateDictOptions(full_state_dict=True))


def _rekeyed(sd: dict[str, Any], key: dict) -> dict[str, Any]:
    """An optimizer state_dict with its parameters renamed by `key` (index -> name, or name -> index)."""
    return {"state": {key[p]: st for p, st in sd["state"].items()},
            "param_groups": [{**g, "params": [key[p] for p in g["params"]]} for g in sd["param_groups"]]}


def _rows(n: int, run: _Run) -> tuple[slice, float]:
    """This rank's rows of a batch of n, and the weight of its loss: its contiguous block, or where a short
    last batch leaves it none, the first row at weight 0 (so that every rank runs the same graph)."""
    block = rank_slice(n, run.rank, run.world_size)
    return (slice(block.start, block.stop), 1.0) if len(block) else (slice(0, 1), 0.0)


def _optimizer(model: CoconutModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _record(run: _Run, epoch: int, evaluate_now: bool, calibration: dict[str, Any]) -> dict[str, Any]:
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
        "hardware": run.hardware,
    }
    if calibration:
        record["calibration"] = calibration
        record["epoch_items"] = state.plan.epoch_items
    if evaluate_now and run.val_items:
        block = rank_slice(len(run.val_items), run.rank, run.world_size)
        mine = run.val_items[block.start : block.stop]
        with _whole(run):
            res = evaluate(run.model, run.tok, mine, stage=cfg.stage(epoch), batch_size=cfg.eval_batch_size,
                           progress=False).items if mine else []
            search = _search(run)  # every rank runs the same forwards: FSDP gathers each layer inside them
        counts = torch.tensor([sum(r.correct for r in res), sum(r.n_thoughts for r in res), len(res)],
                              dtype=torch.float64, device=run.device)
        if run.world_size > 1:
            dist.all_reduce(counts)
        record.update(val_accuracy=float(counts[0] / counts[2]), val_mean_thoughts=float(counts[1] / counts[2]))
        if search is not None:
            record["search"] = search
        run.model.train()
    state.history.append(record)
    state.seconds += seconds
    state.pending = RunState.empty_pending()
    return record


def _search(run: _Run) -> dict[str, Any] | None:
    """The latent-search summary on the first search_items validation items (None where the run logs none)."""
    n = run.cfg.search_items
    if not n or not run.val_items or not run.model.config.stage_spec.markers:
        return None
    return search_summary(run.model, run.tok, run.val_items[:n], batch_size=run.cfg.eval_batch_size).as_dict()


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
