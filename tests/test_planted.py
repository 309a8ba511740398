"""Known answers: the toolkit's instruments run on the planted Coconut (probe.model.planted), whose weights are set by
hand, so that what each instrument must read is known before it runs.

The construction (planted.py's docstring), in RbS's layout: thought k (the final norm's output at the root's position
+ k - 1, fed back at latent k) is exactly NODE_LEVEL (2) at the node coordinates OWN[v] of every v in reachable(<= k)
and 0 everywhere else; the tied unembedding reads logit(v) = 4 OWN[v], so thought k's logits are 8 on reachable(<= k)
and 0 on every other token. Layer 2 head 0 (the search) attends from the position emitting thought k to the edges
whose source lies in reachable(<= k - 1) (and otherwise rests on the "<eos>" sink). At "[A]" the model answers the
option that lies in the last thought, and no option (a token that is neither) when neither does.

Each instrument test runs the library function the CLI runs, on a few items, and asserts the construction's answer
with measured numbers; each was checked by hand to fail when its instrument is broken.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.analyses.analyze import analyze
from probe.capture.trace import capture
from probe.data.counterfactual import counterfactual_pairs
from probe.data.graph import ProsQAGraph
from probe.data.rbs import RBS_NODES
from probe.model.evaluate import evaluate
from probe.analyses.frontier import FRONTIER, OPTIMAL, REACHABLE, UNREACHABLE, edge_groups
from probe.analyses.interventions import ablation_edit, intervene, patch_edit, site
from probe.readouts.lens import read_lens
from probe.model.hook_names import RESID, act_name
from probe.model.planted import FREQUENCIES, N_POSITIONS, NODE_LEVEL, TOK_LEVEL, L, planted_model
from probe.readouts.probes import fit_probes, probe_targets
from probe.analyses.rbs_notebook import walk_sets
from probe.readouts.sae import SparseAutoencoder, auroc_table, thought_rows
from probe.readouts.values import values_by_k

K = 4  # thoughts 1..K are read: reachable(<= 4) holds the target of 257 of the 300 validation items


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def items(official_items):
    return official_items[:20]


@pytest.fixture(scope="module")
def graphs(items):
    return [ProsQAGraph.from_item(it) for it in items]


@pytest.fixture(scope="module")
def analysis(planted, items):
    """`probe analyze` on 20 items, thoughts 1..K (one capture, the continuations after 0..K thoughts)."""
    model, tok = planted
    return analyze(model, tok, items, k_max=K, progress=False)


def own(thoughts: torch.Tensor) -> torch.Tensor:
    """[..., RBS_NODES] the node coordinates OWN[v] (their +x halves) of residual-space vectors [..., d_model]."""
    return thoughts[..., 2 * L.own : 2 * (L.own + RBS_NODES) : 2].float()


def answered(prediction: str, item) -> int | None:
    """The option an answer names (a node index), or None for an answer that names neither option."""
    options = {str(item.target): item.target, str(item.neg_target): item.neg_target}
    return options.get(prediction.strip())


# ---------------------------------------------------------------------------- the model itself


def test_the_position_kernel_peaks_by_at_least_9_within_the_position_limit():
    """The lag heads find "one (two) positions back" by the kernel sum_f cos(omega_f * offset), which is 16 at offset 0;
    the construction needs every other offset a query can meet (-2..N_POSITIONS) to score at least 9 less."""
    w = np.asarray(FREQUENCIES, dtype=np.float64)
    offsets = np.array([o for o in range(-2, N_POSITIONS + 1) if o != 0])
    kernel = np.cos(np.outer(offsets, w)).sum(1)
    worst = int(np.argmax(kernel))
    assert len(w) - kernel[worst] >= 9, (f"the kernel reaches {kernel[worst]:.3f} at offset {offsets[worst]}: "
                                         f"a gap of {len(w) - kernel[worst]:.3f}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_official_item_is_answered_at_gold_and_at_6_thoughts(official_items, dtype):
    """The target is the one option in reachable(<= k) for k >= its depth: all 300 validation items are right after
    their gold number of thoughts and after 6 (the deepest target), batched (64) and one at a time (30 items)."""
    model, tok = planted_model()
    model.to(dtype=dtype)
    for k in ("gold", 6):
        for some, batch in ((official_items, 64), (official_items[:30], 1)):
            res = evaluate(model, tok, some, k=k, batch_size=batch, progress=False)
            wrong = [(r.index, r.prediction) for r in res.items if not r.correct]
            assert not wrong, f"{dtype}, k={k}, batch {batch}: {len(wrong)} wrong, e.g. {wrong[:5]}"


# ---------------------------------------------------------------------------- what a thought holds


def test_node_values_and_the_logit_lens_spread_thought_k_evenly_over_reachable_k(planted, items, graphs):
    """Thought k's logits are 8 on reachable(<= k) and 0 elsewhere: the emitted readout (values_by_k) and the logit
    lens at the last layer (read_lens) put all but e^-8 of an item's node mass on reachable(<= k), each node 1/|set|.
    Both definitions of the set are checked: ours (ProsQAGraph.reachable) and the RbS notebook's walks (walk_sets)."""
    model, tok = planted
    values = values_by_k(model, tok, items, K, progress=False)  # [n, K, max_nodes]
    trace = capture(model, tok, items, k=K, names=[act_name(RESID, layer) for layer in range(2)], progress=False)
    readout = read_lens(trace, model, tok, items)
    assert readout.layers == [0, 1]
    lens = readout.node_prob[:, :K, -1].numpy()  # the last layer, at the positions emitting thoughts 1..K
    for name, read in (("values_by_k", values), ("logit lens", lens)):
        for b, g in enumerate(graphs):
            for k in range(1, K + 1):
                p = read[b, k - 1, : g.n_nodes]
                share = p / p.sum()
                ours, walks = g.reachable(k), sorted(walk_sets(g, k).reachable)
                for reach in (ours, walks):
                    assert share[reach].sum() >= 0.95, (name, b, k, share[reach].sum())
                    assert np.abs(share[reach] - 1 / len(reach)).max() <= 0.05, (name, b, k, share[reach])


def test_the_superposition_decomposition_is_the_reachable_indicator(analysis, graphs):
    """NNLS of thought k over the item's node rows of the (tied) unembedding: a row u_v is NODE_LEVEL at OWN[v] and
    TOK_LEVEL at TOK[v], a thought NODE_LEVEL at OWN[v] for v in reachable(<= k) and nothing at TOK, and the rows are
    orthogonal, so the fit is c_v = <a e, a e + b t> / |a e + b t|^2 = a^2 / (a^2 + b^2) (a = NODE_LEVEL, b =
    TOK_LEVEL: 0.9975) on the reachable nodes and 0 on the rest, and the TOK part it cannot cancel leaves R^2 = a^2 /
    (a^2 + b^2) too (>= 0.99). The frontier share is |frontier_k| / |reachable(<= k)|, none of it on unreachable
    nodes."""
    d = analysis.decomposition
    fit = NODE_LEVEL**2 / (NODE_LEVEL**2 + TOK_LEVEL**2)
    for b, g in enumerate(graphs):
        for k in range(1, K + 1):
            coef = d.coef[b, k - 1, : g.n_nodes]
            reach = np.zeros(g.n_nodes, dtype=bool)
            reach[g.reachable(k)] = True
            common = float(np.median(coef[reach]))
            assert common == pytest.approx(fit, abs=0.01), (b, k, coef[reach])
            assert np.abs(coef[reach] - common).max() <= 0.05, (b, k, coef[reach])
            assert coef[~reach].max(initial=0.0) < 0.05, (b, k, coef[~reach])
            assert d.r2[b, k - 1] == pytest.approx(fit, abs=0.01) and d.r2[b, k - 1] >= 0.99, (b, k, d.r2[b, k - 1])
            assert d.frontier_share[b, k - 1] == pytest.approx(len(g.frontier(k)) / reach.sum(), abs=1e-3), (b, k)
            assert d.share[b, k - 1, UNREACHABLE] == pytest.approx(0.0, abs=1e-3), (b, k)


def test_the_search_head_attends_to_the_edges_leaving_reachable_k_minus_1(planted, items, analysis, graphs):
    """Layer 2 head 0 scores an edge 40 when its source is in the set its query holds (reachable(<= k - 1) at the
    position emitting thought k), "<eos>" 30 + ln 1024 and every other key at most 20. Measured with the toolkit's
    attention by edge group (`frontier.attention_by_group`, as `probe analyze` computes it: per edge, summed over its
    fact tokens, averaged within each group of edges grouped by their source at step k - 1), per head: a group's
    total is its per-edge mean times its number of edges, and the groups optimal, frontier and reachable are exactly
    the edges whose source is in reachable(<= k - 1). Of head 0's attention on edge tokens, >= 0.95 is on those.
    Every other head of layer 2 rests on "<eos>" there (captured `blocks.1.attn.hook_pattern`): heads 1 and 2 act
    from "[A]" only, 3..5 are idle."""
    per_head = analysis.attention.per_head  # [n, K, layers, heads, 4]
    for b, g in enumerate(graphs):
        for k in range(1, K + 1):
            groups = edge_groups(g, k)
            count = np.bincount(groups, minlength=4)
            total = np.nan_to_num(per_head[b, k - 1, 1, 0]) * count
            assert total.sum() > 0, (b, k)
            leaving = total[[OPTIMAL, FRONTIER, REACHABLE]].sum()  # every group but UNREACHABLE
            assert leaving / total.sum() >= 0.95, (b, k, total)
    model, tok = planted
    name = act_name("attn.hook_pattern", 1)
    trace = capture(model, tok, items, k=K, names=[name], progress=False)
    sink = trace[name][:, :K, 1:, 0]  # [n, K, heads 1..5] attention on "<eos>" from the positions emitting thoughts
    low = torch.nonzero(sink < 0.99).tolist()
    assert not low, [(b, k + 1, h + 1, round(float(sink[b, k, h]), 3), int(trace.positions[b, k])) for b, k, h in low]


def test_the_answer_after_k_thoughts_is_right_exactly_when_the_target_is_k_edges_away(analysis, graphs):
    """At "[A]" the model answers the option in the last thought: right after k thoughts iff depth(target) <= k (at
    k = 0 the root alone, which holds no option)."""
    for b, g in enumerate(graphs):
        for k in range(K + 1):
            assert analysis.verbalised[b][k].correct == (g.target_depth <= k), (b, k, analysis.verbalised[b][k].text)
    for k in range(K + 1):
        assert analysis.accuracy_by_k[k] == pytest.approx(np.mean([g.target_depth <= k for g in graphs]))


# ---------------------------------------------------------------------------- probes and SAEs


def test_a_reachable_probe_reads_the_node_coordinates_and_its_control_does_not(planted, official_items):
    """Whether v is in reachable(<= k) is one coordinate of the last layer's residual at the position emitting
    thought k (OWN[v], 1 or 0 before the final norm), so the cross-validated linear probe (fit_probes, target
    "reachable", 100 items, 5 folds) separates it; the control task (each name's labels reassigned among the items
    that have it) keeps only the names' base rates. Thought 1 (the root, 0 or 1, and its children) gives each name
    few positives and very different base rates (nodes 0..3 are in most thoughts 1, the rest in few), hence the
    looser bounds there (measured: control 0.67..0.72 at k = 1, <= 0.60 at k >= 2)."""
    model, tok = planted
    rep = fit_probes(model, tok, official_items[:100], "reachable", k_max=K, progress=False)
    for k in range(1, K + 1):
        s = rep.scores[k]
        assert s.score >= (0.98 if k == 1 else 0.99), (k, s.as_dict())
        assert s.control <= (0.8 if k == 1 else 0.65), (k, s.as_dict())


def test_an_sae_on_the_thoughts_finds_one_feature_per_node(planted, official_items):
    """Thought k is a sum of one fixed direction per node of reachable(<= k): a sparse dictionary of one feature per
    node explains it with L0 = |reachable(<= k)|. A ReLU SAE (L1) on the thoughts of 100 items (thought_rows, k =
    1..K) finds mostly such features: for most live features, the best AUROC of its activation for one node's
    membership in the thought (reachable(<= k), through the toolkit's auroc_table) is >= 0.95, they name many
    distinct nodes, and L0 is about the mean set size."""
    model, tok = planted
    some = official_items[:100]
    rows = thought_rows(model, tok, some, k_max=K, progress=False)
    member = np.stack([probe_targets(some, k, "reachable", names=rows.names, fmt="rbs")[0] for k in range(1, K + 1)],
                      axis=1).reshape(len(some) * K, -1)  # row b * K + k - 1, as thought_rows orders them
    sae = SparseAutoencoder(d_sae=32, activation="relu", l1_coeff=1e-3, lr=1e-2, epochs=500, batch_size=64, seed=0,
                            progress=False).fit(rows.X)
    acts = sae.encode(rows.X).numpy()
    live = (acts > 0).any(0)
    table = auroc_table(acts[:, live], member, rows.present)  # [live features, names]
    table = np.where(np.isfinite(table), table, -np.inf)
    best, node = table.max(1), table.argmax(1)
    single = best >= 0.95
    assert single.sum() > live.sum() / 2, (single.sum(), live.sum(), np.sort(best))
    assert len(set(node[single].tolist())) >= 18, sorted(set(node[single].tolist()))
    set_size = member[rows.present.any(1)].sum(1).mean()
    assert 0.9 * set_size <= sae.metrics(rows.X).l0 <= 1.3 * set_size, (sae.metrics(rows.X), set_size)


# ---------------------------------------------------------------------------- interventions


def test_ablating_thought_1_brings_the_answer_to_the_no_thought_level(planted, official_items):
    """The search's query is the set the thought holds, and the MLP re-binarises each node at 1.5 (of 2): a zero
    thought 1, or the mean thought 1 of items none of whose nodes is in more than 60% of their thoughts 1 (every
    coordinate <= 1.2), holds no node, so every later thought is empty and "[A]" names no option, as after 0
    thoughts. (It relies on layer 2's head 2 acting from "[A]" only: were it to add half of the root token's OWN at
    latent 1, a root held at >= 0.5 by the mean thought would pass the step.) Measured with the interventions' own
    edit (ablation_edit on the site's thoughts, intervene), k = 6."""
    model, tok = planted
    some = official_items[20:40]
    first = np.array([[v in ProsQAGraph.from_item(it).reachable(1) for v in range(RBS_NODES)] for it in some])
    assert first.mean(0).max() <= 0.6  # the premise of the mean ablation
    k = 6
    s = site(model, tok, some, k=k)
    base = evaluate(model, tok, some, k=k, progress=False)
    none = evaluate(model, tok, some, k=0, progress=False)
    assert base.accuracy == 1.0 and none.accuracy == 0.0
    for kind in ("zero", "mean"):
        edit = ablation_edit(s.source, kind, [1])
        res = intervene(model, tok, some, edit, k=k, name=f"{kind} 1", baseline=base)
        assert res.accuracy == none.accuracy, (kind, res.predictions)
        run = evaluate(model, tok, some, k=k, edit=edit, progress=False)
        assert [answered(r.prediction, it) for r, it in zip(run.items, some)] == [None] * len(some), kind
        thoughts = torch.stack([r.thoughts for r in run.items])  # [n, k, d] as fed back
        expected = torch.zeros(s.source.shape[-1]) if kind == "zero" else s.source[:, 0].mean(0)
        assert (thoughts[:, 0] - expected).abs().max() <= 1e-5, (kind, float((thoughts[:, 0] - expected).abs().max()))
        assert own(thoughts[:, 1:]).abs().max() <= 0.25 * NODE_LEVEL, (kind, own(thoughts[:, 1:]).abs().max())


def test_a_mean_thought_1_keeps_a_node_most_items_have(planted, official_items):
    """The other side of the re-binarisation: in the first 20 items node 2 is in 18 thoughts 1, so the mean thought 1
    holds it at 2 * 0.9 = 1.8 > 1.5 and thought 2 holds it at full level (mean ablation is not "no thought" there),
    while a zero thought 1 leaves thought 2 empty."""
    model, tok = planted
    some = official_items[:20]
    share = np.mean([2 in ProsQAGraph.from_item(it).reachable(1) for it in some])
    assert share == 0.9
    s = site(model, tok, some, k=2)
    for kind, level in (("mean", NODE_LEVEL), ("zero", 0.0)):
        run = evaluate(model, tok, some, k=2, edit=ablation_edit(s.source, kind, [1]), progress=False)
        second = own(torch.stack([r.thoughts[1] for r in run.items]))  # [n, RBS_NODES]
        # (1.8 passes the MLP's soft step a little above 1: 2.11..2.13 measured)
        assert second[:, 2].numpy() == pytest.approx(np.full(len(some), level), abs=0.2), kind


def test_patching_the_other_persons_thoughts_flips_exactly_the_answers_the_graphs_say(planted, official_items):
    """Counterfactual pairs (probe.data.counterfactual): B is A's graph asked about another person, who reaches A's
    wrong option. Thought j + 1 depends only on thought j (and the shared graph), so A's thoughts patched into B (all
    of them, or thought 1 alone) make B's last thought A's reachable(<= k): B answers A's target iff A's target is
    within k edges, and no option otherwise; unpatched, B answers its own target iff it is within k edges. The answer
    flips exactly where those two differ. Run with the interventions' own edit (site, patch_edit, as patch_runs
    does), at k = 2 and 3."""
    model, tok = planted
    index, b_items = counterfactual_pairs(official_items[:40])
    a_items = [official_items[i] for i in index]
    depth_a = [ProsQAGraph.from_item(a).target_depth for a in a_items]
    depth_b = [ProsQAGraph.from_item(b).target_depth for b in b_items]
    for k in (2, 3):
        sa, sb = site(model, tok, a_items, k=k), site(model, tok, b_items, k=k)
        base = [answered(r.prediction, b) for r, b in
                zip(evaluate(model, tok, b_items, k=k, progress=False).items, b_items)]
        assert base == [b.target if d <= k else None for b, d in zip(b_items, depth_b)], k
        must = [a.target if d <= k else None for a, d in zip(a_items, depth_a)]
        must_flip = {i for i in range(len(b_items)) if must[i] != base[i]}
        assert 0 < len(must_flip) < len(b_items), (k, len(must_flip))  # some answers must flip, some must stay
        for steps in (None, [1]):
            edit = patch_edit(sa.source, steps, valid=sa.valid & sb.valid)
            res = evaluate(model, tok, b_items, k=k, edit=edit, progress=False)
            patched = [answered(r.prediction, b) for r, b in zip(res.items, b_items)]
            assert patched == must, (k, steps)
            assert {i for i in range(len(b_items)) if patched[i] != base[i]} == must_flip, (k, steps)
