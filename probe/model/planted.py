"""A planted Coconut: "Reasoning by Superposition"'s construction compiled into the weights of a GPT-2, nothing trained.

The model reads RbS's layout ("<eos> s t | ... | s t [Q] a b [R] root", thoughts, "[A]"; probe.data.render, data
format "rbs") with RbS's 40-token vocabulary, and its thought k is, by construction, proportional to the indicator
of reachable(<= k): the nodes within k edges of the root (thought 1, read at the root, holds the root and its
children). At "[A]" the option that lies in the last thought fed in wins. It is the known answer against which every
instrument is checked (as tracr and InterpBench do for circuits); it is never evidence about trained models.

The construction, subspace by subspace. Every feature f of the residual has two coordinates, +x and -x ("mirrored"),
so that the residual always has mean zero and each LayerNorm only rescales (and every reader reads (+x - (-x)) / 2, so
that a mean that noise leaves is cancelled); a large position part of constant norm
(R_POS per coordinate) makes that scale the same at every position to within 0.1%. Every gain of every LayerNorm is
the nominal scale (`_Layout.sigma`), so that a norm's output reads as its input in the units below.

- OWN (31 features): the node content the model reasons over. A node token v writes 2 at OWN[v]; a thought holds 2
  at each node of its set. The tied unembedding reads OWN: logit(v) = 4 * OWN[v] at the final norm's output.
- TOK (31): a node token v also writes TOK_LEVEL = 0.1 at TOK[v] (small: a node's embedding row is then its OWN
  part to within 0.25% of its square norm, so that a thought decomposes over the rows with R^2 > 0.99). Thoughts never do (the final norm keeps OWN only), so that the
  copies below hold tokens, never thoughts.
- P1, P2 (31 each) and the flags Q1, Q2: what layer 1 copies from one and two positions back (TOK / TOK_LEVEL, and
  the "[Q]"
  flag). On an edge's "|", P2 holds its source and P1 its target (on "[Q]" for the last edge, which RbS's layout
  writes without "|"); on an option, Q1 or Q2 says that "[Q]" precedes it.
- Flags EOS, BAR, Q, A (1 each): written by "<eos>", "|", "[Q]" and "[A]".
- BIAS (1): R_POS at every position (a constant the queries use).
- POS (2 F): cos and sin of omega_f * p for F = 16 frequencies, times R_POS. A query rotated by omega_f * l and a key
  at p' score sum_f cos(omega_f (p - l - p')), which is F = 16 at p' = p - l and at most 16 - 9 anywhere else within
  the position limit (`FREQUENCIES`, chosen by a seeded search for the widest gap).

Layer 1 (attention only; its MLP is zero): head 0 attends one position back, head 1 two positions back (by the
rotated positions), each copying TOK and the Q flag into P1 and Q1, or P2 and Q2. Idle heads (layer 1: 2..5,
layer 2: 3..5) rest on "<eos>".

Layer 2:
- head 0, the search: its query is the node set in OWN, its keys the sources in P2, plus a bonus on "|" and "[Q]"
  keys and a
  sink on "<eos>". An edge whose source is in the set scores 40, "<eos>" 30, every other key at most 20, so that the
  head spreads over the edges leaving the set (or rests on the sink, value 0, when none does) and adds their
  targets (P1 on "|") to OWN, with a gain large enough (`SEARCH_GAIN`) that a target of one of m edges gets at
  least 2.
- head 1, the options: from "[A]" only (every other query rests on the sink), it attends to the two options (keys
  with Q1 or Q2) and adds 1 at each one's OWN.
- head 2, the last thought: from "[A]" only, it attends one position back (the last thought, or the root at k = 0)
  and adds half its OWN: 1 at each node of the set.
- the MLP re-binarises each OWN[v]: a step from 0 to 1 at 1.5 (GELU(K(x - 1.5)) - GELU(K(x - 1.5) - 1)) minus x
  itself (GELU(x) - GELU(-x) = x, exactly, for gelu_new too), so that OWN[v] becomes 1 where it was >= 2 (a node of
  the set, or one the search just added) and 0 where it was 0. At "[A]" the target holds 1 (option) + 1 (in the
  last thought) = 2 and passes; the other option (1) and the other reached nodes (1) do not.

The final norm's gain is 2 * sigma on OWN and 0 elsewhere: a thought is 2 at each node of reachable(<= k) and 0
elsewhere, exactly the input scale of a node token, and at "[A]" only the target has a positive logit (4 * 2 = 8;
every other token 0).

Departures from the paper's construction (Zhu, Hao et al. 2025, section 4): our thoughts hold an unnormalised
indicator (2 per node), not a normalised superposition; the binarising MLP replaces the paper's filter that
equalises the weights; positions are read by rotations, not by the paper's attention chooser over fixed lags; the
answer is read by a head from "[A]" to the options rather than by comparing the last thought with the option
tokens in the residual.

`planted_model(noise, seed)` builds it; noise S > 0 adds, to every weight matrix and bias, Gaussian noise of S times
that tensor's root mean square (the InterpBench-style graded versions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from probe.data.rbs import RBS_ANSWER, RBS_EDGE, RBS_EOS, RBS_NODES, RBS_QUESTION
from probe.model.coconut import CoconutConfig, CoconutModel
from probe.model.tokenizer import RBS_VOCABULARY, build_rbs_tokenizer, special_tokens

# Rotation frequencies (radians per position) of the position code: a seeded search (numpy default_rng(0), 4000
# draws of 16 uniform in [0.05, pi]) for the widest gap between the kernel's peak (16) and its largest value at any
# other offset in -2..N_POSITIONS; the gap is 9.87 (tests/test_planted.py checks >= 9 over the position limit).
FREQUENCIES = (0.126, 0.1337, 0.5633, 0.5983, 0.7048, 0.708, 0.7684, 0.9825, 1.1173, 1.1918, 1.911, 1.9821, 2.637,
               2.6457, 2.9516, 2.9889)
R_POS = 1000.0  # each position coordinate's scale (and BIAS): the norm's scale hardly moves with the content
D_MODEL, N_HEAD, N_POSITIONS = 384, 6, 512
NODE_LEVEL = 2.0  # OWN at a node token and at each node of a thought
TOK_LEVEL = 0.1  # TOK at a node token: small, so that a node's embedding row is nearly its OWN part alone
POS_SCORE = 3.0  # logits per unit of the position kernel: the peak beats any other offset by 3 * 9 = 27
SEARCH_MATCH, SEARCH_BAR = 20.0, 20.0
SINK_WEIGHT = 1024  # the search's sink outweighs the edges by this: each of m edges gets 1 / (m + 1024) or so
SEARCH_SINK = SEARCH_MATCH + SEARCH_BAR + math.log(SINK_WEIGHT)
SEARCH_GAIN = NODE_LEVEL * (SINK_WEIGHT + 64)  # a target of one of m <= 64 edges leaving the set gets >= 2
# the sink key ("<eos>" at position 0) carries the position code too: a lag head's score there is the gate plus up to
# POS_SCORE * 16 = 48, so the gate must beat 48 + 48 to hold at every position
OPTION_SCORE, GATE_SINK = 30.0, 100.0
STEP_AT, STEP_SHARPNESS = 1.5, 8.0


@dataclass(frozen=True)
class _Layout:
    """Where each feature lives: feature i is +x at coordinate 2i and -x at 2i + 1."""

    own: int = 0
    tok: int = 31
    p1: int = 62
    p2: int = 93
    eos: int = 124
    bar: int = 125
    q: int = 126
    a: int = 127
    q1: int = 128
    q2: int = 129
    bias: int = 130
    pos: int = 131  # 2 F features: cos then sin of each frequency

    @property
    def n_features(self) -> int:
        return self.pos + 2 * len(FREQUENCIES)

    @property
    def sigma(self) -> float:
        """The nominal scale of a residual (its root mean square with no content): each norm divides by about this."""
        return math.sqrt(2 * (len(FREQUENCIES) + 1) * R_POS**2 / D_MODEL)


L = _Layout()


def _put(vec: torch.Tensor, feature: int, value: float) -> None:
    """Write a feature's value into a residual-space vector (mirrored)."""
    vec[..., 2 * feature] += value
    vec[..., 2 * feature + 1] -= value


def _read(mat: torch.Tensor, feature: int, column: int, weight: float) -> None:
    """Make `column` of a [d_model, n] reading matrix read a feature as (+x - (-x)) / 2: a shift common to every
    coordinate (a residual whose mean is not quite zero, under noise) cancels."""
    mat[2 * feature, column] += weight / 2
    mat[2 * feature + 1, column] -= weight / 2


def _write(mat: torch.Tensor, row: int, feature: int, weight: float) -> None:
    """Make `row` of an [n, d_model] writing matrix write a feature (mirrored)."""
    mat[row, 2 * feature] += weight
    mat[row, 2 * feature + 1] -= weight


def planted_config() -> GPT2Config:
    """The GPT-2 the construction fills: 2 layers, d_model 384, 6 heads of 64, MLP 1536, gelu_new, RbS's 40 tokens,
    no dropout, tied embedding."""
    return GPT2Config(vocab_size=len(RBS_VOCABULARY), n_positions=N_POSITIONS, n_embd=D_MODEL, n_layer=2,
                      n_head=N_HEAD, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)


def _position_code(p: torch.Tensor) -> torch.Tensor:
    """[n, 2 F] cos and sin of omega_f * p."""
    w = torch.tensor(FREQUENCIES, dtype=torch.float64)
    angle = p.double()[:, None] * w[None]
    return torch.cat([angle.cos(), angle.sin()], dim=1)


def _lag_query_key(q: torch.Tensor, k: torch.Tensor, col: int, lag: int, score: float) -> None:
    """Columns col..col + 2F of a head's query and key read the position code so that the score peaks (at `score`
    per unit of the kernel) one `lag` back: the query is rotated by -omega_f * lag."""
    f_n = len(FREQUENCIES)
    scale = score * math.sqrt(D_MODEL // N_HEAD)  # GPT-2 divides scores by sqrt(head_dim)
    for i, w in enumerate(FREQUENCIES):
        c, s = math.cos(w * lag), math.sin(w * lag)
        cos_f, sin_f = L.pos + i, L.pos + f_n + i
        # rotate (cos wp, sin wp) by -w*lag: (cos w(p-l), sin w(p-l)) = (c cos + s sin, c sin - s cos)
        _read(q, cos_f, col + 2 * i, scale * c / R_POS)
        _read(q, sin_f, col + 2 * i, scale * s / R_POS)
        _read(q, sin_f, col + 2 * i + 1, scale * c / R_POS)
        _read(q, cos_f, col + 2 * i + 1, -scale * s / R_POS)
        _read(k, cos_f, col + 2 * i, 1.0 / R_POS)
        _read(k, sin_f, col + 2 * i + 1, 1.0 / R_POS)


def _rest_on_sink(q: torch.Tensor, k: torch.Tensor, heads: range) -> None:
    """Idle heads (value 0) attend to "<eos>" alone, as idle heads of trained models do, rather than uniformly
    (which would put attention on every edge in the attention measures)."""
    for head in heads:
        col = head * (D_MODEL // N_HEAD)
        _read(q, L.bias, col, GATE_SINK * math.sqrt(D_MODEL // N_HEAD) / R_POS)
        _read(k, L.eos, col, 1.0)


def _construct() -> GPT2LMHeadModel:
    cfg = planted_config()
    model = GPT2LMHeadModel(cfg)
    d, hd = D_MODEL, D_MODEL // N_HEAD
    sd = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in model.state_dict().items()}
    sigma = L.sigma
    for name in sd:
        if name.endswith(("ln_1.weight", "ln_2.weight")):
            sd[name][:] = sigma
    # final norm: OWN only, at the thoughts' input scale
    for v in range(RBS_NODES):
        sd["transformer.ln_f.weight"][2 * (L.own + v)] = NODE_LEVEL * sigma
        sd["transformer.ln_f.weight"][2 * (L.own + v) + 1] = NODE_LEVEL * sigma
    # embeddings
    wte, wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
    ids = {w: i for i, w in enumerate(RBS_VOCABULARY)}
    for v in range(RBS_NODES):
        _put(wte[v], L.own + v, NODE_LEVEL)
        _put(wte[v], L.tok + v, TOK_LEVEL)
    for word, flag in ((RBS_EOS, L.eos), (RBS_EDGE, L.bar), (RBS_QUESTION, L.q), (RBS_ANSWER, L.a)):
        _put(wte[ids[word]], flag, 1.0)
    code = _position_code(torch.arange(N_POSITIONS))
    for j in range(2 * len(FREQUENCIES)):
        wpe[:, 2 * (L.pos + j)] = R_POS * code[:, j]
        wpe[:, 2 * (L.pos + j) + 1] = -R_POS * code[:, j]
    _put(wpe, L.bias, R_POS)

    # layer 1: heads 0 and 1 copy TOK and the Q flag from one and two positions back
    q, k, v = (torch.zeros(d, d, dtype=torch.float64) for _ in range(3))
    o = torch.zeros(d, d, dtype=torch.float64)
    for head, (lag, dest, qdest) in enumerate(((1, L.p1, L.q1), (2, L.p2, L.q2))):
        col = head * hd
        _lag_query_key(q, k, col, lag, POS_SCORE)
        for n in range(RBS_NODES):
            _read(v, L.tok + n, col + n, 1.0 / TOK_LEVEL)
            _write(o, col + n, dest + n, 1.0)
        _read(v, L.q, col + RBS_NODES, 1.0)
        _write(o, col + RBS_NODES, qdest, 1.0)
    _rest_on_sink(q, k, range(2, N_HEAD))
    sd["transformer.h.0.attn.c_attn.weight"] = torch.cat([q, k, v], dim=1)
    sd["transformer.h.0.attn.c_proj.weight"] = o

    # layer 2
    q, k, v = (torch.zeros(d, d, dtype=torch.float64) for _ in range(3))
    o = torch.zeros(d, d, dtype=torch.float64)
    root_hd = math.sqrt(hd)
    # head 0: the search
    col = 0
    for n in range(RBS_NODES):
        _read(q, L.own + n, col + n, SEARCH_MATCH * root_hd / NODE_LEVEL)
        _read(k, L.p2 + n, col + n, 1.0)
        _read(v, L.p1 + n, col + n, 1.0)
        _write(o, col + n, L.own + n, SEARCH_GAIN)
    _read(q, L.bias, col + RBS_NODES, SEARCH_BAR * root_hd / R_POS)
    _read(k, L.bar, col + RBS_NODES, 1.0)
    _read(k, L.q, col + RBS_NODES, 1.0)  # the last edge has no "|": "[Q]" follows it and holds it instead
    _read(q, L.bias, col + RBS_NODES + 1, SEARCH_SINK * root_hd / R_POS)
    _read(k, L.eos, col + RBS_NODES + 1, 1.0)
    # head 1: the options, from "[A]"
    col = hd
    _read(q, L.a, col, OPTION_SCORE * root_hd)
    _read(k, L.q1, col, 1.0)
    _read(k, L.q2, col, 1.0)
    _read(q, L.bias, col + 1, OPTION_SCORE * root_hd / R_POS)  # every other query rests on the sink
    _read(q, L.a, col + 1, -OPTION_SCORE * root_hd)
    _read(k, L.eos, col + 1, 1.0)
    for n in range(RBS_NODES):
        _read(v, L.tok + n, col + 2 + n, 1.0 / TOK_LEVEL)
        _write(o, col + 2 + n, L.own + n, 2.0)  # two options at weight 1/2 each: 1 at each
    # head 2: the last thought, one position back from "[A]"
    col = 2 * hd
    _lag_query_key(q, k, col, 1, POS_SCORE)
    _read(q, L.bias, col + 2 * len(FREQUENCIES), GATE_SINK * root_hd / R_POS)
    _read(q, L.a, col + 2 * len(FREQUENCIES), -GATE_SINK * root_hd)
    _read(k, L.eos, col + 2 * len(FREQUENCIES), 1.0)
    for n in range(RBS_NODES):
        _read(v, L.own + n, col + 2 * len(FREQUENCIES) + 1 + n, 1.0)
        _write(o, col + 2 * len(FREQUENCIES) + 1 + n, L.own + n, 1.0 / NODE_LEVEL)
    _rest_on_sink(q, k, range(3, N_HEAD))
    sd["transformer.h.1.attn.c_attn.weight"] = torch.cat([q, k, v], dim=1)
    sd["transformer.h.1.attn.c_proj.weight"] = o

    # layer 2's MLP: OWN[v] -> step(OWN[v]) (4 GELU units a node)
    fc, fc_b = sd["transformer.h.1.mlp.c_fc.weight"], sd["transformer.h.1.mlp.c_fc.bias"]
    proj = sd["transformer.h.1.mlp.c_proj.weight"]
    proj_b = sd["transformer.h.1.mlp.c_proj.bias"]
    for n in range(RBS_NODES):
        u = 4 * n
        # 1 - r(x), r(x) = GELU(K(1.5 - x) + 1/2) - GELU(K(1.5 - x) - 1/2): r is 1 below the step and 0 above it,
        # where both terms vanish (no difference of two large numbers, which bfloat16 would lose)
        _read(fc, L.own + n, u, -STEP_SHARPNESS)
        fc_b[u] = STEP_SHARPNESS * STEP_AT + 0.5
        _read(fc, L.own + n, u + 1, -STEP_SHARPNESS)
        fc_b[u + 1] = STEP_SHARPNESS * STEP_AT - 0.5
        _read(fc, L.own + n, u + 2, 1.0)
        _read(fc, L.own + n, u + 3, -1.0)
        _write(proj, u, L.own + n, -1.0)
        _write(proj, u + 1, L.own + n, 1.0)
        _write(proj, u + 2, L.own + n, -1.0)
        _write(proj, u + 3, L.own + n, 1.0)
        _put(proj_b, L.own + n, 1.0)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict({k: t.float() for k, t in sd.items()})
    return model.eval()


def planted_model(noise: float = 0.0, seed: int = 0) -> tuple[CoconutModel, object]:
    """The planted Coconut (module docstring) and RbS's tokenizer: a CoconutModel in data format "rbs", supervision
    "optimal", six thoughts by default. noise S >= 0 multiplies every weight by 1 + S e, e ~ N(0, 1) (seeded; module
    docstring). Raises ValueError for a negative noise."""
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    base = _construct()
    if noise:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in base.parameters():
                p.mul_(1 + noise * torch.randn(p.shape, generator=g))
    tok = build_rbs_tokenizer()
    config = CoconutConfig.from_special(special_tokens(tok), mode="coconut", data_format="rbs", supervision="optimal",
                                        max_latent_stage=6, pad_latent_to_max=True)
    return CoconutModel(base, config), tok
