"""refine_nat through the real fairseq CLIs: train, generate, adaptive stop, history, resume."""

import re

import pytest
import torch

from helpers import (USER_DIR, cli, generate, log_lines, log_value, parse_bleu, parse_hypotheses,
                     preprocess, run, train, write_toy_corpus)

NAR = ["--task", "nar_translation"]
REFINE_ARGS = [
    "--task", "nar_translation", "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
    "--share-all-embeddings", "--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler",
    "inverse_sqrt", "--warmup-updates", "50", "--max-tokens", "2000", "--no-epoch-checkpoints",
]


@pytest.fixture(scope="session")
def refine_ckpt(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("refine")
    proc = train(toy_data, str(save), REFINE_ARGS + ["--disable-validation"], max_update=250)
    return str(save / "checkpoint_last.pt"), proc.stdout + proc.stderr


def test_training_logs_every_term(refine_ckpt):
    _, log = refine_ckpt
    line = log_lines(log, "train")[-1]
    for key in ("nll_pass_0", "nll_pass_3", "length_loss", "length_acc", "nll_loss"):
        assert f"{key} " in line, line
    first = log_lines(log, "train_inner")[0]
    assert log_value(line, "nll_loss") < log_value(first, "nll_loss") / 4


def test_learns_toy_translation(toy_data, refine_ckpt):
    out = generate(toy_data, refine_ckpt[0], [*NAR, "--iter-decode-max-iter", "10"]).stdout
    assert len(parse_hypotheses(out)) == 60  # every test sentence, none dropped
    assert parse_bleu(out) > 90


def _steps(stdout):
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"^I-(\d+)\t(\d+)$", stdout, re.M)}


def test_adaptive_stops_early_and_force_runs_all(toy_data, refine_ckpt):
    adaptive = _steps(generate(toy_data, refine_ckpt[0], [*NAR, "--iter-decode-max-iter", "8", "--print-step"]).stdout)
    forced = _steps(generate(toy_data, refine_ckpt[0], [*NAR, "--iter-decode-max-iter", "8", "--print-step",
                                                        "--iter-decode-force-max-iter"]).stdout)
    assert len(adaptive) == len(forced) == 60
    assert all(s == 8 for s in forced.values())
    # converged sentences leave the batch as soon as their output stops changing
    assert sum(s < 8 for s in adaptive.values()) >= 50
    assert all(s >= 1 for s in adaptive.values())


def test_history_lines(toy_data, refine_ckpt):
    out = generate(toy_data, refine_ckpt[0], [*NAR, "--iter-decode-max-iter", "3", "--retain-iter-history",
                                              "--print-step", "--iter-decode-force-max-iter"]).stdout
    hyps = parse_hypotheses(out)
    for sid in hyps:
        lines = re.findall(rf"^E-{sid}_(\d+)\t(.*)$", out, re.M)
        assert [int(s) for s, _ in lines] == [0, 1, 2, 3]  # decoder 1 + 3 refinements
        assert lines[-1][1] == hyps[sid]  # the last iteration is the output


def test_length_beam(toy_data, refine_ckpt):
    out = generate(toy_data, refine_ckpt[0], [*NAR, "--iter-decode-with-beam", "3"]).stdout
    assert parse_bleu(out) > 90


def test_refine_decoding_rejects_other_models(toy_data, ar_teacher):
    proc = generate(toy_data, ar_teacher, ["--task", "nar_translation"], check=False)
    assert proc.returncode != 0
    assert "task nar_translation trains nar_refine models" in proc.stderr


def test_wrong_task_for_model(toy_data, tmp_path):
    args = [a if a != "nar_translation" else "translation" for a in REFINE_ARGS]
    proc = run([cli("fairseq-train"), toy_data, "--user-dir", USER_DIR, "--save-dir", str(tmp_path),
                "--max-update", "1", *args], check=False)
    assert proc.returncode != 0
    assert "needs --task nar_translation" in proc.stderr


def test_unknown_corruption_is_refused(toy_data, tmp_path):
    proc = run([cli("fairseq-train"), toy_data, "--user-dir", USER_DIR, "--save-dir", str(tmp_path),
                "--max-update", "1", *REFINE_ARGS, "--corruption", "swap,shuffle"], check=False)
    assert proc.returncode != 0
    assert "unknown corruption(s) ['shuffle']" in proc.stderr


def test_empty_source_line_is_refused(toy_data, tmp_path, refine_ckpt):
    raw = write_toy_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    lines = (raw / "test.src").read_text().splitlines()
    lines[2] = ""
    (raw / "test.src").write_text("\n".join(lines) + "\n")
    data = preprocess(raw, str(tmp_path / "bin"), ["--srcdict", f"{toy_data}/dict.src.txt"])
    proc = generate(data, refine_ckpt[0], NAR, check=False)
    assert proc.returncode != 0
    assert "empty source line(s) at sample id(s) [2]" in proc.stderr


def test_resume_continues_exactly(toy_data, tmp_path):
    """Training 40 updates straight == 20 updates, stop, resume from checkpoint_last.pt to 40."""
    args = REFINE_ARGS + ["--disable-validation", "--max-tokens", "500"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(toy_data, str(straight), args, max_update=40)
    train(toy_data, str(resumed), args, max_update=20)
    train(toy_data, str(resumed), args, max_update=40)
    a = torch.load(straight / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 40
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_refine_decoding_rejects_latent_models(toy_data, tmp_path):
    """--decoding refine on a LaNMT checkpoint: a clear message, not a crash inside the model."""
    train(toy_data, str(tmp_path), ["--task", "nar_translation", "--arch", "lanmt_tiny", "--criterion",
                                    "lanmt_elbo", "--share-all-embeddings", "--optimizer", "adam",
                                    "--lr", "1e-3", "--max-tokens", "500", "--disable-validation"],
          max_update=2)
    proc = generate(toy_data, str(tmp_path / "checkpoint_last.pt"), [*NAR, "--decoding", "refine"],
                    check=False)
    assert proc.returncode != 0
    assert "--decoding refine needs a refine_nat model" in proc.stderr


def test_stochastic_approximation_trains(toy_data, tmp_path):
    proc = train(toy_data, str(tmp_path), REFINE_ARGS + ["--latent-approximation", "stochastic",
                                                         "--disable-validation", "--max-tokens", "500"],
                 max_update=20)
    lines = log_lines(proc.stdout + proc.stderr, "train_inner")
    assert log_value(lines[-1], "nll_loss") < log_value(lines[0], "nll_loss")


def test_interactive_translation(toy_data, refine_ckpt):
    proc = run([cli("fairseq-interactive"), toy_data, "--user-dir", USER_DIR, *NAR, "--path",
                refine_ckpt[0], "--source-lang", "src", "--target-lang", "tgt"],
               input="w1 w2 w3\nw5 w7 w9 w11\n")
    assert parse_hypotheses(proc.stdout) == {0: "W1 W2 W3", 1: "W5 W7 W9 W11"}
