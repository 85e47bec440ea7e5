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
