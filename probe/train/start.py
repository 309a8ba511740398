"""What a training run starts from, checked before its first step: its model and tokenizer (a checkpoint to
continue, a local Hugging Face directory, or a config to train from scratch) and its data (each item written in
the run's data format by its tokenizer), and the record of how a starting checkpoint was trained.

probe.train.loop's setup calls these; nothing here trains.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM

from probe.artifacts import COCONUT_CONFIG, TRAINER_STATE
from probe.data.generate import CONCEPT_NAMES, PERSON_NAMES, generate_items
from probe.data.prosqa import DataError, ProsQAItem, load_items
from probe.data.rbs import load_training_items
from probe.data.render import ROUND_TRIP_ITEMS, check_tokenizer_writes, question_text
from probe.formats import read_json_object
from probe.model.checkpoint import CheckpointError, check_weights, load_checkpoint, read_meta
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import (add_latent_tokens, build_rbs_tokenizer, build_word_tokenizer, is_rbs_tokenizer,
                                   load_tokenizer)
from probe.train.config import ConfigError, TrainConfig

LOSSY_OVERRIDE = "set allow_lossy_tokenizer: true (probe train --allow-lossy-tokenizer)"


def build_model(cfg: TrainConfig, extra_names: list[str]) -> tuple[CoconutModel, Any]:
    """The starting Coconut model and tokenizer of a run: a checkpoint, a local base directory, or from scratch."""
    if cfg.load_model_path:
        model, tok = load_checkpoint(cfg.load_model_path)
        check_tokenizer(cfg, tok, f"the tokenizer of {cfg.load_model_path}")
        # The run's mode and curriculum replace the checkpoint's (a CoT model continued as Coconut or pause).
        model.config = replace(
            model.config, mode=cfg.mode, c_thought=0 if cfg.mode == "no_thoughts" else cfg.c_thought,
            max_latent_stage=cfg.max_latent_stage, pad_latent_to_max=cfg.pad_latent_to_max, data_format=cfg.data_format,
            supervision=cfg.supervision,
        )
        return model, tok
    if cfg.tokenizer == "word":
        tok = build_word_tokenizer([*PERSON_NAMES, *CONCEPT_NAMES, *extra_names])
    elif cfg.tokenizer == "rbs":
        tok = build_rbs_tokenizer()
    else:
        tok = load_tokenizer(cfg.tokenizer if cfg.tokenizer != "base" else cfg.base)
    check_tokenizer(cfg, tok, cfg.tokenizer)
    special = add_latent_tokens(tok)
    if cfg.base:
        base = AutoModelForCausalLM.from_pretrained(cfg.base, local_files_only=True)
        check_weights(base, cfg.base)
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
        supervision=cfg.supervision,
    )
    model = CoconutModel(base, config)
    model.check_computation()
    return model, tok


def check_tokenizer(cfg: TrainConfig, tok: Any, what: str) -> None:
    """RbS's tokenizer writes RbS's layout only, and that layout only RbS's tokenizer (TrainConfig checks the names;
    this, the tokenizer a checkpoint or a directory brings). Raises ConfigError."""
    if is_rbs_tokenizer(tok) and cfg.data_format != "rbs":
        raise ConfigError(f"{what} is RbS's, which writes only RbS's layout: data_format must be rbs, got "
                          f"{cfg.data_format!r}")
    if cfg.data_format == "rbs" and not is_rbs_tokenizer(tok):
        raise ConfigError(f"data_format rbs is written in RbS's tokens, and {what} is not RbS's tokenizer")


def load_data(cfg: TrainConfig, path: str, limit: int | None, train: bool) -> list[ProsQAItem]:
    """A run's training or validation items, each checked to render in the run's data format (RbS's layout holds
    31 node indices) so that no item fails in the middle of the run. A training file of RbS's reachable sets is
    refused (`rbs.load_training_items`). Raises DataError naming the file and the item."""
    items = load_training_items(path, limit) if train else load_items(path, limit=limit)
    for i, it in enumerate(items):
        try:
            question_text(it, cfg.data_format)
        except ValueError as e:
            raise DataError(f"{path}: item {i}: {e}") from None
    return items


def check_data(cfg: TrainConfig, tok: Any, fmt: str, pool: list[ProsQAItem] | None, val_items: list[ProsQAItem],
               rank: int) -> None:
    """Refuse, before any step, a tokenizer that cannot write the run's training or validation data
    (check_tokenizer_writes; generated items when the pool is drawn anew every epoch), unless allow_lossy_tokenizer;
    then rank 0 warns on stderr. Raises LossyTokenizerError (a ValueError) naming the data option."""
    if pool is None:
        pool, train_source = generate_items(ROUND_TRIP_ITEMS, seed=cfg.seed), "the generated training items"
    else:
        train_source = f"train_data {cfg.train_data}" if cfg.train_data else "the generated training pool"
    for items, source in ((pool, train_source), (val_items, f"val_data {cfg.val_data}")):
        if not items:
            continue
        warning = check_tokenizer_writes(items, tok, fmt, source=source, allow_lossy=cfg.allow_lossy_tokenizer,
                                         override=LOSSY_OVERRIDE)
        if warning and rank == 0:
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def run_record(ckpt: Path) -> dict[str, Any]:
    """What a checkpoint says of how it was trained, for a run that starts from it: its trainer state,
    or for a released checkpoint the phases in its coconut.json, rebuilt as the same chain of inits."""
    state = ckpt / TRAINER_STATE
    if state.is_file():
        rec = read_json_object(state, CheckpointError, TRAINER_STATE)
        return {"history": rec.get("history", []), "init": rec.get("init")}
    if not (ckpt / COCONUT_CONFIG).is_file():
        return {}
    rec: dict[str, Any] = {}
    for phase in read_meta(ckpt).get("metadata", {}).get("training", []):  # oldest first
        rec = {"history": phase.get("history", []), "init": rec or None}
    return rec
