"""What fairseq-train refuses before it trains (nar_refine.training_checks), through the real
CLI: one ``nar_refine: error:`` line, exit 2, and nothing written (no checkpoint, no crash.pt).
No case needs a trained model; the numeric table is also checked in process (fast)."""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (LANMT, NAR, OPTIM, REFINE, USER_DIR, assert_user_error, cli, preprocess, run,
                     write_toy_corpus)

REPO = Path(__file__).resolve().parents[1]


def fairseq_train(data, save_dir, args, max_update=2):
    return run([cli("fairseq-train"), data, "--user-dir", USER_DIR, "--save-dir", save_dir,
                "--max-update", str(max_update), "--num-workers", "0", "--cpu", *args], check=False)


def nothing_written(save_dir):
    return not list(Path(save_dir).glob("*")) if Path(save_dir).exists() else True


@pytest.mark.parametrize("args,phrases", [
    ([*NAR, "--arch", "lanmt_tiny", "--criterion", "refine_nat_loss", "--share-all-embeddings", *OPTIM],
     ["--criterion refine_nat_loss cannot train --arch lanmt_tiny (a lanmt model)",
      "--criterion lanmt_elbo"]),
    ([*REFINE, "--criterion", "cross_entropy"],
     ["--criterion cross_entropy cannot train --arch refine_nat_tiny", "--criterion refine_nat_loss"]),
    ([*REFINE, "--fp16"], ["--fp16 with --cpu", "only on a CUDA GPU", "drop --fp16"]),
    ([*REFINE, "--lr", "-1", "--max-tokens", "0", "--update-freq", "0"],
     ["--lr must be > 0, got [-1.0]", "--max-tokens must be > 0, got 0", "--update-freq must be >= 1"]),
    ([*LANMT, "--kl-budget", "nan"], ["--kl-budget must be finite, got nan"]),
    ([*REFINE, "--length-loss-factor", "-1"], ["--length-loss-factor must be >= 0, got -1.0"]),
], ids=["lanmt+refine_nat_loss", "refine_nat+cross_entropy", "cpu-fp16", "numbers", "kl-budget-nan",
        "criterion-negative"])
def test_refused_before_training(toy_data, tmp_path, args, phrases):
    save = tmp_path / "ckpt"
    proc = fairseq_train(toy_data, save, args)
    assert_user_error(proc, *phrases)
    assert nothing_written(save), list(save.glob("*"))


def test_empty_lines_are_refused_when_the_split_is_loaded(toy_data, tmp_path):
    """Before: refused only with --eval-bleu, after a whole epoch; an empty target trained."""
    raw = write_toy_corpus(tmp_path / "raw", n_train=40, n_valid=10, n_test=5)
    for name, index in (("valid.src", 3), ("train.tgt", 5)):
        lines = (raw / name).read_text().splitlines()
        lines[index] = ""
        (raw / name).write_text("\n".join(lines) + "\n")
    data = preprocess(raw, str(tmp_path / "bin"), ["--srcdict", f"{toy_data}/dict.src.txt"])
    save = tmp_path / "ckpt"
    proc = fairseq_train(data, save, REFINE[:-1])  # with validation: valid is loaded first
    assert_user_error(proc, "empty source line(s) at sample id(s) [3] of the valid split")
    proc = fairseq_train(data, save, REFINE)
    assert_user_error(proc, "empty target line(s) at sample id(s) [5] of the train split")
    assert nothing_written(save), list(save.glob("*"))


def test_save_dir_of_a_running_training_is_refused(toy_data, tmp_path):
    """A lock naming a live process refuses; one naming a process that is gone is taken over
    (and released when the training ends)."""
    save = tmp_path / "ckpt"
    save.mkdir()
    lock = save / "train.lock"
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "started": "today",
          "command": "fairseq-train (the test)"}
    lock.write_text(json.dumps(me))
    proc = fairseq_train(toy_data, save, REFINE)
    assert_user_error(proc, f"--save-dir {save} is in use by a running training (process "
                            f"{os.getpid()}", "Use another --save-dir")
    assert [p.name for p in save.iterdir()] == ["train.lock"]

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps(dict(me, pid=gone.pid)))
    proc = fairseq_train(toy_data, save, REFINE, max_update=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"taking over the lock of process {gone.pid}" in proc.stdout + proc.stderr
    assert (save / "checkpoint_last.pt").exists() and not lock.exists()


# -- in process: the numeric table ---------------------------------------------------------------
def training_args(data, extra):
    from fairseq import options, utils

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    return options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", USER_DIR, "--task", "nar_translation", "--arch", "lanmt_tiny",
        "--criterion", "lanmt_elbo", "--max-tokens", "100", *extra])


@pytest.mark.parametrize("extra,phrase", [
    (["--kl-budget", "inf"], "--kl-budget must be finite, got inf"),
    (["--lr", "0"], "--lr must be > 0, got [0.0]"),
    (["--max-tokens", "-5"], "--max-tokens must be > 0, got -5"),
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),
    (["--update-freq", "0"], "--update-freq must be >= 1, got [0]"),
    (["--max-update", "-1"], "--max-update must be >= 0, got -1"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--clip-norm", "-1"], "--clip-norm must be >= 0, got -1.0"),
])
def test_numeric_options(toy_data, extra, phrase):
    from nar_refine.training_checks import bad_numeric_options

    assert bad_numeric_options(training_args(toy_data, [])) == []
    bad = bad_numeric_options(training_args(toy_data, extra))
    assert len(bad) == 1 and phrase in bad[0], bad


def test_precision_and_criterion_config(toy_data):
    from omegaconf import OmegaConf

    from nar_refine.criterions.lanmt_elbo import LaNMTELBOConfig
    from nar_refine.errors import NARConfigError
    from nar_refine.training_checks import check_criterion_config, check_precision

    with pytest.raises(NARConfigError, match="--bf16 with --cpu"):
        check_precision(training_args(toy_data, ["--bf16", "--cpu"]))
    check_precision(training_args(toy_data, ["--cpu"]))
    cfg = OmegaConf.merge(OmegaConf.structured(LaNMTELBOConfig),
                          {"_name": "lanmt_elbo", "kl_budget": float("inf"), "label_smoothing": -0.1})
    with pytest.raises(NARConfigError) as err:
        check_criterion_config(cfg)
    assert "--kl-budget must be finite, got inf" in str(err.value)
    assert "--label-smoothing must be >= 0, got -0.1" in str(err.value)


def test_distillation_keeps_the_reference_of_an_empty_hypothesis():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import distill
    finally:
        sys.path.pop(0)
    assert distill.fill_empty_targets(["A B", "", " "], {0: "a b", 1: "c d", 2: "e"}) == ["A B", "c d", "e"]
