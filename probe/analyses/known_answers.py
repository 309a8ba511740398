"""What each instrument reads on a model whose answer is known: the planted Coconut (probe.model.planted), whose thought
k is by construction the indicator of reachable(<= k), and its graded (noisy) versions.

`instrument_readings` runs the toolkit's own instruments on a data set and condenses each to the one number the
construction predicts (in brackets, at noise 0):

- accuracy at the gold depth and at k = 6 [1.0, 1.0], and at k = 0 (the no-thought level: all logits tie);
- node values (the emitted readout, `values.values_by_k`): the share of thought k's node mass on reachable(<= k)
  [1.0] and the largest deviation of a reachable node's share from 1 / |reachable(<= k)| [0.0];
- the superposition decomposition (`superposition.superposition`, NNLS over the item's node rows): mean R^2 [1.0];
- edge attention by the RbS notebook's groups (`rbs_notebook.notebook_measures`): the share of the last layer's
  edge attention, from the position emitting thought n + 1, on edges whose source is reachable in n steps [1.0];
- a linear probe for "reachable by thought k" (`probes.fit_probes`): cross-validated AUROC [1.0] and its control
  task's [~0.5];
- ablation (`probe intervene`'s zero ablation): the accuracy with thought 1 zeroed [the k = 0 level];
- counterfactual patching (`probe intervene`'s patch, every thought): the share of answers that follow the source
  item's, the same graph asked from the other person [1.0].

Each number is a mean over items and thoughts 1..k_max (k_max = 4: every validation item has at least 3 hops).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from probe.data.graph import ProsQAGraph
from probe.data.layout import name_tokens
from probe.data.prosqa import ProsQAItem
from probe.model.coconut import CoconutModel

K_MAX = 4


@dataclass(frozen=True)
class InstrumentReadings:
    """One model's readings (module docstring); a plain record for the card's table."""

    accuracy_gold: float
    accuracy_k6: float
    accuracy_k0: float
    value_mass_reachable: float
    value_share_error: float
    decomposition_r2: float
    attention_on_reachable_edges: float
    probe_auroc: float
    probe_control_auroc: float
    ablated_thought1_accuracy: float
    patch_follows_source: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# (field, column title, what the construction gives at noise 0)
COLUMNS = (
    ("accuracy_gold", "accuracy, gold k", "1"),
    ("accuracy_k6", "accuracy, k = 6", "1"),
    ("accuracy_k0", "accuracy, k = 0", "no-thought level"),
    ("value_mass_reachable", "value mass on reachable(<= k)", "1"),
    ("value_share_error", "largest share error", "0"),
    ("decomposition_r2", "NNLS R^2", "1"),
    ("attention_on_reachable_edges", "edge attention on reachable sources", "1"),
    ("probe_auroc", "probe AUROC (reachable)", "1"),
    ("probe_control_auroc", "control AUROC", "~0.5"),
    ("ablated_thought1_accuracy", "accuracy, thought 1 zeroed", "= k = 0"),
    ("patch_follows_source", "patched answers following the source", "1"),
)


def _value_readings(values: np.ndarray, graphs: Sequence[ProsQAGraph]) -> tuple[float, float]:
    """(mean share of node mass on reachable(<= k), largest |share - 1 / |reachable||) from values [n, k, nodes]."""
    shares, errors = [], []
    for b, g in enumerate(graphs):
        for j in range(values.shape[1]):
            row = values[b, j, : g.n_nodes]
            reach = sorted(g.reachable(j + 1))
            total = row.sum()
            shares.append(row[reach].sum() / total if total > 0 else 0.0)
            if total > 0:
                errors.append(np.abs(row[reach] / total - 1 / len(reach)).max())
    return float(np.mean(shares)), float(np.max(errors)) if errors else float("nan")


def instrument_readings(model: CoconutModel, tokenizer, items: Sequence[ProsQAItem], *, batch_size: int = 64,
                        progress: bool = False) -> InstrumentReadings:
    """Every instrument's reading of a model on items (module docstring). items: at least 10 (the probe's folds),
    each with at least K_MAX hops. Raises ValueError otherwise."""
    from probe.capture.trace import capture
    from probe.model.evaluate import evaluate
    from probe.readouts.probes import fit_probes
    from probe.analyses.rbs_notebook import notebook_measures
    from probe.analyses.superposition import superposition
    from probe.readouts.values import values_by_k

    items = list(items)
    graphs = [ProsQAGraph.from_item(it) for it in items]
    if len(items) < 10 or min(g.target_depth for g in graphs) < K_MAX - 1:
        raise ValueError(f"instrument_readings needs >= 10 items of >= {K_MAX - 1} hops")
    fmt = model.config.data_format
    acc = {k: evaluate(model, tokenizer, items, k=k, batch_size=batch_size, progress=progress).accuracy
           for k in ("gold", 6, 0)}
    values = values_by_k(model, tokenizer, items, K_MAX, batch_size=batch_size, progress=progress)
    mass, share_error = _value_readings(np.asarray(values), graphs)
    trace = capture(model, tokenizer, items, k=K_MAX, names=[], batch_size=batch_size, progress=progress)
    sup = superposition(trace.thoughts[:, :K_MAX], model.base.get_output_embeddings().weight,
                        [name_tokens(it, tokenizer, fmt) for it in items], graphs)
    nb = notebook_measures(model, tokenizer, items, k=K_MAX, batch_size=batch_size, progress=progress)
    att = nb.attention
    on = sum(att.values[n]["reachable"].sum() for n in range(len(att.values)))
    off = sum(att.values[n]["not_reachable"].sum() for n in range(len(att.values)))
    probes = fit_probes(model, tokenizer, items, "reachable", layer=-1, k_max=K_MAX, folds=5, batch_size=batch_size,
                        progress=progress)
    zeroed, follows = _causal_readings(model, tokenizer, items, k=6, batch_size=batch_size)
    return InstrumentReadings(
        accuracy_gold=acc["gold"], accuracy_k6=acc[6], accuracy_k0=acc[0],
        value_mass_reachable=mass, value_share_error=share_error,
        decomposition_r2=float(np.nanmean(sup.r2)),
        attention_on_reachable_edges=float(on / (on + off)) if on + off > 0 else float("nan"),
        probe_auroc=float(np.mean([s.score for s in probes.scores.values()])),
        probe_control_auroc=float(np.mean([s.control for s in probes.scores.values()])),
        ablated_thought1_accuracy=zeroed, patch_follows_source=follows,
    )


def _causal_readings(model: CoconutModel, tokenizer, items: list[ProsQAItem], *, k: int,
                     batch_size: int) -> tuple[float, float]:
    """(accuracy with thought 1 zeroed, share of counterfactual items whose answer follows the source's when all
    the source's thoughts are patched in), each at k thoughts: `probe intervene`'s own runs, those two alone."""
    from probe.data.counterfactual import counterfactual_pairs
    from probe.analyses.interventions import ablation_runs, patch_runs, site

    s = site(model, tokenizer, items, k=k, batch_size=batch_size)
    zeroed = ablation_runs(model, tokenizer, items, k=k, s=s, kinds=("zero",), values=False, batch_size=batch_size,
                           progress=False, which=[1])[0].accuracy
    if not counterfactual_pairs(items)[0]:  # no item has another person who reaches the other option
        return zeroed, float("nan")
    patched = patch_runs(model, tokenizer, items, k=k, batch_size=batch_size, progress=False, which=[None])[0]
    return zeroed, patched.follows_a


def readings_table(rows: dict[float, InstrumentReadings]) -> str:
    """A markdown table: one row per noise level S, one column per reading, the construction's value first."""
    head = "| noise S | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    want = "| construction | " + " | ".join(w for _, _, w in COLUMNS) + " |"
    body = ["| " + f"{s:g}" + " | " + " | ".join(f"{getattr(r, f):.3f}" for f, _, _ in COLUMNS) + " |"
            for s, r in rows.items()]
    return "\n".join([head, rule, want, *body])
