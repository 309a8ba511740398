"""What a training sequence supervises, under each of the two supervisions a config can choose.

- "language" (Coconut, Hao et al. 2024): stage s replaces the first s reasoning steps by s
  thoughts; the remaining steps and the answer are trained in language (`render_stage`).
- "optimal" ("Reasoning by Superposition", Zhu, Hao et al. 2025): no language steps. After j
  thoughts the model emits thought j + 1, and that thought, read through the model's own
  unembedding, is trained toward the nodes of optimal_{j+1} (DESIGN.md: depth j + 1, on some
  shortest root -> target path). Never toward the whole frontier or the reachable set: a frontier
  held in superposition must emerge, not be taught. At stage s an item with D steps is at stage
  s' = min(s, D): with s' < D the sequence ends with s' thoughts (the question, `<|start-latent|>`
  and s' latents) and its newest thought is supervised; with s' = D it is at the answer stage: its
  thoughts (max_latent_stage of them when padded, as at inference), `<|end-latent|>` and the
  official answer line. In RbS's layout (data format "rbs") the thoughts follow the root unmarked, so thought j is
  emitted at the root's position + j - 1, and the answer stage ends with "[A]" and the target's one token, exactly
  RbS's training sequences (docs/rbs-notes.md, section 3).

  RbS draws one node of optimal_{j+1} at random each time an item is seen; here the loss of a
  thought is the mean negative log-probability over the whole set (a uniform soft target), which
  is that draw's expected loss, with less variance.

  thought_loss "newest" supervises what RbS supervises: one thought per sequence (the newest one),
  or at the answer stage only the answer. "all" supervises every thought the sequence holds up to
  the stage. Thought j's logits depend only on the positions before it (causal attention, and the
  thoughts fed back are themselves computed from earlier positions), so a sequence holding s
  thoughts computes, at the position emitting thought j, exactly what the stage-(j - 1) sequence
  computes at its last position: one pass carries the losses of stages 0..s at once, the same
  gradient as running those stage sequences separately (tests/test_supervision.py checks it) for
  the cost of one.

A supervised unit is (position, tokens): the logits at that position are trained toward the
token set (a language label is a set of one, at the position before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from probe.data.graph import ProsQAGraph
from probe.data.prosqa import ProsQAItem
from probe.data.render import IGNORE_INDEX, Rendered, StageSpec, TokenizedItem, render_stage, thought_span

Supervision = Literal["language", "optimal"]
SUPERVISIONS: tuple[str, ...] = ("language", "optimal")
ThoughtLoss = Literal["newest", "all"]
THOUGHT_LOSSES: tuple[str, ...] = ("newest", "all")


def optimal_targets(item: ProsQAItem, name_ids: list[int]) -> tuple[tuple[int, ...], ...]:
    """Per depth j = 1..D (D = the target's depth), the token ids of optimal_j's names, sorted.

    name_ids[v] is node v's first name token where a step names it (`layout.name_tokens`).
    optimal_D is {target}. Raises ValueError when two nodes of one optimal_j share a first token
    (the target set would count one name twice).
    """
    if len(name_ids) != item.n_nodes:
        raise ValueError(f"got {len(name_ids)} name tokens for an item of {item.n_nodes} nodes")
    g = ProsQAGraph.from_item(item)
    out = []
    for j in range(1, g.target_depth + 1):
        ids = [name_ids[v] for v in g.optimal(j)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"two nodes of optimal_{j} share their first name token; their targets would merge")
        out.append(tuple(sorted(ids)))
    return tuple(out)


@dataclass(frozen=True)
class TrainingItem:
    """One item as training reads it: its tokens and, per depth j = 1..D, the optimal_j name tokens."""

    tokens: TokenizedItem
    targets: tuple[tuple[int, ...], ...]

    @property
    def n_steps(self) -> int:
        return len(self.targets)


def render_optimal(item: TrainingItem, stage: int, spec: StageSpec, special, *, thought_loss: ThoughtLoss = "all",
                   ) -> Rendered:
    """The training sequence of an item at a curriculum stage under `supervision: optimal` (module docstring).

    A mode without markers (no_thoughts, no_cot) answers right after the question at every stage.
    Raises ValueError for mode cot (a language chain has no thoughts to supervise).
    """
    if spec.mode == "cot":
        raise ValueError("mode cot trains language steps; use supervision: language")
    if thought_loss not in THOUGHT_LOSSES:
        raise ValueError(f"unknown thought_loss {thought_loss!r}; expected one of {THOUGHT_LOSSES}")
    if spec.markers and spec.c_thought != 1:
        raise ValueError(f"supervision optimal trains one thought per node: c_thought must be 1, got {spec.c_thought}")
    tok, d = item.tokens, item.n_steps
    question = list(tok.question)
    answer = list(tok.answer)
    if not spec.markers:
        prefix = question + list(tok.cue)
        return Rendered(tuple(prefix + answer), tuple([IGNORE_INDEX] * len(prefix) + answer), 0)
    s = min(stage, d)
    origin = tok.thought_origin  # the position emitting thought j is origin + j - 1
    if s < d:  # ends with s thoughts
        first = 1 if thought_loss == "all" else s + 1
        units = tuple((origin + j - 1, item.targets[j - 1]) for j in range(first, s + 2))
        ids = question + thought_span(tok, s, spec, special, closed=False)
        return Rendered(tuple(ids), tuple([IGNORE_INDEX] * len(ids)), s, units)
    _, n_latent = spec.layout(stage, d)
    prefix = question + thought_span(tok, n_latent, spec, special) + list(tok.cue)
    units = tuple((origin + j - 1, item.targets[j - 1]) for j in range(1, d + 1)) if thought_loss == "all" else ()
    return Rendered(tuple(prefix + answer), tuple([IGNORE_INDEX] * len(prefix) + answer), n_latent, units)


def render_training(item: TrainingItem, stage: int, spec: StageSpec, special, *, supervision: Supervision = "language",
                    thought_loss: ThoughtLoss = "all") -> Rendered:
    """The training sequence of an item at a stage, under either supervision."""
    if supervision == "language":
        return render_stage(item.tokens, stage, spec, special)
    if supervision == "optimal":
        return render_optimal(item, stage, spec, special, thought_loss=thought_loss)
    raise ValueError(f"unknown supervision {supervision!r}; expected one of {SUPERVISIONS}")
