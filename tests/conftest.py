"""Session fixtures: tiny data binarized once, tiny models trained once through the real CLIs."""

import pytest

from helpers import preprocess, train, write_toy_corpus


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Binarized toy corpus (joined dictionary); returns the data-bin path as str."""
    root = tmp_path_factory.mktemp("toy")
    raw = write_toy_corpus(root / "raw")
    return preprocess(raw, str(root / "bin"))


@pytest.fixture(scope="session")
def ar_teacher(toy_data, tmp_path_factory):
    """A tiny autoregressive fairseq Transformer on the toy data (task translation)."""
    save = tmp_path_factory.mktemp("teacher")
    train(toy_data, str(save), [
        "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
        "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
        "--max-tokens", "2000", "--criterion", "cross_entropy", "--no-epoch-checkpoints",
    ], max_update=150)
    return str(save / "checkpoint_last.pt")
