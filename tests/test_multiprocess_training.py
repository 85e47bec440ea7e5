"""Every family trains in two processes through fairseq's real trainer (gloo, on the CPU).

This is the code path of a run on several GPUs: ``--ddp-backend c10d`` (fairseq's default:
DistributedDataParallel with ``find_unused_parameters`` off), each process reading its own
shard of every epoch's batches, gradients all-reduced at every update, rank 0 writing the
checkpoints. The processes are started in the two ways that work on CPUs: by torchrun, and by
hand (``--distributed-init-method tcp://... --distributed-rank R --distributed-no-spawn``).
``train_rank.py`` (fairseq-train's own ``cli_main``) records each process's parameters: after
a few updates they must be identical in both processes and equal to rank 0's checkpoint, while
(nearly) every trainable parameter has moved and the two processes trained on different
sentences.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import USER_DIR, check_ok, cli

WORKER = str(Path(__file__).with_name("train_rank.py"))
UPDATES = 3
COMMON = ["--user-dir", USER_DIR, "--task", "nar_translation", "--optimizer", "adam", "--lr", "3e-3",
          "--max-tokens", "500", "--max-update", str(UPDATES), "--no-epoch-checkpoints",
          "--disable-validation", "--num-workers", "0", "--seed", "1", "--no-progress-bar",
          "--log-format", "simple", "--log-interval", "1",
          "--cpu", "--distributed-world-size", "2", "--distributed-backend", "gloo"]
FAMILIES = {  # family: (launcher, fairseq-train arguments)
    "refine_nat": ("torchrun", ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
                                "--share-all-embeddings", "--dropout", "0.1"]),
    "lanmt": ("by hand", ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", "--share-all-embeddings"]),
    "score_net": ("torchrun", ["--arch", "score_net_tiny", "--criterion", "score_matching"]),
    "energy_net": ("by hand", ["--arch", "energy_net_tiny", "--criterion", "score_matching"]),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_processes(data, folder, family_args, launcher):
    """Two-process fairseq-train; returns (record of rank 0, record of rank 1, checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [data, *COMMON, "--save-dir", str(folder / "checkpoints"), *family_args]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               NAR_RANK_RECORD=str(folder / "rank{rank}.pt"))
    port = str(free_port())
    if launcher == "torchrun":
        cmds = [[cli("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                 "--master_port", port, WORKER, *args]]
    else:
        cmds = [[sys.executable, WORKER, *args, "--distributed-init-method", f"tcp://127.0.0.1:{port}",
                 "--distributed-rank", str(rank), "--distributed-no-spawn"] for rank in (0, 1)]
    logs = [(open(folder / f"proc{i}.out", "w+"), open(folder / f"proc{i}.err", "w+"))
            for i in range(len(cmds))]
    procs = [subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
             for cmd, (out, err) in zip(cmds, logs)]
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for cmd, proc, (out, err) in zip(cmds, procs, logs):
        out.seek(0), err.seek(0)
        check_ok(cmd, subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()))
        out.close(), err.close()
    records = [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]
    return (*records, folder / "checkpoints" / "checkpoint_last.pt")


def check_in_step(rank0, rank1, checkpoint):
    assert (rank0["rank"], rank1["rank"], rank0["world_size"], rank1["world_size"]) == (0, 1, 2, 2)
    assert rank0["updates"] == rank1["updates"] == UPDATES
    assert rank0["wrapper"] == rank1["wrapper"] == "DistributedDataParallel"
    assert rank0["find_unused_parameters"] is False
    assert rank0["ids"] and rank1["ids"] and not set(rank0["ids"]) & set(rank1["ids"]), \
        "the two processes should train on different sentences"
    trainable = rank0["trainable"]
    assert trainable and trainable == rank1["trainable"]
    # an energy network's last layer-norm bias gets no gradient (the score, a gradient of the
    # energy, is blind to constants), so "moved" is asked of most parameters, not all
    still = [n for n in trainable if torch.equal(rank0["final"][n], rank0["initial"][n])]
    assert len(still) <= len(trainable) // 10, f"parameters that training did not change: {still}"
    apart = [n for n in rank0["final"] if not torch.equal(rank0["final"][n], rank1["final"][n])]
    assert not apart, f"parameters that differ between the two processes: {apart}"
    saved = torch.load(checkpoint, weights_only=False)["model"]
    assert all(torch.equal(saved[n], rank0["final"][n]) for n in trainable)


@pytest.fixture(scope="module")
def lanmt_two_processes(toy_data, tmp_path_factory):
    launcher, args = FAMILIES["lanmt"]
    return train_two_processes(toy_data, tmp_path_factory.mktemp("ddp_lanmt"), args, launcher)


def test_lanmt(lanmt_two_processes):
    check_in_step(*lanmt_two_processes)


@pytest.mark.parametrize("family", ["refine_nat", "score_net", "energy_net"])
def test_family(family, toy_data, lanmt_two_processes, tmp_path):
    launcher, args = FAMILIES[family]
    if family in ("score_net", "energy_net"):  # on the LaNMT trained in two processes
        args = [*args, "--lanmt-path", str(lanmt_two_processes[2])]
    check_in_step(*train_two_processes(toy_data, tmp_path, args, launcher))
