"""Word-level differences between two outputs, and their markdown.

Words are compared by a longest-common-subsequence alignment (difflib, no junk heuristic):
a word of the new output is *changed* when the alignment does not match it to a word of the
old one (inserted or replaced). A word is *moved* when both outputs contain it but the
alignment cannot match it in order, so ``moved = |multiset intersection| - |LCS|``: zero for
local edits (substitutions, insertions, deletions), positive when words changed places, as in
"es gibt nicht viele Aerzte im Land" -> "im Land gibt es nicht viele Aerzte".
"""

import difflib
import re
from collections import Counter


def _matcher(old, new):
    return difflib.SequenceMatcher(None, old, new, autojunk=False)


def changed_flags(old, new):
    """One flag per word of ``new``: True where the alignment with ``old`` does not match it."""
    flags = [True] * len(new)
    for block in _matcher(old, new).get_matching_blocks():
        for j in range(block.b, block.b + block.size):
            flags[j] = False
    return flags


def word_edits(old, new):
    """Word edit distance (Levenshtein: insertions, deletions and substitutions of words)."""
    row = list(range(len(new) + 1))
    for i, a in enumerate(old, 1):
        prev, row[0] = row[0], i
        for j, b in enumerate(new, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (a != b))
    return row[-1]


def edit_spans(old, new):
    """Separate places where the outputs differ (non-equal opcodes of the alignment)."""
    return sum(1 for op in _matcher(old, new).get_opcodes() if op[0] != "equal")


def moved_words(old, new):
    """Words both outputs contain that the in-order alignment cannot match (module docstring)."""
    common = sum((Counter(old) & Counter(new)).values())
    lcs = sum(b.size for b in _matcher(old, new).get_matching_blocks())
    return common - lcs


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md_escape(text):
    """Text safe inside a markdown table cell (no emphasis, links or cell breaks)."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def marked(words, flags):
    """Words joined with the flagged ones in **bold** (consecutive ones in one span)."""
    out, run = [], []
    for w, f in zip(words, flags):
        if f:
            run.append(md_escape(w))
            continue
        if run:
            out.append("**" + " ".join(run) + "**")
            run = []
        out.append(md_escape(w))
    if run:
        out.append("**" + " ".join(run) + "**")
    return " ".join(out)


def marked_change(old, new):
    """``new`` with the words that differ from ``old`` marked: inserted or replacing words in
    **bold**, words deleted without replacement ~~struck through~~ where they stood."""
    parts = []
    for tag, i1, i2, j1, j2 in _matcher(old, new).get_opcodes():
        if tag == "equal":
            parts += [md_escape(w) for w in new[j1:j2]]
        elif tag == "delete":
            parts.append("~~" + " ".join(md_escape(w) for w in old[i1:i2]) + "~~")
        else:
            parts.append("**" + " ".join(md_escape(w) for w in new[j1:j2]) + "**")
    return " ".join(parts)
