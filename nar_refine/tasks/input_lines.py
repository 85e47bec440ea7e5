"""Lines given for translation (fairseq-interactive, the Python API): checked one by one, so
that one bad line is reported and answered with an empty hypothesis instead of ending the run."""

import sys

import torch
from fairseq.data import LanguagePairDataset

from nar_refine import input_checks


def checked_lines(src_tokens, d, limit_and_by, truncate, interactive, first=0):
    """(tokens, lengths) of the lines to translate, each line checked before fairseq's size
    filter: an empty line and a line longer than the source positions of the model are
    reported on stderr (one ``nar_refine: error:`` line each, naming the line) and become an
    empty source, answered with an empty hypothesis; with ``truncate`` (--truncate-long-inputs)
    a long line is cut to the limit, with a warning, and translated. A non-UTF-8 line reaches
    here empty, already reported by input_checks. ``first``: lines read before this call."""
    limit, limit_by = limit_and_by
    tokens, lengths = [], []
    for index, line in enumerate(src_tokens):
        number = first + index + 1
        where = (f"input line {number} (S-{number - 1})" if interactive
                 else f"sentence {index} (0-based) of this call")
        words = int((line.ne(d.pad()) & line.ne(d.eos()) & line.ne(d.bos())).sum())
        if words > 0:  # mostly <unk>: text not segmented as the data-bin (no --bpe?)
            input_checks.warn_unknown_words(line, d, words, where)
        if words == 0:
            if not (interactive and number in input_checks.reported_input_lines):
                user_message("error", f"{where} is empty: a non-autoregressive model cannot "
                             f"predict a length from nothing; its hypothesis is left empty")
        elif limit is not None and line.numel() > limit:
            if truncate:
                user_message("warning", f"{where} has {line.numel()} tokens (with </s>), "
                             f"more than {limit_by} {limit}; translating its first "
                             f"{limit - 1} tokens (--truncate-long-inputs)")
                line = torch.cat([line[:limit - 1], line.new_tensor([d.eos()])])
            else:
                user_message("error", f"{where} has {line.numel()} tokens (with </s>), more "
                             f"than {limit_by} {limit}; not translated (its hypothesis is "
                             f"left empty): split the line, or pass --truncate-long-inputs "
                             f"to translate its first {limit - 1} tokens")
                line = line.new_tensor([d.eos()])
        tokens.append(line)
        lengths.append(line.numel())
    return tokens, lengths


INPUT_LINES_KEY = "nar_input_lines"


class InputLinesDataset(LanguagePairDataset):
    """Source lines given for translation; its batches say so (``INPUT_LINES_KEY``), so that
    :meth:`NARTranslationTask.inference_step` answers an empty line instead of refusing it."""

    def collater(self, samples, pad_to_length=None):
        batch = super().collater(samples, pad_to_length=pad_to_length)
        if batch:
            batch[INPUT_LINES_KEY] = True
        return batch


def is_input_lines_batch(sample):
    """True for lines given for translation: fairseq-interactive (its batches carry no ids)
    and the Python API (:class:`InputLinesDataset`); False for dataset splits."""
    return "id" not in sample or bool(sample.get(INPUT_LINES_KEY, False))


def empty_hypothesis(eos, like):
    """The hypothesis of a line that was not translated: no token, score -inf."""
    return {"tokens": like.new_tensor([eos]), "positional_scores": torch.zeros(1),
            "score": float("-inf"), "alignment": None, "attention": None, "steps": 0}


def user_message(kind, text):
    """One line on stderr for the user of a CLI (``nar_refine: error: ...``), run going on."""
    sys.stdout.flush()  # keep the order of S-/H- lines and messages on a terminal
    print(f"nar_refine: {kind}: {text}", file=sys.stderr, flush=True)
