"""Fixes that modern PyTorch needs for fairseq 0.12, applied on import of the plugin.

torch >= 2.6 loads with ``weights_only=True`` by default, which cannot unpickle the
``argparse.Namespace`` / omegaconf objects inside fairseq checkpoints. fairseq 0.12 calls
``torch.load(f, map_location=...)`` without the argument, so ``fairseq-generate --path``
fails. ``--user-dir nar_refine`` is imported before any checkpoint is read, so we restore
the old default here -- only for callers that did not choose ``weights_only`` themselves.
"""

import functools

import torch

_PATCH_FLAG = "_nar_refine_weights_only_patch"


def patch_torch_load():
    """Make ``torch.load`` default to ``weights_only=False`` when the caller is silent."""
    if getattr(torch.load, _PATCH_FLAG, False):
        return
    original = torch.load

    @functools.wraps(original)
    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    setattr(load, _PATCH_FLAG, True)
    torch.load = load


patch_torch_load()


def patch_batch_by_size():
    """Keep the last batch that fairseq-fixed 0.12.3.x throws away.

    fairseq-fixed's ``data_utils.batch_by_size`` drops the final batch whenever its size is
    not a multiple of ``--required-batch-size-multiple`` (default 8). fairseq-generate then
    silently skips up to 7 test sentences (with ``--batch-size 1``, always the last one), so
    BLEU is computed on a subset. Upstream fairseq 0.12.2 keeps that batch; so do we.
    """
    from fairseq.data import data_utils

    original = data_utils.batch_by_size
    if getattr(original, _PATCH_FLAG, False):
        return

    @functools.wraps(original)
    def batch_by_size(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None,
                      max_sentences=None, required_batch_size_multiple=1, fixed_shapes=None):
        if fixed_shapes is not None:
            return original(indices, num_tokens_fn, num_tokens_vec, max_tokens, max_sentences,
                            required_batch_size_multiple, fixed_shapes)
        import numpy as np
        from fairseq.data.data_utils_fast import batch_by_size_fn, batch_by_size_vec

        max_tokens = max_tokens if max_tokens is not None else -1
        max_sentences = max_sentences if max_sentences is not None else -1
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        if num_tokens_vec is not None and not isinstance(num_tokens_vec, np.ndarray):
            num_tokens_vec = np.fromiter(num_tokens_vec, dtype=np.int64, count=-1)
        if num_tokens_vec is None:
            return batch_by_size_fn(indices, num_tokens_fn, max_tokens, max_sentences,
                                    required_batch_size_multiple)
        return batch_by_size_vec(indices, num_tokens_vec, max_tokens, max_sentences,
                                 required_batch_size_multiple)

    setattr(batch_by_size, _PATCH_FLAG, True)
    data_utils.batch_by_size = batch_by_size


patch_batch_by_size()
