"""The multi-stage curriculum (Coconut, Hao et al. 2024): stage s replaces the first s steps by thoughts.

One YAML file configures a run; the same loop trains the paper's baselines (mode cot,
no_cot, pause_as_thought, no_thoughts). A checkpoint is written after every epoch with the
optimizer state; `resume` continues from the latest one exactly (each epoch's data order
and dropout are seeded from (seed, epoch)).
"""

from __future__ import annotations

import json
import math
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM

from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES, generate_items
from probe.data.prosqa import ProsQAItem, atomic_write_text, load_items
from probe.data.render import DATA_FORMATS, IGNORE_INDEX, MODES, Rendered, StageSpec, render_stage, tokenize_item
from probe.evaluate import evaluate
from probe.model.checkpoint import load_checkpoint, save_checkpoint
from probe.model.coconut import CoconutConfig, CoconutModel, position_ids_from_mask
from probe.model.tokenizer import add_latent_tokens, build_word_tokenizer, load_tokenizer


class ConfigError(ValueError):
    """A training configuration that cannot run."""


@dataclass
class TrainConfig:
    """A training run; field names follow the official YAML files where they exist."""

    name: str
    out_dir: str | None = None  # default runs/{name}
    mode: str = "coconut"  # coconut | pause_as_thought | cot | no_cot | no_thoughts
    # Model: a Coconut checkpoint to continue from (the official name), a local Hugging Face
    # directory to start from, or a config to train from scratch.
    load_model_path: str | None = None
    base: str | None = None
    model: dict[str, Any] = field(default_factory=lambda: {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4})
    tokenizer: str = "word"  # 'word' (one token per name) or a tokenizer directory
    data_format: str = "sentences"
    # Data: a file in the official format, or generated items (fresh every epoch if asked).
    train_data: str | None = None
    train_size: int = 20000
    fresh_data_every_epoch: bool = False
    val_data: str | None = None
    val_size: int | None = None
    # Curriculum (the official names).
    c_thought: int = 1
    start_epoch: int = 0  # the official `resume`: begin the curriculum here (epochs_per_stage skips stage 0)
    epochs_per_stage: int = 5
    max_latent_stage: int = 6
    num_epochs: int = 50
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0
    reset_optimizer: bool = True  # a fresh optimizer at every stage change
    # Optimisation.
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (over the whole run)
    max_grad_norm: float | None = None
    seed: int = 0
    eval_every_epochs: int = 1
    eval_batch_size: int = 64
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        # YAML reads '1e-4' as a string; accept it as the official configs write it.
        for name in ("lr", "weight_decay", "uniform_prob", "max_grad_norm"):
            v = getattr(self, name)
            if isinstance(v, str):
                try:
                    setattr(self, name, float(v))
                except ValueError:
                    raise ConfigError(f"{name} must be a number, got {v!r}") from None
        if self.mode not in MODES:
            raise ConfigError(f"mode: unknown {self.mode!r}; expected one of {MODES}")
        if self.data_format not in DATA_FORMATS:
            raise ConfigError(f"data_format: unknown {self.data_format!r}; expected one of {DATA_FORMATS}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule: unknown {self.schedule!r}; expected constant or cosine")
        for name in ("epochs_per_stage", "num_epochs", "batch_size", "gradient_accumulation_steps", "c_thought"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.start_epoch < self.num_epochs:
            raise ConfigError(f"start_epoch must be in [0, num_epochs={self.num_epochs}), got {self.start_epoch}")
        if self.load_model_path and self.base:
            raise ConfigError("load_model_path and base both name a starting model; keep one")
        if not 0 <= self.uniform_prob <= 1:
            raise ConfigError(f"uniform_prob must be in [0, 1], got {self.uniform_prob}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    @property
    def stage_spec(self) -> StageSpec:
        return StageSpec(self.mode, self.c_thought, self.max_latent_stage, self.pad_latent_to_max)

    def stage(self, epoch: int) -> int:
        """The curriculum stage of an epoch (always 0 for cot and no_cot)."""
        return 0 if self.mode in ("cot", "no_cot") else epoch // self.epochs_per_stage

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {unknown}")
        try:
            return cls(**raw)
        except TypeError as e:
            raise ConfigError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------- batches


def collate(seqs: list[Rendered], pad_id: int, latent_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch so that every row's first latent sits in one column (the official layout).

    Rows are left-padded by the difference in where their first latent falls, then
    right-padded to one length; padding is masked and gets label IGNORE_INDEX.
    """
    first = [s.input_ids.index(latent_id) if latent_id in s.input_ids else None for s in seqs]
    anchor = max((f for f in first if f is not None), default=0)
    left = [anchor - f if f is not None else 0 for f in first]
    width = max(l + len(s.input_ids) for l, s in zip(left, seqs))
    ids, labels, mask = [], [], []
    for l, s in zip(left, seqs):
        r = width - l - len(s.input_ids)
        ids.append([pad_id] * l + list(s.input_ids) + [pad_id] * r)
        labels.append([IGNORE_INDEX] * l + list(s.labels) + [IGNORE_INDEX] * r)
        mask.append([0] * l + [1] * len(s.input_ids) + [0] * r)
    mask_t = torch.tensor(mask)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": mask_t,
        "position_ids": position_ids_from_mask(mask_t),
        "labels": torch.tensor(labels),
    }


def epoch_sequences(tokenized, stage: int, cfg: TrainConfig, special, rng: random.Random) -> list[Rendered]:
    """Every training item rendered at the epoch's stage (or, with uniform_prob, a random one), shuffled."""
    out = []
    for tok in tokenized:
        s = rng.randrange(len(tok.steps) + 1) if rng.random() < cfg.uniform_prob else stage
        out.append(render_stage(tok, s, cfg.stage_spec, special))
    rng.shuffle(out)
    return out


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate: linear warmup, then constant or cosine decay to 10%."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------------------- state on disk


def _save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": v.contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"]}))


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = json.loads((path / "optimizer.json").read_text())["param_groups"]
    opt.load_state_dict({"state": state, "param_groups": groups})


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest epoch checkpoint of a run, if any."""
    done = sorted(p for p in run_dir.glob("epoch-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


# ---------------------------------------------------------------------------- setup


def _load_data(cfg: TrainConfig, epoch: int) -> list[ProsQAItem]:
    if cfg.train_data:
        return load_items(cfg.train_data, limit=cfg.train_size)
    seed = cfg.seed * 1_000_003 + (epoch if cfg.fresh_data_every_epoch else 0)
    return generate_items(cfg.train_size, seed=seed)


def build_model(cfg: TrainConfig, extra_names: list[str]) -> tuple[CoconutModel, Any]:
    """The starting Coconut model and tokenizer of a run: a checkpoint, a local base directory, or from scratch."""
    if cfg.load_model_path:
        model, tok = load_checkpoint(cfg.load_model_path)
        # The run's mode and curriculum replace the checkpoint's (a CoT model continued as Coconut or pause).
        model.config = replace(
            model.config, mode=cfg.mode, c_thought=0 if cfg.mode == "no_thoughts" else cfg.c_thought,
            max_latent_stage=cfg.max_latent_stage, pad_latent_to_max=cfg.pad_latent_to_max, data_format=cfg.data_format,
        )
        return model, tok
    if cfg.tokenizer == "word":
        tok = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES, *extra_names])
    else:
        tok = load_tokenizer(cfg.tokenizer if cfg.tokenizer != "base" else cfg.base)
    special = add_latent_tokens(tok)
    if cfg.base:
        base = AutoModelForCausalLM.from_pretrained(cfg.base, local_files_only=True)
        old = base.get_input_embeddings().num_embeddings
        base.resize_token_embeddings(len(tok))
        emb = base.get_input_embeddings().weight.data
        # As the official code does: new tokens start from a known token's embedding ('<<' in GPT-2).
        seed_id = tok.convert_tokens_to_ids("<<") if "<<" in tok.get_vocab() else tok.eos_token_id
        for i in range(old, len(tok)):
            emb[i] = emb[seed_id]
    else:
        kw = dict(cfg.model)
        model_type = kw.pop("model_type", None)
        if not model_type:
            raise ConfigError("model: needs model_type (for example gpt2 or llama)")
        ids = {"bos_token_id": special.eos_id, "eos_token_id": special.eos_id, "pad_token_id": special.pad_id}
        hf_cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), **ids, **kw)
        base = AutoModelForCausalLM.from_config(hf_cfg)
    config = CoconutConfig.from_special(
        special, mode=cfg.mode, c_thought=0 if cfg.mode == "no_thoughts" else cfg.c_thought,
        max_latent_stage=cfg.max_latent_stage, pad_latent_to_max=cfg.pad_latent_to_max, data_format=cfg.data_format,
    )
    return CoconutModel(base, config), tok


# ---------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """Where a run ended and what it measured per epoch."""

    run_dir: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]


def train(
    cfg: TrainConfig, resume: bool = False, device: str = "cpu", progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Run the curriculum; write a checkpoint every epoch; continue from the latest one if resume."""
    run_dir = cfg.run_dir
    val_items = load_items(cfg.val_data, limit=cfg.val_size) if cfg.val_data else []
    start_epoch, history, global_step, init = cfg.start_epoch, [], 0, None
    last = latest_checkpoint(run_dir) if resume else None
    if resume and last is None:
        raise ConfigError(f"{run_dir}: nothing to resume (no epoch-* checkpoint)")
    if last is not None:
        model, tok = load_checkpoint(last, device=device)
        state = json.loads((last / "trainer_state.json").read_text())
        start_epoch, history, global_step = state["epoch"], state["history"], state["global_step"]
        init = state.get("init")
    else:
        if run_dir.exists() and any(run_dir.glob("epoch-*")):
            raise ConfigError(f"{run_dir}: holds checkpoints already; pass resume, or choose another out_dir")
        torch.manual_seed(cfg.seed)
        extra = sorted({s for it in val_items for s in it.idx_to_symbol})
        model, tok = build_model(cfg, extra)
        model.to(device)
        if cfg.load_model_path:
            init = {"path": cfg.load_model_path, **_run_record(Path(cfg.load_model_path))}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    special = model.config.special

    items = None
    steps_per_epoch = math.ceil(cfg.train_size / (cfg.batch_size * cfg.gradient_accumulation_steps))
    total_steps = steps_per_epoch * (cfg.num_epochs - cfg.start_epoch)
    hardware = _hardware(device)
    opt = None
    for epoch in range(start_epoch, cfg.num_epochs):
        stage = cfg.stage(epoch)
        if items is None or cfg.fresh_data_every_epoch:
            items = _load_data(cfg, epoch)
            tokenized = [tokenize_item(it, tok, cfg.data_format) for it in items]
        reset = cfg.reset_optimizer and stage != cfg.stage(epoch - 1)
        if opt is None or reset:
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            if last is not None and epoch == start_epoch and not reset:
                _load_optimizer(opt, last)
        rng = random.Random(cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        seqs = epoch_sequences(tokenized, stage, cfg, special, rng)
        model.train()
        bar = tqdm(total=math.ceil(len(seqs) / cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.num_epochs} stage {stage}",
                   disable=not progress, unit="batch")
        t0, n_tok, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
        for b, j in enumerate(range(0, len(seqs), cfg.batch_size)):
            batch = {k: v.to(device) for k, v in collate(seqs[j : j + cfg.batch_size], special.pad_id, special.latent_id).items()}
            out = model(**batch)
            (out.loss / cfg.gradient_accumulation_steps).backward()
            n_tok += int(batch["attention_mask"].sum())
            loss_sum, n_loss = loss_sum + float(out.loss.detach()), n_loss + 1
            if (b + 1) % cfg.gradient_accumulation_steps == 0 or j + cfg.batch_size >= len(seqs):
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                for g in opt.param_groups:
                    g["lr"] = lr_at(global_step, total_steps, cfg)
                opt.step()
                opt.zero_grad(set_to_none=True)
                global_step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_loss:.4f}", tok_s=f"{n_tok / (time.perf_counter() - t0):.0f}")
        bar.close()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "stage": stage, "train_loss": loss_sum / max(1, n_loss),
                  "tokens_per_s": n_tok / seconds, "seconds": seconds, "global_step": global_step, "hardware": hardware}
        if val_items and ((epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.num_epochs):
            res = evaluate(model, tok, val_items, stage=stage, batch_size=cfg.eval_batch_size, progress=progress)
            record.update(val_accuracy=res.accuracy, val_mean_thoughts=sum(r.n_thoughts for r in res.items) / res.n)
        history.append(record)
        if on_epoch:
            on_epoch(record)
        last = _save_epoch(model, tok, opt, cfg, record, history, global_step, init)
    if last is None:
        raise ConfigError(f"{run_dir}: num_epochs={cfg.num_epochs} leaves nothing to train")
    return TrainResult(run_dir, last, history)


def _hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _run_record(ckpt: Path) -> dict[str, Any]:
    """What a checkpoint says of how it was trained, for a run that starts from it: its trainer state,
    or for a released checkpoint the phases in its coconut.json, rebuilt as the same chain of inits."""
    state = ckpt / "trainer_state.json"
    if state.is_file():
        rec = json.loads(state.read_text())
        return {"history": rec.get("history", []), "init": rec.get("init")}
    meta = ckpt / "coconut.json"
    if not meta.is_file():
        return {}
    rec: dict[str, Any] = {}
    for phase in json.loads(meta.read_text()).get("metadata", {}).get("training", []):  # oldest first
        rec = {"history": phase.get("history", []), "init": rec or None}
    return rec


def _save_epoch(model, tok, opt, cfg: TrainConfig, record, history, global_step, init) -> Path:
    path = cfg.run_dir / f"epoch-{record['epoch']:03d}"
    save_checkpoint(model, tok, path, metadata={"run": cfg.name, **record})
    _save_optimizer(opt, path)
    state = {"epoch": record["epoch"], "global_step": global_step, "history": history, "init": init,
             "config": asdict(cfg)}
    atomic_write_text(path / "trainer_state.json", json.dumps(state, indent=1))
    old = sorted(p for p in cfg.run_dir.glob("epoch-*"))[: -cfg.keep_checkpoints]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return path
