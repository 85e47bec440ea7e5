"""Shared parts of the talk's figures (scripts/latent_space.py, elbo_steps.py, qualitative.py):

    __init__.py  loading checkpoints as fairseq-generate does, batches of a split, detokenised
                 text, references, the command line written into every output
    latent.py    LaNMT latent chains (prior mean, delta steps, score/energy steps) from the
                 models' own pieces, and the ELBO of an output at its delta posterior
    text.py      word-level differences between outputs (marks, moved words) and markdown

Paths written into the outputs are relative to the repository, so the commands run from its root.
"""

import json
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(REPO / "nar_refine")


def relative(path):
    """``path`` relative to the repository when it lies inside it, else as given."""
    p = os.path.abspath(str(path))
    return os.path.relpath(p, REPO) if p.startswith(str(REPO) + os.sep) else str(path)


def command_line(script, argv):
    """The command that reproduces this run, from the repository root."""
    args = [relative(a) if os.path.exists(a) else a for a in argv]
    return " ".join(["python", f"scripts/{script}", *map(shlex.quote, args)])


def setup(threads, seed=1):
    """Threads, seed and the plugin's registration, before any model is loaded."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import logging

    import torch

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    from fairseq import utils

    utils.import_user_module(argparse_namespace(user_dir=USER_DIR))


def argparse_namespace(**kw):
    from argparse import Namespace

    return Namespace(**kw)


def load(path, data_bin, **overrides):
    """(model, task) the way fairseq-generate loads ``path`` with ``--task nar_translation``;
    ``overrides``: task/model options such as ``lanmt_path``."""
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        sys.exit(f"no such checkpoint: {path}")
    arg = {"data": data_bin, **{k: v for k, v in overrides.items() if v is not None}}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=arg)
    model = models[0]
    model.eval()
    return model, task


def batches(task, subset, max_tokens, max_sentences=0):
    """Batches of ``subset`` (loaded if needed) in fairseq's length-sorted order; with
    ``max_sentences`` only its first N sentences (by id)."""
    import numpy as np

    if subset not in task.datasets:
        task.load_dataset(subset)
    ds = task.dataset(subset)
    indices = ds.ordered_indices()
    if max_sentences and max_sentences < len(ds):
        indices = np.array([i for i in indices if i < max_sentences], dtype=np.int64)
    sampler = ds.batch_by_size(indices, max_tokens=max_tokens, required_batch_size_multiple=1)
    for ids in sampler:
        yield ds.collater([ds[i] for i in ids])


def to_device(sample, cuda):
    if not cuda:
        return sample
    from fairseq import utils

    return utils.move_to_cuda(sample)


def token_list(tokens, dictionary):
    """A tensor row -> the list of its token ids without pad, </s> and <s>."""
    drop = {dictionary.pad(), dictionary.eos(), dictionary.bos()}
    return [t for t in tokens.tolist() if t not in drop]


def detok(dictionary, ids, remove_bpe):
    """Token ids -> the text fairseq-generate prints in its D- lines (``--remove-bpe``)."""
    import torch

    return dictionary.string(torch.tensor(ids, dtype=torch.long), remove_bpe)


def references(task, subset, ref_file, remove_bpe, max_sentences=0):
    """{id: reference text}: the lines of ``ref_file`` (raw, detokenised), or the split's
    binarised targets with the subword scheme undone."""
    if ref_file:
        lines = Path(ref_file).read_text(encoding="utf-8").splitlines()
        return dict(enumerate(lines[:max_sentences] if max_sentences else lines))
    return split_texts(task, subset, "tgt", remove_bpe, max_sentences)


def sources(task, subset, remove_bpe, max_sentences=0):
    """{id: source text} of the split (subwords undone)."""
    return split_texts(task, subset, "src", remove_bpe, max_sentences)


def split_texts(task, subset, side, remove_bpe, max_sentences=0):
    """{id: text} of one side (``src`` or ``tgt``) of a binarised split, subwords undone."""
    if subset not in task.datasets:
        task.load_dataset(subset)
    ds = task.dataset(subset)
    n = min(len(ds), max_sentences) if max_sentences else len(ds)
    d = task.source_dictionary if side == "src" else task.target_dictionary
    data = getattr(ds, side)
    return {i: detok(d, token_list(data[i], d), remove_bpe) for i in range(n)}


def corpus_bleu(hyps, refs):
    """sacreBLEU (cased, 13a) of two equally long lists, as the project reports it."""
    import sacrebleu

    return round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score, 2)


def sentence_bleu(hyp, ref):
    import sacrebleu

    return sacrebleu.sentence_bleu(hyp, [ref], tokenize="13a").score


def write_json(path, data):
    text = json.dumps(data, indent=1, ensure_ascii=False).replace(str(REPO) + os.sep, "")
    Path(path).write_text(text + "\n", encoding="utf-8")


def remove_bpe_arg(value):
    """``--remove-bpe none`` -> None (word-level data), else the fairseq scheme name."""
    return None if value in (None, "", "none") else value


def add_common_args(p, subset):
    """Options every figure script shares."""
    p.add_argument("--data-bin", required=True,
                   help="binarised data the models were trained with (fairseq-preprocess output)")
    p.add_argument("--gen-subset", default=subset, help=f"split to use (default {subset})")
    p.add_argument("--ref", help="raw (detokenised) reference file of --gen-subset, one line per "
                   "sentence (default: the binarised targets with --remove-bpe undone)")
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="subword scheme to undo (fairseq's --remove-bpe: sentencepiece, "
                   "subword_nmt; none for word-level data)")
    p.add_argument("--max-tokens", type=int, default=4096, help="batch size in tokens")
    p.add_argument("--max-sentences", type=int, default=0,
                   help="use only the first N sentences of the split (0: all)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch and fairseq-generate)")
    p.add_argument("--cuda", action="store_true", help="run the models on the GPU")
    p.add_argument("--out", required=True, help="output folder (made if missing)")
