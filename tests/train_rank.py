"""``fairseq-train`` for one process of a multi-process run, that also records what the process did.

Runs ``fairseq_cli.train.cli_main``, the function behind the fairseq-train console script, with
the same command line. Afterwards it saves to ``$NAR_RANK_RECORD`` (``{rank}`` replaced by the
process's data-parallel rank): the model's parameters before the first and after the last
update, the ids of the sentences this process trained on, and how fairseq wrapped the model.
Only rank 0 writes checkpoints, so this is how a test sees every rank's parameters.
"""

import os

import torch
from fairseq import trainer as fairseq_trainer
from fairseq_cli import train


def _state(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def main():
    trainers, ids, initial = [], [], {}
    init, train_step = fairseq_trainer.Trainer.__init__, fairseq_trainer.Trainer.train_step

    def record_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        trainers.append(self)

    def record_step(self, samples, *args, **kwargs):
        if not initial:
            initial.update(_state(self.get_model()))
        for sample in samples:
            if sample:  # fairseq passes an empty dict for a missing batch
                ids.extend(sample["id"].tolist())
        return train_step(self, samples, *args, **kwargs)

    fairseq_trainer.Trainer.__init__ = record_init
    fairseq_trainer.Trainer.train_step = record_step
    train.cli_main()

    trainer = trainers[0]
    wrapper = trainer.model  # ModuleProxyWrapper(DistributedDataParallel(model)) under c10d
    ddp = getattr(wrapper, "module", wrapper)
    torch.save({
        "rank": trainer.data_parallel_rank,
        "world_size": trainer.data_parallel_world_size,
        "updates": trainer.get_num_updates(),
        "ids": ids,
        "wrapper": type(ddp).__name__,
        "find_unused_parameters": getattr(ddp, "find_unused_parameters", None),
        "trainable": [n for n, p in trainer.get_model().named_parameters() if p.requires_grad],
        "initial": initial,
        "final": _state(trainer.get_model()),
    }, os.environ["NAR_RANK_RECORD"].format(rank=trainer.data_parallel_rank))


if __name__ == "__main__":
    main()
