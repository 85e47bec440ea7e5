"""Fixes that modern PyTorch needs for fairseq 0.12, applied on import of the plugin.

torch >= 2.6 loads with ``weights_only=True`` by default, which cannot unpickle the
``argparse.Namespace`` / omegaconf objects inside fairseq checkpoints. fairseq 0.12 calls
``torch.load(f, map_location=...)`` without the argument, so ``fairseq-generate --path``
fails. ``--user-dir nar_refine`` is imported before any checkpoint is read, so we restore
the old default here -- only for callers that did not choose ``weights_only`` themselves.

The other fixes: fairseq-fixed's ``batch_by_size`` drops a last batch (``patch_batch_by_size``),
and fairseq's distributed training assumes GPUs (``patch_cpu_distributed``).
"""

import functools
import os

import torch

from nar_refine.errors import NARConfigError

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



def _module_device_types(module):
    return {p.device.type for p in module.parameters()} or {"cpu"}


def patch_cpu_distributed():
    """Let fairseq 0.12 train with several CPU processes (gloo), as it does with several GPUs.

    * ``--ddp-backend c10d`` (the default) wraps the model in ``DistributedDataParallel``
      with ``device_ids=[device_id]``, which torch refuses for a module on the CPU. A module
      that is not on a GPU gets ``device_ids=None, output_device=None`` instead (torch's
      form for CPU modules); GPU modules are wrapped exactly as before.
    * Started by torchrun / torch.distributed.launch with ``--cpu``, fairseq computes the
      device as ``RANK % torch.cuda.device_count()``, a division by zero on a machine without
      GPUs. Without GPUs every process gets device id 0 (unused on a CPU).
    * Two ways to fail with a traceback become one line that names the launch that works:
      asking fairseq-train itself for more processes than there are GPUs (it starts one per
      GPU), and the default ``--distributed-backend nccl`` for CPU training.
    """
    from fairseq.distributed import utils as distributed_utils
    from fairseq.models import distributed_fairseq_model

    ddp_class = distributed_fairseq_model.DistributedDataParallel
    if not getattr(ddp_class, _PATCH_FLAG, False):
        def DistributedDataParallel(module, *args, **kwargs):  # noqa: N802 (the name fairseq calls)
            if "cuda" not in _module_device_types(module):
                kwargs["device_ids"] = None
                kwargs["output_device"] = None
            return ddp_class(module, *args, **kwargs)

        DistributedDataParallel.__doc__ = ddp_class.__doc__
        setattr(DistributedDataParallel, _PATCH_FLAG, True)
        distributed_fairseq_model.DistributedDataParallel = DistributedDataParallel

    launch_init = distributed_utils._infer_torch_distributed_launch_init
    if not getattr(launch_init, _PATCH_FLAG, False):
        @functools.wraps(launch_init)
        def _infer_torch_distributed_launch_init(cfg):
            if torch.cuda.device_count() > 0:
                return launch_init(cfg)
            cfg.distributed_init_method = "env://"
            cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
            cfg.distributed_rank = int(os.environ["RANK"])
            cfg.device_id = 0  # no GPU to choose (a device id > 0 makes fairseq select one)
            cfg.distributed_no_spawn = True  # the launcher created the processes

        setattr(_infer_torch_distributed_launch_init, _PATCH_FLAG, True)
        distributed_utils._infer_torch_distributed_launch_init = _infer_torch_distributed_launch_init

    single_node_init = distributed_utils._infer_single_node_init
    if not getattr(single_node_init, _PATCH_FLAG, False):
        @functools.wraps(single_node_init)
        def _infer_single_node_init(cfg):
            world, gpus = cfg.distributed_world_size, torch.cuda.device_count()
            if world > gpus:
                raise NARConfigError(
                    f"--distributed-world-size {world}: fairseq-train starts one training process "
                    f"per GPU and found {gpus} GPU(s). To train in {world} CPU processes, start "
                    f"them with a launcher: torchrun --nproc_per_node {world} $(which fairseq-train) "
                    f"... --cpu --distributed-world-size {world} --distributed-backend gloo")
            return single_node_init(cfg)

        setattr(_infer_single_node_init, _PATCH_FLAG, True)
        distributed_utils._infer_single_node_init = _infer_single_node_init

    distributed_init = distributed_utils.distributed_init
    if not getattr(distributed_init, _PATCH_FLAG, False):
        @functools.wraps(distributed_init)
        def _distributed_init(cfg):
            common, dt = getattr(cfg, "common", cfg), getattr(cfg, "distributed_training", cfg)
            on_cpu = getattr(common, "cpu", False) or not torch.cuda.is_available()
            if on_cpu and getattr(dt, "distributed_backend", None) == "nccl":
                raise NARConfigError(
                    "--distributed-backend nccl (the default) needs GPUs; training on CPUs in "
                    "several processes needs --distributed-backend gloo")
            return distributed_init(cfg)

        setattr(_distributed_init, _PATCH_FLAG, True)
        distributed_utils.distributed_init = _distributed_init


patch_cpu_distributed()
