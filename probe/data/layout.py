"""Where things sit in a prompt: which token positions hold which fact and which node's name.

Built from the tokenizer's character offsets, so that a name split into several sub-tokens
(GPT-2 BPE on the sentence format) marks every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.data.prosqa import ProsQAItem, parse_question
from probe.data.render import DataFormat, node_names, question_text, step_prefix, tokenize_item

NONE = -1


@dataclass(frozen=True)
class PromptLayout:
    """Per question token: the fact (index into item.edges) and the node it names, NONE elsewhere."""

    fact: tuple[int, ...]  # [question_len]
    node: tuple[int, ...]  # [question_len]
    query: tuple[int, ...]  # positions of the query's names (root and the two options, all sub-tokens), in text order

    def fact_positions(self, edge: int) -> list[int]:
        """Token positions of one fact."""
        return [i for i, f in enumerate(self.fact) if f == edge]

    def node_positions(self, node: int) -> list[int]:
        """Token positions naming a node, in facts or the query."""
        return [i for i, n in enumerate(self.node) if n == node]


def _name_spans(text: str, names: list[str], start: int) -> tuple[list[tuple[int, int]], int]:
    """Character spans of names found in order from start (each as a whole word)."""
    spans = []
    for name in names:
        i = start
        while True:
            i = text.index(name, i)
            before = text[i - 1] if i else " "
            after = text[i + len(name)] if i + len(name) < len(text) else " "
            if not before.isalnum() and not after.isalnum():
                break
            i += 1
        spans.append((i, i + len(name)))
        start = i + len(name)
    return spans, start


def _rbs_layout(item: ProsQAItem, tokenizer) -> PromptLayout:
    """RbS's layout, one token per word: <eos>, then per edge its source, its target and the "|" after it (the last
    edge has none), then "[Q]", the two options, "[R]" and the root."""
    n = len(tokenize_item(item, tokenizer, "rbs").question)
    fact, node = [NONE] * n, [NONE] * n
    pos = 1
    for e, (s, t) in enumerate(item.edges):
        width = 3 if e < len(item.edges) - 1 else 2
        fact[pos : pos + width] = [e] * width
        node[pos], node[pos + 1] = s, t
        pos += width
    words = question_text(item, "rbs").split()
    query = (pos + 1, pos + 2, pos + 4)  # "[Q]" a b "[R]" root
    for p in query:
        node[p] = int(words[p])
    return PromptLayout(tuple(fact), tuple(node), query)


def prompt_layout(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences") -> PromptLayout:
    """The layout of an item's question as tokenize_item tokenizes it (question + newline)."""
    if fmt == "rbs":
        return _rbs_layout(item, tokenizer)
    text = question_text(item, fmt) + "\n"
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    facts, (root, a, b) = parse_question(item.question)
    edge_of = {(p, c): e for e, (p, c) in enumerate(item.edges)}
    char_fact = [NONE] * len(text)
    char_node = [NONE] * len(text)
    cursor = 0
    for p, c in facts:
        (ps, pe), (cs, ce) = _name_spans(text, [p, c], cursor)[0]
        # A fact runs from the end of the previous one to its closing '.' or '|' (inclusive).
        first = cursor
        while text[first].isspace():
            first += 1
        last = ce
        while last < len(text) and text[last] == " ":
            last += 1
        last = last + 1 if last < len(text) and text[last] in ".|" else ce
        cursor = last
        e = edge_of[(item.index(p), item.index(c))]
        for i in range(first, last):
            char_fact[i] = e
        for (s, t), name in (((ps, pe), p), ((cs, ce), c)):
            for i in range(s, t):
                char_node[i] = item.index(name)
    names = (a, b, root) if fmt == "graph" else (root, a, b)  # in the order the question writes them
    query_spans, _ = _name_spans(text, list(names), cursor)
    char_query = [False] * len(text)
    for (s, t), name in zip(query_spans, names):
        for i in range(s, t):
            char_node[i], char_query[i] = item.index(name), True
    fact, node, query = [], [], []
    for pos, (s, t) in enumerate(offsets):
        f = {char_fact[i] for i in range(s, t)} - {NONE}
        n = {char_node[i] for i in range(s, t)} - {NONE}
        fact.append(f.pop() if len(f) == 1 else NONE)
        node.append(n.pop() if len(n) == 1 else NONE)
        if any(char_query[i] for i in range(s, t)):
            query.append(pos)
    return PromptLayout(tuple(fact), tuple(node), tuple(query))


def name_pieces(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences") -> list[list[int]]:
    """Per node, the tokens of its name where a reasoning step names it ("Every X" or "X Y")."""
    prefix = step_prefix(fmt)
    lead = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    out = []
    for name in node_names(item, fmt):
        ids = tokenizer.encode(f"{prefix} {name}" if prefix else name, add_special_tokens=False)
        if ids[: len(lead)] != lead or len(ids) == len(lead):
            raise ValueError(f"cannot isolate the tokens of {name!r} after {prefix!r}")
        out.append(ids[len(lead) :])
    return out


def name_tokens(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences") -> list[int]:
    """Per node, the first token of its name as a step writes it (a bare-space piece skipped)."""
    out = []
    for name, pieces in zip(node_names(item, fmt), name_pieces(item, tokenizer, fmt)):
        # Some BPE vocabularies emit a bare space before a rare word.
        rest = [t for t in pieces if tokenizer.decode([t]).strip()]
        if not rest:
            raise ValueError(f"cannot isolate the tokens of {name!r}")
        out.append(rest[0])
    return out


def indistinct_names(item: ProsQAItem, tokenizer, fmt: DataFormat = "sentences", *,
                     first_token: bool = False) -> list[tuple[str, ...]]:
    """Groups of the item's node names written with the same tokens where a step writes them (with a word-level
    tokenizer, every name outside its vocabulary is its unknown token). Lenses and language-readout node values
    read a whole name, the product of its pieces, so only such names get one probability; names that merely
    share a first piece (GPT-2's `rempus` and `rorpus` both start with `Ġr`) are told apart. With first_token,
    names are grouped by their first token (`name_tokens`), as the emitted readout, the superposition
    decomposition and `supervision: optimal` read them."""
    keys = name_tokens(item, tokenizer, fmt) if first_token else map(tuple, name_pieces(item, tokenizer, fmt))
    groups: dict[object, list[str]] = {}
    for name, key in zip(item.idx_to_symbol, keys):
        groups.setdefault(key, []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]
