"""Every trainable parameter gets a gradient from one forward, also under DistributedDataParallel.

fairseq's DDP (``--ddp-backend c10d``) runs with ``find_unused_parameters=False``: a parameter
left out of a step fails training on several processes. Here one gloo process wraps each model
the way fairseq does (DDP inside ``ModuleProxyWrapper``) and runs two criterion steps.
"""

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import ModuleProxyWrapper

import nar_refine  # noqa: F401
from helpers import USER_DIR, train

FAMILIES = {
    "refine_nat": ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", "--dropout", "0.1"],
    "lanmt": ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"],
}


def build(data, family_args):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--user-dir", USER_DIR, "--task", "nar_translation",
                                                "--share-all-embeddings", "--max-tokens", "500",
                                                *family_args])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=500, seed=1).next_epoch_itr(shuffle=False)
    return task, model, criterion, [next(itr), next(itr)]


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_parameter_gets_a_gradient(toy_data, family):
    task, model, criterion, batches = build(toy_data, FAMILIES[family])
    model.train()
    loss, _, _ = criterion(model, batches[0])
    loss.backward()
    missing = [n for n, p in _trainable(model) if p.grad is None]
    assert not missing, f"{family}: parameters without gradient: {missing}"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ddp_steps(toy_data, family, process_group):
    task, model, criterion, batches = build(toy_data, FAMILIES[family])
    ddp = ModuleProxyWrapper(torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False))
    ddp.train()
    for sample in batches:  # the second step fails if the first left a parameter unused
        loss, _, _ = criterion(ddp, sample)
        loss.backward()
    assert all(p.grad is not None for _, p in _trainable(model))
