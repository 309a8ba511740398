"""A training run's configuration: one YAML file (which may inherit from another), overridable option by option.

Field names follow the official Coconut YAML files where they exist; probe.train.loop runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from probe.data.render import DATA_FORMATS, MODES, StageSpec
from probe.data.supervision import SUPERVISIONS, THOUGHT_LOSSES

PRECISIONS = ("float32", "bfloat16")
DISTRIBUTED = ("ddp", "fsdp")


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
    # 'word' (one token per name), 'rbs' (RbS's 40 tokens: node indices 0..30 and its markers), 'base' (the base's)
    # or a tokenizer directory
    tokenizer: str = "word"
    data_format: str = "sentences"  # sentences | edges | graph | rbs (probe.data.render); rbs goes with tokenizer rbs
    # What the loss reads (probe.data.supervision): language steps (Coconut), or each thought read
    # through the unembedding toward its optimal nodes (Reasoning by Superposition).
    supervision: str = "language"  # language | optimal
    thought_loss: str = "all"  # with optimal: every thought up to the stage (all), or only the newest
    # Data: a file in the official format (or RbS's, with optimal sets), or a pool of train_size generated items
    # (generated anew every epoch if asked); an epoch is epoch_items views of the pool (default: one pass), each
    # with its facts and options reshuffled.
    train_data: str | None = None
    train_size: int = 20000
    fresh_data_every_epoch: bool = False
    epoch_items: int | None = None
    # data_format rbs only: every view also permutes the item's node indices ("Emergence of Superposition",
    # shuffle_nodes; probe.data.rbs.rbs_view), so that no id means anything across items.
    shuffle_nodes: bool = False
    val_data: str | None = None
    val_size: int | None = None
    # Train and evaluate even where the tokenizer cannot write the data (a word it loses or changes, refused
    # before any step by probe.data.render.check_tokenizer_writes): for those who know what they do.
    allow_lossy_tokenizer: bool = False
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
    eval_every_steps: int | None = None  # also evaluate (and record) every N optimizer steps
    save_every_steps: int | None = None  # also checkpoint every N optimizer steps (epoch ends always save)
    eval_batch_size: int = 64
    # At every evaluation, also log the latent-search summary (analyze.SearchSummary: frontier and optimal value
    # mass, parallelism, inner products by group, the decomposition's frontier share, the attention gap) on the
    # first search_items validation items, so that a card shows when the search appears. 0: none; a mode
    # without thoughts logs none.
    search_items: int = 0
    keep_checkpoints: int = 2
    # Speed: bfloat16 autocast on CUDA (weights and optimizer stay float32), data prepared by
    # num_workers processes ahead of the model, and a wall-clock budget in minutes that fits
    # epoch_items (so the curriculum and the learning-rate schedule) to the time.
    precision: str = "float32"  # float32 | bfloat16
    num_workers: int = 0
    max_minutes: float | None = None
    # Under torchrun: DistributedDataParallel (a replica per rank), or FSDP (fully_shard: each decoder layer
    # and the rest sharded over the ranks, for a base that does not fit one device).
    distributed: str = "ddp"  # ddp | fsdp

    def __post_init__(self) -> None:
        # YAML reads '1e-4' as a string; accept it as the official configs write it.
        for name in ("lr", "weight_decay", "uniform_prob", "max_grad_norm", "max_minutes"):
            v = getattr(self, name)
            if isinstance(v, str):
                try:
                    setattr(self, name, float(v))
                except ValueError:
                    raise ConfigError(f"{name} must be a number, got {v!r}") from None
        if self.mode not in MODES:
            raise ConfigError(f"mode: unknown {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.allow_lossy_tokenizer, bool):
            raise ConfigError(f"allow_lossy_tokenizer must be true or false, got {self.allow_lossy_tokenizer!r}")
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
        choices = {"supervision": SUPERVISIONS, "thought_loss": THOUGHT_LOSSES, "precision": PRECISIONS,
                   "distributed": DISTRIBUTED}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}: unknown {getattr(self, name)!r}; expected one of {allowed}")
        self._check_rbs()
        if self.supervision == "optimal" and self.mode == "cot":
            raise ConfigError("mode cot trains language steps; it needs supervision: language")
        if self.supervision == "optimal" and self.c_thought != 1:
            raise ConfigError(f"supervision optimal trains one thought per node: c_thought must be 1, got {self.c_thought}")
        for name in ("train_size", "epoch_items", "eval_every_steps", "save_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.search_items < 0:
            raise ConfigError(f"search_items must be >= 0, got {self.search_items}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.max_minutes is not None and self.fresh_data_every_epoch:
            raise ConfigError("max_minutes fits epoch_items to the budget, and fresh_data_every_epoch fixes it at "
                              "train_size; use a fixed pool (fresh_data_every_epoch: false)")
        if self.fresh_data_every_epoch and self.epoch_items not in (None, self.train_size):
            raise ConfigError("with fresh_data_every_epoch an epoch is its pool: leave epoch_items unset")

    def _check_rbs(self) -> None:
        """RbS's layout and tokenizer go together: its tokens are node indices and its markers, and its layout has no
        language steps (docs/rbs-notes.md, sections 2-3). Raises ConfigError naming the field."""
        if self.tokenizer == "rbs" and self.data_format != "rbs":
            raise ConfigError(f"tokenizer rbs writes only RbS's layout: data_format must be rbs, got "
                              f"{self.data_format!r}")
        if self.data_format == "rbs":
            if self.tokenizer != "rbs":
                raise ConfigError(f"data_format rbs is written in RbS's tokens: tokenizer must be rbs, got "
                                  f"{self.tokenizer!r}")
            if self.mode == "cot":
                raise ConfigError("mode cot trains language steps, which data_format rbs does not have: choose "
                                  "coconut, pause_as_thought, no_thoughts or no_cot")
            if self.supervision != "optimal":
                raise ConfigError(f"data_format rbs has no language steps to supervise: supervision must be optimal, "
                                  f"got {self.supervision!r}")
        if self.shuffle_nodes and self.data_format != "rbs":
            raise ConfigError(f"shuffle_nodes permutes node indices, which only data_format rbs writes; got "
                              f"data_format {self.data_format!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    @property
    def stage_spec(self) -> StageSpec:
        return StageSpec(self.mode, self.c_thought, self.max_latent_stage, self.pad_latent_to_max)

    def stage(self, epoch: int) -> int:
        """The curriculum stage of an epoch (always 0 for cot and no_cot)."""
        return 0 if self.mode in ("cot", "no_cot") else epoch // self.epochs_per_stage

    def resets_optimizer(self, epoch: int) -> bool:
        """Whether a fresh optimizer starts this epoch (reset_optimizer, at a stage change)."""
        return self.reset_optimizer and epoch > 0 and self.stage(epoch) != self.stage(epoch - 1)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """A config from a YAML file; overrides replace its options (the CLI's --set and flags), a dotted
        name one entry of a mapping option (`model.n_embd`).

        A file may start from another with `inherit: other.yaml` (a path relative to it) and change
        some of its options; chains are followed, a cycle is an error.
        """
        path = Path(path)
        raw = read_options(path)
        for key, value in overrides.items():  # "model.n_embd" changes one entry of the model mapping
            head, _, sub = key.partition(".")
            if sub:
                if not isinstance(raw.get(head, {}), dict):
                    raise ConfigError(f"{path}: {key}: option {head!r} is not a mapping")
                raw[head] = {**raw.get(head, {}), sub: value}
            else:
                raw[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {unknown}")
        try:
            return cls(**raw)
        except TypeError as e:
            raise ConfigError(f"{path}: {e}") from None


def read_options(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's options, with those of the files it inherits from underneath; ConfigError names a
    missing, malformed or circular file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: inherits from itself ({' -> '.join(str(p) for p in (*seen, path.resolve()))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}{where})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of options")
    parent = raw.pop("inherit", None)
    if parent is None:
        return raw
    return {**read_options(path.parent / str(parent), (*seen, path.resolve())), **raw}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """OPTION=VALUE strings (the value read as YAML) as a dict; ConfigError names a malformed one."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected OPTION=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    return out
