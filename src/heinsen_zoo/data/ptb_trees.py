"""Stanford Sentiment Treebank in PTB-tree text form: parsing, phrases, detokenisation, SST-2 labels.

One tree per line, every node labelled 0-4 (very negative .. very positive), leaves ``(label token)``::

    (3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film)))) (2 .)))

Train on every subtree (phrase) of the training trees; evaluate on root sentences (SPEC §5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from heinsen_zoo.labels import SST2_LABELS, SST5_LABELS

__all__ = [
    "SST2_LABELS",
    "SST5_LABELS",
    "Tree",
    "dedup_majority",
    "detokenize",
    "parse_tree",
    "parse_trees",
    "read_tree_file",
    "to_sst2",
]


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


@dataclass
class Tree:
    """A labelled constituency tree node: a leaf has ``word``, an inner node ``children``.

    Example:
        >>> tree = parse_tree("(3 (2 It) (4 (2 's) (4 great)))")
        >>> tree.label, tree.leaves(), [t.label for t in tree.subtrees()]
        (3, ['It', "'s", 'great'], [3, 2, 4, 2, 4])
    """

    label: int
    word: str | None = None
    children: list[Tree] = field(default_factory=list)

    def leaves(self) -> list[str]:
        """Tokens under this node, left to right."""
        out: list[str] = []
        stack = [self]
        while stack:
            node = stack.pop()
            if node.word is not None:
                out.append(node.word)
            else:
                stack.extend(reversed(node.children))
        return out

    def subtrees(self) -> Iterator[Tree]:
        """This node and every node below it, pre-order (root first)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def spans(self) -> Iterator[tuple[Tree, int, int]]:
        """``(node, start, stop)`` for every node, pre-order: the node covers ``self.leaves()[start:stop]``.

        Example:
            >>> [(n.label, a, b) for n, a, b in parse_tree("(3 (2 It) (4 works))").spans()]
            [(3, 0, 2), (2, 0, 1), (4, 1, 2)]
        """
        sizes: dict[int, int] = {}
        for node in reversed(list(self.subtrees())):  # children before parents
            sizes[id(node)] = 1 if node.word is not None else sum(sizes[id(c)] for c in node.children)
        stack = [(self, 0)]
        while stack:
            node, start = stack.pop()
            yield node, start, start + sizes[id(node)]
            offset = start
            pending = []
            for child in node.children:
                pending.append((child, offset))
                offset += sizes[id(child)]
            stack.extend(reversed(pending))

    def text(self) -> str:
        """The detokenised text of this node's tokens."""
        return detokenize(self.leaves())


def parse_tree(line: str, where: str = "tree") -> Tree:
    """Parse one PTB tree with integer labels 0-4 at every node; ValueError naming ``where`` if malformed.

    Example:
        >>> parse_tree("(1 (2 not) (0 bad))").leaves()
        ['not', 'bad']
    """
    tokens = _TOKEN.findall(line)
    if not tokens:
        raise ValueError(f"{where}: empty tree")
    stack: list[Tree] = []
    root: Tree | None = None
    position = 0
    while position < len(tokens):
        token = tokens[position]
        if token == "(":
            if root is not None:
                raise ValueError(f"{where}: text after the end of the tree at token {position}")
            if position + 1 >= len(tokens) or tokens[position + 1] in ("(", ")"):
                raise ValueError(f"{where}: expected a label after '(' at token {position}")
            label_text = tokens[position + 1]
            if not label_text.isdigit() or not 0 <= int(label_text) <= 4:
                raise ValueError(f"{where}: node label must be an integer 0-4, got {label_text!r}")
            node = Tree(int(label_text))
            if position + 2 < len(tokens) and tokens[position + 2] not in ("(", ")"):
                node.word = tokens[position + 2]  # leaf: (label word)
                position += 3
            else:
                position += 2
            if stack:
                if stack[-1].word is not None:
                    raise ValueError(
                        f"{where}: leaf ({stack[-1].label} {stack[-1].word}) cannot have children"
                    )
                stack[-1].children.append(node)
            stack.append(node)
        elif token == ")":
            if not stack:
                raise ValueError(f"{where}: unbalanced ')' at token {position}")
            node = stack.pop()
            if node.word is None and not node.children:
                raise ValueError(f"{where}: node with label {node.label} has neither a word nor children")
            if not stack:
                root = node
            position += 1
        else:
            raise ValueError(
                f"{where}: unexpected token {token!r} at token {position} (words must follow a label)"
            )
    if stack or root is None:
        raise ValueError(f"{where}: unbalanced parentheses (missing ')')")
    return root


def read_tree_file(path: str | os.PathLike) -> list[Tree]:
    """Parse a UTF-8 file of PTB trees (one per line); bad bytes or trees raise ValueError naming file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}: {err.reason}); "
            "the SST tree files are UTF-8 — re-encode the file (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    return parse_trees(text, source=str(path))


def parse_trees(text: str, source: str = "trees") -> list[Tree]:
    """Parse one tree per non-empty line; errors name ``source`` and the line number."""
    return [
        parse_tree(line, f"{source}:{number}")
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}
_NO_SPACE_BEFORE = {",", ".", "!", "?", ";", ":", "%", ")", "]", "}"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "#"}
_CLITICS = {"'s", "'re", "'ve", "'ll", "'d", "'m", "n't", "'", "'S", "'RE", "'VE", "'LL", "'D", "'M", "N'T"}


def detokenize(tokens: Sequence[str]) -> str:
    """Join PTB tokens into natural text.

    Rules: ``-LRB-``/``-RRB-`` (and -LSB-/-RSB-/-LCB-/-RCB-) become brackets; a backslash escapes the next
    character (``\\/`` -> ``/``, ``\\*`` -> ``*``); opening ``````/closing ``''`` quotes become ``"``
    attached to the quoted text (a lone ````` becomes ``'``); no space before ``, . ! ? ; : % ) ] }``, clitics
    (``'s 're 've 'll 'd 'm n't`` and a lone ``'`` as in "the actors '") or a closing quote; no space after
    ``( [ { $ #`` or an opening quote.

    Example:
        >>> detokenize(["It", "does", "n't", "-LRB-", "really", "-RRB-", "work", ",", "``", "ok", "''", "."])
        'It doesn\\'t (really) work, "ok".'
        >>> detokenize(["a", "b\\\\/c", "'s", "film"])
        "a b/c's film"
    """
    words: list[str] = []
    glue_next = False
    for raw in tokens:
        token = _BRACKETS.get(raw, raw)
        if "\\" in token:
            token = re.sub(r"\\(.)", r"\1", token)
        opening, closing = token == "``", token == "''"
        if opening:
            token = '"'
        elif closing:
            token = '"'
        elif token == "`":
            token = "'"
        attach = glue_next or closing or token in _NO_SPACE_BEFORE or raw in _CLITICS
        if words and attach:
            words[-1] += token
        else:
            words.append(token)
        glue_next = opening or token in _NO_SPACE_AFTER
    return " ".join(words)


def to_sst2(label: int) -> int | None:
    """SST-5 label -> SST-2: 0, 1 -> 0 (negative); 2 -> None (neutral, dropped); 3, 4 -> 1 (positive).

    Example:
        >>> [to_sst2(label) for label in range(5)]
        [0, 0, None, 1, 1]
    """
    if not 0 <= int(label) <= 4:
        raise ValueError(f"SST label must be in 0..4, got {label!r}")
    return None if label == 2 else int(label > 2)


def dedup_majority(texts: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
    """Unique texts in first-occurrence order, each with its most frequent label (ties: the earliest seen).

    In SST, a phrase's label comes from one entry of the phrase dictionary, so repeats almost always agree;
    the majority rule only matters where detokenisation merges differently tokenised phrases.

    Example:
        >>> dedup_majority(["a", "b", "a", "a"], [1, 0, 2, 2])
        (['a', 'b'], [2, 0])
    """
    votes: dict[str, dict[int, int]] = {}
    for text, label in zip(texts, labels, strict=True):
        counts = votes.setdefault(text, {})
        counts[int(label)] = counts.get(int(label), 0) + 1
    unique = list(votes)
    # dicts keep insertion order, so max() over items returns the earliest label among the tied ones
    chosen = [max(votes[text].items(), key=lambda item: item[1])[0] for text in unique]
    return unique, chosen
