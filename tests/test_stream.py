"""The batch stream: deterministic by (epoch, batch), the same under workers, a pool walked once per pass."""

from __future__ import annotations

import pytest
import torch

from probe.data.prosqa import parse_question
from probe.data.render import question_text
from probe.data.stream import batch_loader, generate_pool
from probe.train.loop import TrainConfig, _setup, _stream


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(name="s", out_dir=str(tmp_path / "run"), model={"model_type": "gpt2", "n_layer": 1, "n_embd": 16,
                                                                "n_head": 2},
                data_format="graph", supervision="optimal", train_size=40, batch_size=16, epochs_per_stage=1,
                num_epochs=3, uniform_prob=0.5, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


@pytest.mark.parametrize("layout", [{}, dict(tokenizer="rbs", data_format="rbs", shuffle_nodes=True)])
def test_a_batch_is_a_function_of_its_position(tmp_path, layout):
    run = _setup(tiny(tmp_path, **layout), False, "cpu")
    one, two = _stream(run, run.state.plan), _stream(run, run.state.plan)
    assert _equal(one.batch(1, 2), two.batch(1, 2))
    assert not torch.equal(one.batch(1, 1)["input_ids"][:1], one.batch(1, 2)["input_ids"][:1])
    # built in order by two worker processes, or here in this process: the same batches
    inline = list(batch_loader(one))
    workers = list(batch_loader(_stream(run, run.state.plan), num_workers=2))
    assert [(b["epoch"], b["batch"]) for b in inline] == [(e, b) for e in range(3) for b in range(3)]
    assert len(inline) == len(workers) and all(_equal(a, b) for a, b in zip(inline, workers))
    # the stage follows the epoch
    assert [b["stage"] for b in inline[::3]] == [0, 1, 2]


def test_a_pass_over_the_pool_sees_each_item_once_reshuffled(tmp_path):
    run = _setup(tiny(tmp_path, uniform_prob=0.0), False, "cpu")
    stream = _stream(run, run.state.plan)
    tok = run.tok
    pool = {frozenset(parse_question(it.question)[0]): it for it in run.pool}
    seen = []
    for b in range(stream.spec.batches_per_epoch):
        for row in stream.batch(0, b)["input_ids"]:
            text = tok.decode([t for t in row.tolist() if t != tok.eos_token_id], skip_special_tokens=True)
            question = text.split("\n")[0].strip()
            facts = frozenset(tuple(f.split()) for f in question.split("|")[:-1])
            seen.append(facts)
            # ... each with its facts in a new order (the item's own order is question_text's)
            assert question != question_text(pool[facts], "graph")
    assert sorted(map(sorted, seen)) == sorted(map(sorted, pool))  # every pool item exactly once


def test_pool_does_not_depend_on_the_number_of_processes():
    a = generate_pool(1100, seed=5)
    b = generate_pool(1100, seed=5, workers=2)
    assert [it.to_json() for it in a] == [it.to_json() for it in b] and len(a) == 1100
    assert len({it.question for it in a}) == 1100
