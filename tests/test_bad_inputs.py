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
from nar_refine.dictionaries import FINGERPRINT_KEY

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
    """A teacher without a dictionary record (nar_refine 0.2.0 or earlier) whose data-bin has
    other dictionaries (here: the en-de teacher pointed at src-tgt dictionaries with two
    symbols swapped, so sizes agree and only ids differ)."""
    other = tmp_path / "other-dict"
    other.mkdir()
    for side in ("src", "tgt"):
        lines = (Path(toy_data) / f"dict.{side}.txt").read_text().splitlines()
        lines[0], lines[1] = lines[1], lines[0]
        (other / f"dict.{side}.txt").write_text("\n".join(lines) + "\n")
    state = torch.load(ende_teacher, map_location="cpu", weights_only=False)
    state["cfg"]["task"].update(data=str(other), source_lang="src", target_lang="tgt")
    del state["task_state"][FINGERPRINT_KEY]  # a teacher written before the record
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


# -- the checkpoint's dictionaries, recorded when it was trained -------------------------------
def with_other_dictionaries(toy_data, folder, change):
    """A copy of the toy data-bin whose dict.*.txt lines are changed in place by ``change``."""
    shutil.copytree(toy_data, folder)
    for side in ("src", "tgt"):
        path = Path(folder) / f"dict.{side}.txt"
        lines = path.read_text().splitlines()
        change(lines)
        path.write_text("\n".join(lines) + "\n")
    return str(folder)


def swap_first_two(lines):
    lines[0], lines[1] = lines[1], lines[0]


def add_a_symbol(lines):
    lines.append("zzz 1")


def dictionary_size(toy_data):
    return len((Path(toy_data) / "dict.src.txt").read_text().splitlines()) + 4  # + specials


def test_data_bin_with_other_dictionaries(toy_data, refine_ckpt, tmp_path):
    """A second prepare.sh gives dictionaries of the same size but other symbols: refused, as
    one of another size is (instead of garbage, or a size-mismatch dump)."""
    n = dictionary_size(toy_data)
    for name, change, phrase in [
        ("swapped", swap_first_two, f"source dictionaries have the same size ({n}) but different "
                                    f"symbols; first difference at id 4"),
        ("bigger", add_a_symbol, f"source dictionary sizes differ: checkpoint {n}, data {n + 1}"),
    ]:
        data = with_other_dictionaries(toy_data, tmp_path / name, change)
        proc = generate(data, refine_ckpt, NAR, check=False)
        assert_user_error(proc, refine_ckpt, "trained with other dictionaries", phrase,
                          f"it was trained on {toy_data}")
        assert not parse_hypotheses(proc.stdout)


def test_interactive_and_python_api_check_the_dictionaries(toy_data, refine_ckpt, tmp_path):
    from nar_refine.errors import NARConfigError
    from nar_refine.hub import from_pretrained

    data = with_other_dictionaries(toy_data, tmp_path / "swapped", swap_first_two)
    proc = interactive(data, refine_ckpt, GOOD[0].encode() + b"\n")
    assert_user_error(proc, "trained with other dictionaries", "first difference at id 4")
    assert not parse_hypotheses(proc.stdout)
    with pytest.raises(NARConfigError, match="first difference at id 4"):
        from_pretrained(str(Path(refine_ckpt).parent), "checkpoint_last.pt", data_name_or_path=data)


def test_checkpoint_without_a_dictionary_record(toy_data, refine_ckpt, tmp_path):
    """nar_refine 0.2.0's checkpoints: a warning with the right dictionaries, one line (not
    fairseq's size-mismatch dump) with dictionaries of another size."""
    state = torch.load(refine_ckpt, map_location="cpu", weights_only=False)
    del state["task_state"][FINGERPRINT_KEY]
    old = str(tmp_path / "old.pt")
    torch.save(state, old)
    proc = generate(toy_data, old, NAR)
    assert "records no dictionaries (written by nar_refine 0.2.0 or earlier" in proc.stderr
    assert len(parse_hypotheses(proc.stdout)) == 60
    data = with_other_dictionaries(toy_data, tmp_path / "bigger", add_a_symbol)
    proc = generate(data, old, NAR, check=False)
    assert_user_error(proc, "its weights do not fit the dictionaries it is loaded with",
                      "size mismatch for")


def test_teacher_dictionaries_are_checked_by_its_record(toy_data, lanmt_ckpt, ar_teacher, tmp_path):
    """A teacher trained with the plugin records its dictionaries: it may move away from its
    data-bin; a record that differs is refused; without a record and a data-bin it is refused."""
    from nar_refine.dictionaries import symbols_digest

    search = [*NAR, "--decoding", "delta", "--latent-search-size", "2", "--teacher-path"]
    state = torch.load(ar_teacher, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = str(tmp_path / "moved-away")
    moved = str(tmp_path / "moved.pt")
    torch.save(state, moved)
    assert len(parse_hypotheses(generate(toy_data, lanmt_ckpt, [*search, moved]).stdout)) == 60

    record = state["task_state"][FINGERPRINT_KEY]["source"]
    record["symbols"][4], record["symbols"][5] = record["symbols"][5], record["symbols"][4]
    record["sha256"] = symbols_digest(record["symbols"])
    other = str(tmp_path / "other.pt")
    torch.save(state, other)
    proc = generate(toy_data, lanmt_ckpt, [*search, other], check=False)
    assert_user_error(proc, "does not share this task's dictionaries",
                      "same size", "first difference at id 4: teacher")

    del state["task_state"][FINGERPRINT_KEY]
    torch.save(state, other)
    proc = generate(toy_data, lanmt_ckpt, [*search, other], check=False)
    assert_user_error(proc, "moved-away is gone and the checkpoint records no dictionaries")


# -- decoding: bounded, visible, finite ----------------------------------------------------------
@pytest.fixture(scope="module")
def score_ckpt(toy_data, lanmt_ckpt, tmp_path_factory):
    """A score network on the LaNMT fixture (2 updates: only its decoding is tested)."""
    save = tmp_path_factory.mktemp("score")
    train(toy_data, str(save), [*NAR, "--arch", "score_net_tiny", "--criterion", "score_matching",
                                "--lanmt-path", lanmt_ckpt, *OPTIM], max_update=2)
    return str(save / "checkpoint_last.pt")


@pytest.mark.parametrize("family,args,cause", [
    ("score", ["--score-alpha", "1e30"], "the cause is --score-alpha 1e+30 (with --score-steps 1)"),
    ("lanmt", ["--decoding", "prior", "--latent-search-size", "3", "--latent-search-noise", "1e30"],
     "the cause is --latent-search-noise 1e+30"),
])
def test_non_finite_decoding_names_its_cause(toy_data, lanmt_ckpt, score_ckpt, family, args, cause):
    """Before: nan scores and <unk> text (score), or candidates silently dropped (noise)."""
    proc = generate(toy_data, score_ckpt if family == "score" else lanmt_ckpt, [*NAR, *args],
                    check=False)
    assert_user_error(proc, "decoding gave non-finite values (nan/inf)", cause)
    assert not parse_hypotheses(proc.stdout)


def test_decode_memory_is_planned(toy_data, lanmt_ckpt, refine_ckpt):
    """A batch whose candidates do not fit the budget is decoded in chunks of sentences (the
    same translations); a sentence that alone does not fit is refused with the fix."""
    search = [*NAR, "--decoding", "delta", "--latent-search-size", "8", "--latent-search-noise", "0"]
    whole = generate(toy_data, lanmt_ckpt, search)
    chunked = generate(toy_data, lanmt_ckpt, [*search, "--decode-memory-gb", "0.002"])
    assert "decoding it in chunks of" in chunked.stdout + chunked.stderr
    assert parse_hypotheses(chunked.stdout) == parse_hypotheses(whole.stdout)
    assert len(parse_hypotheses(whole.stdout)) == 60
    proc = generate(toy_data, lanmt_ckpt, [*NAR, "--latent-search-size", "5000",
                                           "--decode-memory-gb", "0.01"], check=False)
    assert_user_error(proc, "--latent-search-size 5000: one sentence of", "lower --latent-search-size")
    proc = generate(toy_data, refine_ckpt, [*NAR, "--iter-decode-with-beam", "1000",
                                            "--decode-memory-gb", "0.05"], check=False)
    assert_user_error(proc, "--iter-decode-with-beam 1000: one sentence of",
                      "lower --iter-decode-with-beam")


def test_long_batch_shows_progress(toy_data, refine_ckpt):
    cmd = [cli("fairseq-generate"), toy_data, "--user-dir", USER_DIR, "--path", refine_ckpt,
           "--gen-subset", "test", "--batch-size", "60", *NAR, "--iter-decode-max-iter", "20",
           "--iter-decode-force-max-iter"]
    proc = run(cmd, env={"NAR_REFINE_PROGRESS_SECONDS": "0"})
    progress = [l for l in (proc.stdout + proc.stderr).splitlines() if "decoding a batch of" in l]
    assert any("refinement steps so far (at most 20)" in l for l in progress), progress


@pytest.mark.parametrize("flag", ["--fp16", "--bf16"])
def test_half_precision_decoding_on_a_cpu(toy_data, refine_ckpt, flag):
    """--bf16 is ignored by fairseq-generate 0.12; --fp16 on a CPU is slower than fp32."""
    proc = generate(toy_data, refine_ckpt, [*NAR, flag], check=False)
    assert_user_error(proc, flag)
    assert not parse_hypotheses(proc.stdout)


# -- text in, text checked ---------------------------------------------------------------------
def test_interactive_warns_when_most_tokens_are_unknown(toy_data, refine_ckpt):
    """Raw text given to a data-bin of subwords (a missing --bpe) becomes <unk>s."""
    proc = interactive(toy_data, refine_ckpt, b"w1 w2 w3\nA man rides a bike .\nw1 foo w2\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("nar_refine:")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("nar_refine: warning: input line 2 (S-1): 6 of its 6 tokens "
                                  "are not in the dictionary (<unk>)") and "--bpe" in warnings[0]
    assert sorted(parse_hypotheses(proc.stdout)) == [0, 1, 2]


def test_python_api_refuses_what_is_not_text(toy_data, refine_ckpt):
    from nar_refine.errors import NARConfigError
    from nar_refine.hub import from_pretrained

    nat = from_pretrained(str(Path(refine_ckpt).parent), "checkpoint_last.pt",
                          data_name_or_path=toy_data)
    for sentences, phrase in [
        ([GOOD[0], b"w1 w2"], "sentence 1 (0-based) of this call is of type bytes, not str"),
        ([None], "sentence 0 (0-based) of this call is of type NoneType"),
        (["w1 \udcff w2"], "sentence 0 (0-based) of this call is not valid text"),
        (5, "translate() wants a str or a list of str, got int"),
    ]:
        with pytest.raises(NARConfigError) as err:
            nat.translate(sentences)
        assert phrase in str(err.value)
    with pytest.raises(NARConfigError, match="bad value for decoding option iter_decode_max_iter"):
        nat.translate([GOOD[0]], iter_decode_max_iter="abc")
    assert nat.translate([GOOD[0]], iter_decode_max_iter="4") == [GOOD[0].upper()]


SPM_TOOL = Path(__file__).resolve().parents[1] / "examples" / "multi30k" / "spm_tool.py"


def test_spm_tool_and_prepare_refuse_text_that_is_not_utf8(tmp_path):
    import sys

    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("a man rides a bike .\ntwo dogs play in the snow .\n" * 20)
    bad.write_bytes(b"a man\nrides \xff a bike\n")
    spm = [sys.executable, str(SPM_TOOL)]
    cases = [
        (["check", str(good), str(bad)], None, f"{bad} line 2 is not UTF-8 (byte 0xff at column 7)"),
        (["train", "--input", f"{good},{bad}", "--model-prefix", str(tmp_path / "m"),
          "--vocab-size", "20"], None, f"{bad} line 2 is not UTF-8"),
    ]
    for args, stdin, phrase in cases:
        proc = subprocess.run(spm + args, capture_output=True, input=stdin)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and err.count("spm_tool.py: error:") == 1, err
        assert phrase in err and "Traceback" not in err, err
    run(spm + ["train", "--input", str(good), "--model-prefix", str(tmp_path / "m"),
               "--vocab-size", "30"])
    proc = subprocess.run(spm + ["encode", "--model", str(tmp_path / "m.model")],
                          input=bad.read_bytes(), capture_output=True)
    assert proc.returncode == 2, proc.stderr
    assert "spm_tool.py: error: standard input line 2 is not UTF-8" in proc.stderr.decode()

    # prepare.sh checks the raw text before it copies it
    data = tmp_path / "multi30k"
    data.mkdir()
    for name in ("train", "val", "test_2016_flickr"):
        for lang in ("en", "de"):
            shutil.copy(good, data / f"{name}.{lang}")
    shutil.copy(bad, data / "val.de")
    prepare = SPM_TOOL.parent / "prepare.sh"
    env = dict(os.environ, DATA=str(data), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(prepare), "--smoke", str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"spm_tool.py: error: {data / 'val.de'} line 2 is not UTF-8" in proc.stderr
