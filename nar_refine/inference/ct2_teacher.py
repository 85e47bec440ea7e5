"""The autoregressive teacher served by CTranslate2, as a candidate scorer (``--teacher-path``
naming a folder made by ``ct2-fairseq-converter`` instead of a fairseq checkpoint).

score(x, y) = sum_t log p_AR(y_t | y_<t, x) over y + </s>, the same quantity as
``TeacherScorer`` (``translate_batch``'s sibling ``score_batch`` returns the log-probability
of every target token and of </s>), computed by CTranslate2 in one call for all candidates.
The converted vocabularies must be the task's dictionaries symbol for symbol (the converter
writes fairseq's symbols in order, ``<pad>`` as ``<blank>``), which is checked when it is loaded.
"""

import json
import os

import torch

from nar_refine.dictionaries import first_difference
from nar_refine.errors import NARConfigError
from nar_refine.inference.distinct_rows import on_distinct_rows


def is_ctranslate2_model(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.bin"))


def converted_vocabularies(path):
    """(source symbols, target symbols) of a converted model, fairseq's spelling of <pad>."""
    def read(name):
        for ext in (".json", ".txt"):
            file = os.path.join(path, name + ext)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    words = json.load(f) if ext == ".json" else [w.rstrip("\n") for w in f]
                return ["<pad>" if w == "<blank>" else w for w in words]
        return None

    shared = read("shared_vocabulary")
    if shared is not None:
        return shared, shared
    return read("source_vocabulary"), read("target_vocabulary")


class CTranslate2TeacherScorer:
    name = "autoregressive teacher (CTranslate2)"

    def __init__(self, translator, src_dict, tgt_dict, path=""):
        self.translator, self.path = translator, path
        self.src_symbols, self.tgt_symbols = src_dict.symbols, tgt_dict.symbols
        self.src_skip = {src_dict.pad(), src_dict.eos(), src_dict.bos()}
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()

    @classmethod
    def from_dir(cls, path, task, like=None):
        """Load the converted teacher; refuse it unless its vocabularies are the task's."""
        try:
            import ctranslate2
        except ImportError:
            raise NARConfigError(f"--teacher-path {path} is a CTranslate2 model, but ctranslate2 "
                                 f"is not installed (pip install ctranslate2; scripts/setup.sh "
                                 f"installs it)") from None
        for side, words, d in zip(("source", "target"), converted_vocabularies(path),
                                  (task.source_dictionary, task.target_dictionary)):
            problem = (f"it has no {side} vocabulary file" if words is None else
                       first_difference(side, words, d.symbols, ("teacher", "task")))
            if problem:
                raise NARConfigError(
                    f"--teacher-path {path} (a CTranslate2 model) does not share this task's "
                    f"dictionaries: {problem}; convert a teacher trained on this task's data-bin "
                    f"(ct2-fairseq-converter --data_dir DATA)")
        device = "cpu"
        if like is not None and next(like.parameters()).device.type == "cuda":
            device = "cuda"
        translator = ctranslate2.Translator(path, device=device, inter_threads=1,
                                            intra_threads=torch.get_num_threads())
        return cls(translator, task.source_dictionary, task.target_dictionary, path)

    def __call__(self, src_tokens, src_lengths, tokens, lprobs=None, rows=None):
        """Sum of the teacher's token log-probs of each row of ``tokens`` (+ </s>) given its
        source (``rows``: the source row of every candidate, as ``TeacherScorer``); equal
        candidates of one source are scored once."""
        if rows is None:
            rows = torch.arange(src_tokens.size(0), device=tokens.device)
        return on_distinct_rows(lambda t, r: self.score(src_tokens, src_lengths, t, rows=r),
                                (rows, tokens), tokens, rows)

    def score(self, src_tokens, src_lengths, tokens, rows=None):
        """``__call__`` for every row, equal ones included."""
        sources = [[self.src_symbols[t] for t in row if t not in self.src_skip]
                   for row in src_tokens.tolist()]
        if rows is not None:
            sources = [sources[r] for r in rows.tolist()]
        targets = [[self.tgt_symbols[t] for t in row if t != self.pad] for row in tokens.tolist()]
        results = self.translator.score_batch(sources, targets)
        return torch.tensor([sum(r.log_probs) for r in results], device=tokens.device)
