"""Decode one item's thoughts: what a lens reads at every layer of every thought, and the model's answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import Tensor

from probe.capture.trace import capture_batch
from probe.data.graph import ProsQAGraph
from probe.data.layout import indistinct_names
from probe.data.prosqa import ProsQAItem
from probe.data.render import gold_answer, node_labels
from probe.model.evaluate import MAX_NEW_TOKENS, is_correct
from probe.readouts.lens import Lens, LensReadout, read_lens
from probe.model.architecture import architecture
from probe.model.hook_names import RESID, select_hooks
from probe.model.coconut import CoconutModel


@dataclass
class LayerReading:
    layer: int
    top: list[tuple[str, float]]  # token, probability
    frontier_mass: float


@dataclass
class StepReading:
    """One step: thought k (emitted at the position before it), or the first answer position."""

    k: int
    is_answer: bool
    frontier: list[str]  # names of the frontier nodes the step is read against
    reachable: list[str]
    layers: list[LayerReading] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "frontier": self.frontier, "reachable": self.reachable,
                "layers": [{"layer": r.layer, "top": [[t, p] for t, p in r.top], "frontier_mass": r.frontier_mass}
                           for r in self.layers]}


@dataclass(kw_only=True)
class Decoded:
    """Everything `probe decode` shows for one item."""

    index: int
    question: str
    answer: str  # what a correct prediction equals (render.gold_answer: in RbS's format, the target's index)
    prediction: str
    correct: bool
    generated: str
    lens: str
    thoughts: list[StepReading]
    answer_step: StepReading
    readout: LensReadout = field(repr=False)
    thought_vectors: Tensor = field(repr=False)  # [k, d_model] the thoughts fed back (ThoughtTrace.thoughts)
    indistinct: list[tuple[str, ...]] = field(default_factory=list)  # names the readings cannot tell apart

    def to_json(self) -> dict[str, Any]:
        """The `probe decode --json` report."""
        return {"index": self.index, "question": self.question, "prediction": self.prediction, "correct": self.correct,
                "lens": self.lens, "thoughts": [t.to_json() for t in self.thoughts],
                "answer_step": self.answer_step.to_json(),
                **({"indistinct_names": [list(g) for g in self.indistinct]} if self.indistinct else {})}


def _shown(text: str) -> str:
    """A token as a table shows it: stripped, or quoted when it is only whitespace (a newline)."""
    return text.strip() or repr(text)


def decode_item(
    model: CoconutModel, tokenizer, item: ProsQAItem, *, index: int = 0, k: int | None = None,
    lens: Lens | None = None, layers: Sequence[int] | None = None, top: int = 5,
) -> Decoded:
    """Read every thought of one item through a lens at each layer, and its greedy answer, in one pass."""
    # Only the residual stream is read: no attention patterns, so no switch to eager attention.
    names = select_hooks(architecture(model).n_layers, [f"*{RESID}"])
    # One pass: the capture goes on from its KV cache to the greedy answer that evaluate would generate.
    trace = capture_batch(model, tokenizer, [item], k=k, names=names, indices=[index], max_new_tokens=MAX_NEW_TOKENS)
    ro = read_lens(trace, model, tokenizer, [item], layers=layers, lens=lens, top=top)
    g = ProsQAGraph.from_item(item)
    fmt = model.config.data_format
    labels = node_labels(item, fmt)
    steps = []
    for s, depth in enumerate(ro.frontier_depth(trace.k)):
        reading = StepReading(
            k=depth, is_answer=s == trace.k,
            frontier=[labels[v] for v in g.frontier(depth)], reachable=[labels[v] for v in g.reachable(depth)],
        )
        for j, layer in enumerate(ro.layers):
            toks = [_shown(tokenizer.decode([t])) for t in ro.top_ids[0, s, j].tolist()]
            reading.layers.append(LayerReading(
                layer, [(str(t), float(p)) for t, p in zip(toks, ro.top_probs[0, s, j].tolist())],
                float(ro.frontier_mass[0, s, j]),
            ))
        steps.append(reading)
    pred = trace.predictions(tokenizer, fmt)[0]
    return Decoded(index=index, question=item.question, answer=gold_answer(item, fmt), prediction=pred,
                   correct=is_correct(pred, item, fmt), generated=tokenizer.decode(trace.answers()[0], skip_special_tokens=True),
                   lens=ro.lens, thoughts=steps[: trace.k],
                   answer_step=steps[trace.k], readout=ro, thought_vectors=trace.thoughts[0],
                   indistinct=indistinct_names(item, tokenizer, model.config.data_format))
