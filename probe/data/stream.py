"""The training batches of a run, as a deterministic stream that CPU workers prepare ahead of the model.

Batch b of epoch e is a pure function of (config, e, b): its items, their curriculum stages, the
order of their facts and options, and hence its tensors. So any worker can build any batch, a
run resumed mid-epoch sees exactly the batches it would have seen, and `num_workers` changes
speed only.

Items come from a pool: a data file, or `train_size` generated items (generated once, in chunks
whose seeds do not depend on the number of workers; or anew every epoch with
`fresh_data_every_epoch`). An epoch is `epoch_items` item views: the pool is walked in a new
random order on each pass, and each view is reshuffled (facts and options) as it is drawn; in RbS's
layout (data format "rbs") a view is RbS's (`probe.data.rbs.rbs_view`: the edges reshuffled, the
option order drawn, and with `shuffle_nodes` the node indices permuted, as the Emergence paper trains).
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from probe.data.generate import generate_items
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.data.rbs import rbs_view
from probe.data.render import (IGNORE_INDEX, Rendered, StageSpec, TokenizedItem, question_text, rbs_question,
                               tokenize_item)
from probe.data.supervision import TrainingItem, optimal_targets, render_training

POOL_CHUNK = 1024  # items per generator seed, so that a pool does not depend on the number of processes


def _chunk(args: tuple[int, int, int]) -> list[ProsQAItem]:
    seed, chunk, n = args
    return generate_items(n, seed=seed * 1_000_003 + chunk)


def generate_pool(n: int, seed: int, workers: int = 0) -> list[ProsQAItem]:
    """n generated items in chunks of POOL_CHUNK, each chunk from its own seed; workers > 1 generates
    the chunks in that many processes (the same items either way)."""
    jobs = [(seed, c, min(POOL_CHUNK, n - c * POOL_CHUNK)) for c in range(math.ceil(n / POOL_CHUNK))]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as ex:
            chunks = list(ex.map(_chunk, jobs))
    else:
        chunks = [_chunk(j) for j in jobs]
    return [it for c in chunks for it in c]


def batches_per_epoch(epoch_items: int, batch_size: int) -> int:
    """Batches in an epoch of epoch_items item views (the last one may be short)."""
    return math.ceil(epoch_items / batch_size)


def collate(seqs: Sequence[Rendered], pad_id: int, latent_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch so that every row's first latent sits in one column (the official layout).

    Rows are left-padded by the difference in where their first latent falls, then right-padded
    to one length; padding is masked and gets label IGNORE_INDEX. Besides input_ids,
    attention_mask, position_ids and labels ([batch, seq]), the supervised units of every row
    (`Rendered.units`) come as target_pos [batch, n_units] (the logit column, -1 for none) and
    target_ids [batch, n_units, max_set] (the accepted tokens, -1 padded).
    """
    first = [s.input_ids.index(latent_id) if latent_id in s.input_ids else None for s in seqs]
    anchor = max((f for f in first if f is not None), default=0)
    left = [anchor - f if f is not None else 0 for f in first]
    width = max(l + len(s.input_ids) for l, s in zip(left, seqs))
    units = [s.units() for s in seqs]
    n_units = max(1, max(len(u) for u in units))
    n_set = max([1] + [len(t) for u in units for _, t in u])
    ids, labels, mask, pos, toks = [], [], [], [], []
    for l, s, u in zip(left, seqs, units):
        r = width - l - len(s.input_ids)
        ids.append([pad_id] * l + list(s.input_ids) + [pad_id] * r)
        labels.append([IGNORE_INDEX] * l + list(s.labels) + [IGNORE_INDEX] * r)
        mask.append([0] * l + [1] * len(s.input_ids) + [0] * r)
        pos.append([p + l for p, _ in u] + [-1] * (n_units - len(u)))
        toks.append([list(t) + [-1] * (n_set - len(t)) for _, t in u] + [[-1] * n_set] * (n_units - len(u)))
    target_pos, target_ids = torch.tensor(pos), torch.tensor(toks)
    mask_t = torch.tensor(mask)
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": mask_t,
        "position_ids": (mask_t.cumsum(-1) - 1).clamp(min=0),
        "labels": torch.tensor(labels),
        "target_pos": target_pos,
        "target_ids": target_ids,
    }


@dataclass(frozen=True)
class StreamSpec:
    """Everything that decides a run's batches (a plain object, so that workers can receive it)."""

    seed: int
    batch_size: int
    epoch_items: int
    stages: tuple[int, ...]  # the curriculum stage of each epoch
    stage_spec: StageSpec
    special: Any
    data_format: str
    supervision: str
    thought_loss: str
    uniform_prob: float
    train_size: int
    fresh_data_every_epoch: bool
    shuffle_nodes: bool = False  # data format rbs: every view permutes the item's node indices

    @property
    def batches_per_epoch(self) -> int:
        return batches_per_epoch(self.epoch_items, self.batch_size)

    def draw_stage(self, stage: int, n_steps: int, rng: random.Random) -> int:
        """An item's stage: the epoch's, or with probability uniform_prob a random one, drawn as the
        official code of each supervision draws it (Coconut: 0..n_steps; RbS: 0..min(stage, n_steps))."""
        if rng.random() >= self.uniform_prob:
            return stage
        top = n_steps if self.supervision == "language" else min(stage, n_steps)
        return rng.randint(0, top)


@dataclass(frozen=True)
class _Prepared:
    """What a pool item's views share: its tokens (the question replaced per view), its thought targets per depth
    (`optimal_targets`) and the first name token of each node (`name_tokens`), under supervision optimal."""

    tokens: TokenizedItem
    targets: tuple[tuple[int, ...], ...]
    names: list[int]


class BatchStream(IterableDataset):
    """Collated batches from (epoch, batch) = start up to the end of epoch `stop` (exclusive), in order.

    Each yielded dict holds the collate tensors plus epoch, batch, stage and n_tokens (real tokens,
    thoughts included). Under a DataLoader with W workers, worker w builds every W-th batch and the
    loader returns them in order.
    """

    def __init__(self, spec: StreamSpec, tokenizer, pool: list[ProsQAItem] | None, start: tuple[int, int], stop: int):
        self.spec, self.tokenizer, self.pool, self.start, self.stop = spec, tokenizer, pool, start, stop
        self._pools: dict[int, list[ProsQAItem]] = {}
        self._prepared: dict[tuple[int, int], _Prepared] = {}
        self._order: tuple[int, list[int]] | None = None

    def positions(self) -> Iterator[tuple[int, int]]:
        """Every (epoch, batch) of the stream, in order."""
        epoch, b = self.start
        while epoch < self.stop:
            yield epoch, b
            b += 1
            if b == self.spec.batches_per_epoch:
                epoch, b = epoch + 1, 0

    def __len__(self) -> int:
        return sum(1 for _ in self.positions())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        n, w = (info.num_workers, info.id) if info is not None else (1, 0)
        for i, (epoch, b) in enumerate(self.positions()):
            if i % n == w:
                yield self.batch(epoch, b)

    # -- one batch

    def _pool_of(self, epoch: int) -> tuple[int, list[ProsQAItem]]:
        """The pool an epoch draws from, and its key (0 for a fixed pool)."""
        s = self.spec
        if self.pool is not None and not s.fresh_data_every_epoch:
            return 0, self.pool
        if epoch not in self._pools:
            self._pools = {epoch: generate_pool(s.train_size, seed=s.seed * 1_000_003 + epoch + 1)}
        return epoch + 1, self._pools[epoch]

    def _views(self, epoch: int, b: int) -> list[tuple[int, int]]:
        """(pool key, pool index) of each item view of batch b."""
        s = self.spec
        key, pool = self._pool_of(epoch)
        lo = b * s.batch_size
        hi = min(lo + s.batch_size, s.epoch_items)
        out = []
        for i in range(lo, hi):
            g = i if key else epoch * s.epoch_items + i  # a fixed pool is walked across epochs
            walk, pos = divmod(g, len(pool))
            if self._order is None or self._order[0] != (key, walk):
                order = list(range(len(pool)))
                random.Random(f"{s.seed}:order:{key}:{walk}").shuffle(order)
                self._order = ((key, walk), order)
            out.append((key, self._order[1][pos]))
        return out

    def _item(self, key: int, index: int) -> tuple[ProsQAItem, _Prepared]:
        """A pool item and what never changes between its views: the answer, steps and thought targets."""
        pool = self.pool if key == 0 else self._pools[key - 1]
        it = pool[index]
        if (key, index) not in self._prepared:
            if len(self._prepared) > 4 * len(pool):
                self._prepared.clear()
            tok = tokenize_item(it, self.tokenizer, self.spec.data_format)
            names, targets = [], ()
            if self.spec.supervision == "optimal":
                names = name_tokens(it, self.tokenizer, self.spec.data_format)
                targets = optimal_targets(it, names)
            self._prepared[(key, index)] = _Prepared(tok, targets, names)
        return it, self._prepared[(key, index)]

    def _view(self, it: ProsQAItem, prep: _Prepared, rng: random.Random) -> TrainingItem:
        """One view of a pool item, drawn from rng: its facts and options reshuffled, or in RbS's layout RbS's view
        (`rbs_view`), whose permuted node ids change the steps, the answer and the thought targets."""
        s = self.spec
        if s.data_format != "rbs":
            text = question_text(it.reshuffled(rng), s.data_format) + "\n"
            question = tuple(self.tokenizer.encode(text, add_special_tokens=True))
            return TrainingItem(replace(prep.tokens, question=question), prep.targets)
        view = rbs_view(it, rng, s.shuffle_nodes)
        tok = tokenize_item(view.item, self.tokenizer, "rbs", question=rbs_question(view.item, view.target_first))
        if not s.shuffle_nodes or s.supervision != "optimal":
            return TrainingItem(tok, prep.targets)
        # Node v is written "v" in every view (names are indices), so the item's name tokens are the view's.
        return TrainingItem(tok, optimal_targets(view.item, prep.names))

    def batch(self, epoch: int, b: int) -> dict[str, Any]:
        """Batch b of an epoch: the same tensors whoever builds it."""
        s = self.spec
        rng = random.Random(f"{s.seed}:batch:{epoch}:{b}")
        seqs = []
        for key, index in self._views(epoch, b):
            it, prep = self._item(key, index)
            item = self._view(it, prep, rng)
            n_steps = item.n_steps if s.supervision == "optimal" else len(item.tokens.steps)
            stage = s.draw_stage(s.stages[epoch], n_steps, rng)
            seqs.append(render_training(item, stage, s.stage_spec, s.special, supervision=s.supervision,
                                        thought_loss=s.thought_loss))
        out: dict[str, Any] = collate(seqs, s.special.pad_id, s.special.latent_id)
        out.update(epoch=epoch, batch=b, stage=s.stages[epoch], n_tokens=int(out["attention_mask"].sum()))
        return out


def batch_loader(stream: BatchStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a stream: workers build batches ahead of the model, in order."""
    if num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)
