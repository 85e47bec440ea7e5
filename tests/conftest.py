"""Session fixtures: tiny data binarized once, tiny models trained once through the real CLIs."""

import os
import socket

import pytest
import torch.distributed as dist

from helpers import preprocess, train_ar_teacher, write_toy_corpus


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Binarized toy corpus (joined dictionary); returns the data-bin path as str."""
    root = tmp_path_factory.mktemp("toy")
    raw = write_toy_corpus(root / "raw")
    return preprocess(raw, str(root / "bin"))


@pytest.fixture(scope="session")
def ar_teacher(toy_data, tmp_path_factory):
    """A tiny autoregressive fairseq Transformer on the toy data (task translation)."""
    return train_ar_teacher(toy_data, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group, so models can be wrapped in DistributedDataParallel on a CPU."""
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
