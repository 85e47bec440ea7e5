"""Bad inputs and wrong pairings through the real CLIs: one clear line each (issue 11).

A plugin usage error exits 2 with exactly one ``nar_refine: error: ...`` line on stderr and no
traceback, and writes no checkpoint or hypothesis (``helpers.assert_user_error``). Lines given
to ``fairseq-interactive`` that cannot be translated (empty, not UTF-8, longer than the model's
source positions) are reported one line each and answered with an empty hypothesis, and the
run goes on. docs/bad_inputs.md lists every case with the test that checks it.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import (AR_TEACHER_ARGS, LANMT, NAR, OPTIM, REFINE, USER_DIR, assert_user_error, cli, generate,
                     parse_hypotheses, preprocess, run, train, write_toy_corpus)

SOURCE_LIMIT = 16  # --max-source-positions of the refine_nat fixture: 15 words + </s>
LONG_LINE = " ".join(f"w{i % 24}" for i in range(20))  # 20 words + </s> = 21 tokens


@pytest.fixture(scope="module")
def refine_ckpt(toy_data, tmp_path_factory):
    """refine_nat that translates the toy task (40 updates: every test sentence exact), with
    a small source limit; trained as a plain single process (no WORLD_SIZE)."""
    save = tmp_path_factory.mktemp("refine")
    train(toy_data, str(save), [*REFINE, "--max-source-positions", str(SOURCE_LIMIT),
                                "--max-target-positions", str(SOURCE_LIMIT)], max_update=40)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def lanmt_ckpt(toy_data, tmp_path_factory):
    """A LaNMT checkpoint (its quality does not matter here)."""
    save = tmp_path_factory.mktemp("lanmt")
    train(toy_data, str(save), LANMT, max_update=10)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def ende_teacher(toy_data, tmp_path_factory):
    """An autoregressive teacher trained on the toy corpus binarized as en-de, so with other
    language codes (and dict.en.txt / dict.de.txt) than the task's src-tgt."""
    root = tmp_path_factory.mktemp("ende")
    raw = Path(toy_data).parent / "raw"
    for split in ("train", "valid", "test"):
        shutil.copy(raw / f"{split}.src", root / f"{split}.en")
        shutil.copy(raw / f"{split}.tgt", root / f"{split}.de")
    data = str(root / "bin")
    run([cli("fairseq-preprocess"), "--source-lang", "en", "--target-lang", "de", "--trainpref",
         root / "train", "--validpref", root / "valid", "--destdir", data,
         "--joined-dictionary", "--workers", "1"])
    train(data, str(root / "ckpt"), [*AR_TEACHER_ARGS, "--disable-validation"], max_update=10)
    return str(root / "ckpt" / "checkpoint_last.pt")


def fairseq_train(data, save_dir, args, env=None):
    return run([cli("fairseq-train"), data, "--user-dir", USER_DIR, "--save-dir", save_dir,
                "--max-update", "2", "--num-workers", "0", "--cpu", *args], check=False, env=env)


def interactive(data, path, stdin, args=()):
    """fairseq-interactive on bytes from stdin (so a line may be invalid UTF-8)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [cli("fairseq-interactive"), data, "--user-dir", USER_DIR, "--path", path, *NAR,
           "-s", "src", "-t", "tgt", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=600)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def no_checkpoint(save_dir):
    return not list(Path(save_dir).glob("*.pt"))


# -- wrong task / model / decoding pairings -------------------------------------------------------
def test_ar_arch_under_nar_translation(toy_data, tmp_path):
    args = [*NAR, *AR_TEACHER_ARGS[2:]]  # fairseq's transformer, task nar_translation
    proc = fairseq_train(toy_data, tmp_path, args)
    assert_user_error(proc, "task nar_translation trains nar_refine models", "TransformerModel",
                      "--task translation")
    assert no_checkpoint(tmp_path)


def test_refine_nat_under_translation_task(toy_data, tmp_path):
    args = [a if a != "nar_translation" else "translation" for a in REFINE]
    proc = fairseq_train(toy_data, tmp_path, args)
    assert_user_error(proc, "needs --task nar_translation")
    assert no_checkpoint(tmp_path)


@pytest.mark.parametrize("extra,phrase", [
    (["--refine-passes", "1"], "--refine-passes must be >= 2"),
    (["--lvm-alpha", "1.5"], "--lvm-alpha must lie in [0, 1]"),
    (["--corruption", "swap,shuffle"], "unknown corruption"),
])
def test_bad_refine_training_options(toy_data, tmp_path, extra, phrase):
    proc = fairseq_train(toy_data, tmp_path, [*REFINE, *extra])
    assert_user_error(proc, phrase)
    assert no_checkpoint(tmp_path)


def test_refine_decoding_on_lanmt(toy_data, lanmt_ckpt):
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "refine"], check=False)
    assert_user_error(proc, "--decoding refine needs a refine_nat model", "LaNMTModel")
    assert not parse_hypotheses(proc.stdout)


def test_delta_decoding_on_refine_nat(toy_data, refine_ckpt):
    proc = generate(toy_data, refine_ckpt, [*NAR, "--decoding", "delta"], check=False)
    assert_user_error(proc, "--decoding delta needs a lanmt model", "RefineNATModel")
    assert not parse_hypotheses(proc.stdout)


def test_score_decoding_on_lanmt(toy_data, lanmt_ckpt):
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "score"], check=False)
    assert_user_error(proc, "--decoding score needs a score_net or energy_net checkpoint")


def test_score_net_without_lanmt_path(toy_data, tmp_path):
    proc = fairseq_train(toy_data, tmp_path, [*NAR, "--arch", "score_net_tiny", "--criterion",
                                              "score_matching", *OPTIM])
    assert_user_error(proc, "need a trained LaNMT", "--lanmt-path")
    assert no_checkpoint(tmp_path)


def test_ensemble_of_checkpoints(toy_data, refine_ckpt):
    proc = generate(toy_data, f"{refine_ckpt}:{refine_ckpt}", NAR, check=False)
    assert_user_error(proc, "take exactly one model (no ensembles)")


def test_prefix_decoding(toy_data, refine_ckpt):
    proc = generate(toy_data, refine_ckpt, [*NAR, "--prefix-size", "1"], check=False)
    assert_user_error(proc, "do not support prefixes or constraints")
    assert not parse_hypotheses(proc.stdout)


def test_eval_bleu_args_unknown_key(toy_data, tmp_path):
    proc = fairseq_train(toy_data, tmp_path, [*REFINE, "--eval-bleu", "--eval-bleu-args",
                                              '{"beam": 5}'])
    assert_user_error(proc, "--eval-bleu-args: unknown key(s) ['beam']", "iter_decode_max_iter")
    assert no_checkpoint(tmp_path)


# -- files ------------------------------------------------------------------------------------
def test_missing_path(toy_data, tmp_path):
    proc = generate(toy_data, str(tmp_path / "nowhere.pt"), NAR, check=False)
    assert_user_error(proc, "nowhere.pt", "no such checkpoint file")


def test_text_file_as_path(toy_data, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    proc = generate(toy_data, str(text), NAR, check=False)
    assert_user_error(proc, "notes.txt is not a PyTorch checkpoint file")


def test_pytorch_file_that_is_not_a_checkpoint(toy_data, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    proc = generate(toy_data, str(path), NAR, check=False)
    assert_user_error(proc, "weights.pt is a PyTorch file but not a fairseq checkpoint")


def test_non_autoregressive_teacher(toy_data, lanmt_ckpt, refine_ckpt):
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "delta", "--latent-search-size", "2",
                                           "--teacher-path", refine_ckpt], check=False)
    assert_user_error(proc, "holds a non-autoregressive RefineNATModel")


def test_missing_teacher(toy_data, lanmt_ckpt, tmp_path):
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "delta", "--latent-search-size", "2",
                                           "--teacher-path", str(tmp_path / "gone.pt")], check=False)
    assert_user_error(proc, "--teacher-path", "gone.pt: no such checkpoint file")
    assert not parse_hypotheses(proc.stdout)


def test_teacher_with_other_languages(toy_data, lanmt_ckpt, ende_teacher):
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "delta", "--latent-search-size", "2",
                                           "--teacher-path", ende_teacher], check=False)
    line = assert_user_error(proc, "--teacher-path", "do not match this task's")
    # fairseq does not store the inferred language pair in the checkpoint: the plugin infers
    # it from the teacher's data-bin, so the message names both pairs
    assert "translates en-de but this task is src-tgt" in line
    assert not parse_hypotheses(proc.stdout)


def test_teacher_with_other_dictionaries(toy_data, lanmt_ckpt, ende_teacher, tmp_path):
    """A teacher whose data-bin has other dictionaries (here: the en-de teacher pointed at
    src-tgt dictionaries with two symbols swapped, so sizes agree and only ids differ)."""
    other = tmp_path / "other-dict"
    other.mkdir()
    for side in ("src", "tgt"):
        lines = (Path(toy_data) / f"dict.{side}.txt").read_text().splitlines()
        lines[0], lines[1] = lines[1], lines[0]
        (other / f"dict.{side}.txt").write_text("\n".join(lines) + "\n")
    state = torch.load(ende_teacher, map_location="cpu", weights_only=False)
    state["cfg"]["task"].update(data=str(other), source_lang="src", target_lang="tgt")
    teacher = tmp_path / "teacher_other_dict.pt"
    torch.save(state, teacher)
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "delta", "--latent-search-size", "2",
                                           "--teacher-path", str(teacher)], check=False)
    assert_user_error(proc, "does not share this task's dictionaries", "first difference at id 4")


# -- source lines ---------------------------------------------------------------------------
def test_empty_source_line_in_generate(toy_data, refine_ckpt, tmp_path):
    """A dataset split is refused with the ids to fix (no hypothesis is printed)."""
    raw = write_toy_corpus(tmp_path / "raw", n_train=20, n_valid=5, n_test=5)
    lines = (raw / "test.src").read_text().splitlines()
    lines[2] = ""
    (raw / "test.src").write_text("\n".join(lines) + "\n")
    data = preprocess(raw, str(tmp_path / "bin"), ["--srcdict", f"{toy_data}/dict.src.txt"])
    proc = generate(data, refine_ckpt, NAR, check=False)
    assert_user_error(proc, "empty source line(s) at sample id(s) [2]")
    assert not parse_hypotheses(proc.stdout)


GOOD = ["w1 w2 w3", "w5 w6 w7 w8", "w9 w10 w11", "w12 w13"]


def test_interactive_answers_bad_lines_and_goes_on(toy_data, refine_ckpt):
    """Empty, non-UTF-8 and over-long lines between good ones, in mixed batches of 4: one
    message each naming the line, an empty hypothesis each, the good lines translated."""
    lines = [GOOD[0].encode(), b"", GOOD[1].encode(), b"w4 \xff w5", GOOD[2].encode(),
             LONG_LINE.encode(), GOOD[3].encode()]
    proc = interactive(toy_data, refine_ckpt, b"\n".join(lines) + b"\n",
                       ["--buffer-size", "4", "--batch-size", "4"])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("nar_refine:")]
    assert len(errors) == 3, errors
    assert any("input line 2 (S-1) is empty" in l for l in errors), errors
    assert any("standard input line 4 is not UTF-8 (byte 0xff at column 4)" in l for l in errors)
    assert any(f"input line 6 (S-5) has 21 tokens (with </s>), more than the model's limit of "
               f"{SOURCE_LIMIT}" in l and "--truncate-long-inputs" in l for l in errors), errors
    assert all(l.startswith("nar_refine: error:") for l in errors)
    hypos = parse_hypotheses(proc.stdout)
    assert sorted(hypos) == list(range(7))  # every line answered, in order
    assert [hypos[i] for i in (0, 2, 4, 6)] == [g.upper() for g in GOOD]
    assert [hypos[i] for i in (1, 3, 5)] == ["", "", ""]


def test_interactive_truncate_long_inputs(toy_data, refine_ckpt):
    """--truncate-long-inputs: the long line is cut to the limit with a warning and translated;
    one line per batch (fairseq-interactive's default), so an empty line is a batch alone."""
    stdin = "\n".join([GOOD[0], LONG_LINE, "", GOOD[1]]) + "\n"
    proc = interactive(toy_data, refine_ckpt, stdin.encode(), ["--truncate-long-inputs"])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    messages = [l for l in proc.stderr.splitlines() if l.startswith("nar_refine:")]
    assert len(messages) == 2, messages
    assert messages[0].startswith("nar_refine: warning: input line 2 (S-1) has 21 tokens")
    assert f"translating its first {SOURCE_LIMIT - 1} tokens" in messages[0]
    assert messages[1].startswith("nar_refine: error: input line 3 (S-2) is empty")
    hypos = parse_hypotheses(proc.stdout)
    cut = LONG_LINE.split()[:SOURCE_LIMIT - 1]
    assert hypos == {0: GOOD[0].upper(), 1: " ".join(cut).upper(), 2: "", 3: GOOD[1].upper()}


def test_python_api_answers_bad_lines(toy_data, refine_ckpt, capfd):
    """The Python API reads lines as fairseq-interactive does: same answers, same messages."""
    from nar_refine.hub import from_pretrained

    nat = from_pretrained(str(Path(refine_ckpt).parent), "checkpoint_last.pt",
                          data_name_or_path=toy_data)
    capfd.readouterr()
    out = nat.translate([GOOD[0], "", LONG_LINE, GOOD[1]])
    assert out == [GOOD[0].upper(), "", "", GOOD[1].upper()]
    err = [l for l in capfd.readouterr().err.splitlines() if l.startswith("nar_refine:")]
    assert err == [
        "nar_refine: error: sentence 1 (0-based) of this call is empty: a non-autoregressive "
        "model cannot predict a length from nothing; its hypothesis is left empty",
        f"nar_refine: error: sentence 2 (0-based) of this call has 21 tokens (with </s>), more "
        f"than the model's limit of {SOURCE_LIMIT}; not translated (its hypothesis is left "
        f"empty): split the line, or pass --truncate-long-inputs to translate its first "
        f"{SOURCE_LIMIT - 1} tokens",
    ]


# -- launch ---------------------------------------------------------------------------------
def test_torchrun_world_size_with_single_process_training(toy_data, tmp_path):
    """What `torchrun --nproc_per_node 2 fairseq-train ... --cpu` gives each process."""
    proc = fairseq_train(toy_data, tmp_path, REFINE,
                         env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert_user_error(proc, "WORLD_SIZE=2", "overwrite each other's checkpoints",
                      "--cpu --distributed-world-size 2 --distributed-backend gloo")
    assert no_checkpoint(tmp_path)


def test_more_processes_than_gpus(toy_data, tmp_path):
    """fairseq-train starts one process per GPU; on CPUs a launcher must start them."""
    proc = fairseq_train(toy_data, tmp_path, REFINE + ["--cpu", "--distributed-world-size", "2",
                                                       "--distributed-backend", "gloo"])
    assert_user_error(proc, "--distributed-world-size 2", "found 0 GPU(s)",
                      "torchrun --nproc_per_node 2 $(which fairseq-train)")
    assert no_checkpoint(tmp_path)


def test_nccl_backend_on_cpus(toy_data, tmp_path):
    """One hand-started process of two with fairseq's default backend (nccl) and --cpu: refused
    before it waits for the other process."""
    proc = fairseq_train(toy_data, tmp_path, REFINE + [
        "--cpu", "--distributed-world-size", "2", "--distributed-rank", "0", "--distributed-no-spawn",
        "--distributed-init-method", "tcp://127.0.0.1:1"])
    assert_user_error(proc, "--distributed-backend nccl (the default) needs GPUs",
                      "--distributed-backend gloo")
    assert no_checkpoint(tmp_path)
