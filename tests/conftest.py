"""Session fixtures: tiny data binarized once, tiny models trained once through the real CLIs."""

import pytest

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
