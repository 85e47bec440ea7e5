"""The Multi30k recipe's data tooling on a small corpus of its own: prepare.sh with both subword
models (sentencepiece, fastBPE on Moses tokens) through fairseq-preprocess, and evaluate.py
undoing each segmentation back to the raw references (the CI smoke pipeline covers the training
steps with sentencepiece only).
"""

import json
import random
import sys
from pathlib import Path

import pytest

from helpers import BIN, REPO, run

EXAMPLE = REPO / "examples" / "multi30k"
WORDS = ["ein", "Mann", "eine", "Frau", "Hund", "läuft", "sitzt", "auf", "dem", "großen", "Straße",
         "Kinder", "spielen", "im", "Park", "rote", "Jacke", "mit", "Ball", "Wasser"]


def sentence(rng):
    words = [rng.choice(WORDS)]
    while len(words) < rng.randint(3, 9):  # no word twice in a row: the papers' BLEU dedups those
        words.append(rng.choice([w for w in WORDS if w != words[-1]]))
    cut = rng.randint(1, len(words) - 1)
    # punctuation attached to words and quotes, as in raw text, so that tokenising matters
    text = " ".join(words[:cut]) + ", " + " ".join(words[cut:]) + rng.choice([".", "!", "?", "."])
    return text[0].upper() + text[1:] if rng.random() < 0.5 else f'"{text}"'


@pytest.fixture(scope="module")
def raw_multi30k(tmp_path_factory):
    """Files named as in ../shared/data/multi30k (train/val/test_2016_flickr .en/.de)."""
    rng = random.Random(3)
    folder = tmp_path_factory.mktemp("multi30k_like")
    for name, n in (("train", 400), ("val", 40), ("test_2016_flickr", 30)):
        for lang in ("en", "de"):
            (folder / f"{name}.{lang}").write_text("\n".join(sentence(rng) for _ in range(n)) + "\n",
                                                   encoding="utf-8")
    return folder


def prepare(raw, work, bpe, merges=None, check=True):
    env = {"DATA": str(raw), "PATH": f"{BIN}:/usr/bin:/bin"}
    if merges:
        env["BPE_MERGES"] = merges
    return run(["bash", EXAMPLE / "prepare.sh", "--smoke", "--bpe", bpe, work], env=env, timeout=600,
               check=check)


def fake_generate_output(bpe_file, path, shuffle_seed=0):
    """fairseq-generate-style H- lines whose hypotheses are the segmented references, out of order."""
    lines = bpe_file.read_text(encoding="utf-8").splitlines()
    order = list(range(len(lines)))
    random.Random(shuffle_seed).shuffle(order)
    path.write_text("".join(f"S-{i}\tx\nH-{i}\t-0.5\t{lines[i]}\n" for i in order), encoding="utf-8")
    return path


def evaluate(gen, ref, bpe, out_json):
    proc = run([sys.executable, EXAMPLE / "evaluate.py", gen, "--ref", ref, "--bpe", bpe,
                "--json", out_json, "--name", bpe])
    return proc, json.loads(Path(out_json).read_text())


@pytest.mark.parametrize("bpe,merges", [("sentencepiece", None), ("fastbpe", "40"), ("fastbpe", "1000")])
def test_prepare_and_evaluate_round_trip(raw_multi30k, tmp_path, bpe, merges):
    """fastBPE with 40 merges splits words; with 1000 it runs out of pairs on this corpus (the
    case where fastBPE repeats merges and would abort unless prepare.sh drops the repeats)."""
    work = tmp_path / "work"
    proc = prepare(raw_multi30k, work, bpe, merges)
    assert "prepare done" in proc.stdout
    assert (work / "bpe_type").read_text().strip() == bpe
    data_bin = work / "data-bin"
    # one joined dictionary, every split binarised
    assert (data_bin / "dict.en.txt").read_text() == (data_bin / "dict.de.txt").read_text()
    for split in ("train", "valid", "test"):
        assert (data_bin / f"{split}.en-de.de.bin").stat().st_size > 0
    test_bpe = work / "bpe" / "test.de"
    segmented = test_bpe.read_text(encoding="utf-8")
    if bpe == "fastbpe":
        assert " , " in (work / "tok" / "test.de").read_text(encoding="utf-8")  # Moses-tokenised
        assert ("@@ " in segmented) == (merges == "40")
        pairs = [tuple(line.split()[:2]) for line in (work / "fastbpe" / "codes").read_text().splitlines()]
        assert len(pairs) == len(set(pairs)) and (len(pairs) == 40) == (merges == "40")
    else:
        assert "\u2581" in segmented
    # evaluate.py undoes the segmentation (and Moses tokenisation): the references score 100
    ref = work / "raw" / "test.de"
    gen = fake_generate_output(test_bpe, tmp_path / "gen.out")
    proc, scores = evaluate(gen, ref, bpe, tmp_path / "scores.json")
    assert scores["sentences"] == 30
    assert scores["sacrebleu_cased_13a"] == 100.0, proc.stdout
    assert scores["papers_lowercased_dedup_13a"] == 100.0
    assert "tok:13a" in scores["signature_cased"] and "lc" in scores["signature_papers"]
    # a hypothesis that differs from the reference must cost BLEU (the test can fail)
    lines = gen.read_text(encoding="utf-8").splitlines()
    h = next(i for i, l in enumerate(lines) if l.startswith("H-"))
    idx, score, _ = lines[h].split("\t")
    lines[h] = f"{idx}\t{score}\tganz anders"
    gen.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, worse = evaluate(gen, ref, bpe, tmp_path / "worse.json")
    assert worse["sacrebleu_cased_13a"] < 100.0


def test_prepare_refuses_to_mix_subword_models(raw_multi30k, tmp_path):
    work = tmp_path / "work"
    prepare(raw_multi30k, work, "sentencepiece")
    proc = prepare(raw_multi30k, work, "fastbpe", check=False)
    assert proc.returncode == 2 and "prepared with --bpe sentencepiece" in proc.stderr


def test_evaluate_refuses_missing_hypotheses(raw_multi30k, tmp_path):
    ref = raw_multi30k / "test_2016_flickr.de"
    gen = tmp_path / "gen.out"
    gen.write_text("H-0\t-0.1\tein Mann\n", encoding="utf-8")
    proc = run([sys.executable, EXAMPLE / "evaluate.py", gen, "--ref", ref, "--bpe", "none"], check=False)
    assert proc.returncode != 0 and "1 hypotheses for 30 references" in proc.stderr


def test_papers_dedup_is_on_words():
    """A word repeated right after itself goes; a subword repeated inside a word stays."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_m30k", EXAMPLE / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fast = mod.Decoder("fastbpe", "de")
    assert fast("W@@ a@@ s@@ s@@ er , Mann Mann .", remove_duplicates=True) == "Wasser, Mann."
    assert fast("W@@ a@@ s@@ s@@ er , Mann Mann .") == "Wasser, Mann Mann."
    spm = mod.Decoder("sentencepiece", "de")
    assert spm("\u2581Wa s s er \u2581Mann \u2581Mann", remove_duplicates=True) == "Wasser Mann"
    assert spm("\u2581Wa s s er \u2581Mann \u2581Mann") == "Wasser Mann Mann"


def test_gpu_profile_budgets_dry_run(raw_multi30k, tmp_path):
    """run_pipeline.sh --gpu: every training step gets its wall-time budget (GPU_BUDGETS_MIN
    overrides one); --smoke --gpu keeps the smoke settings."""
    env = {"DATA": str(raw_multi30k), "PATH": f"{BIN}:/usr/bin:/bin", "DRY_RUN": "1",
           "GPU_BUDGETS_MIN": "lanmt=3"}
    out = run(["bash", EXAMPLE / "run_pipeline.sh", "--gpu", tmp_path / "w"], env=env).stdout
    steps = {line.split("] ", 1)[1].split(":", 1)[0]: line for line in out.splitlines() if line.startswith("===")}
    assert "STOP_HOURS=0.04 MAX_UPDATE=3000" in steps["teacher"]
    assert "STOP_HOURS=0.02 " in steps["train_cmlm"] and "STOP_HOURS=0.05 " in steps["train_lanmt"]
    assert "STOP_HOURS=0.01 " in steps["train_energy_net"] and "STOP_HOURS" not in steps["distil"]
    assert all("--gpu" in line for line in steps.values()) and "benchmark" in steps
    smoke = run(["bash", EXAMPLE / "run_pipeline.sh", "--gpu", "--smoke", tmp_path / "w"], env=env).stdout
    assert "STOP_HOURS" not in smoke and not (tmp_path / "w" / "data-bin").exists()


@pytest.mark.parametrize("gpus, visible, pinned", [
    (None, None, "GPUS=1 CUDA_VISIBLE_DEVICES=0"),         # a multi-GPU node: still one GPU
    (None, "3,5,7", "GPUS=1 CUDA_VISIBLE_DEVICES=3"),      # the first of those the user gave
    ("2", None, "GPUS=2 CUDA_VISIBLE_DEVICES=0,1"),
    ("2", "3,5,7", "GPUS=2 CUDA_VISIBLE_DEVICES=3,5"),
])
def test_gpu_profile_is_pinned(raw_multi30k, tmp_path, gpus, visible, pinned):
    """run_pipeline.sh --gpu trains on one GPU (GPUS=N on N): fairseq-train would otherwise use
    every visible GPU. Every step inherits the pin, and a step run alone pins the same way."""
    env = {"DATA": str(raw_multi30k), "PATH": f"{BIN}:/usr/bin:/bin", "DRY_RUN": "1",
           **({"GPUS": gpus} if gpus else {}), **({"CUDA_VISIBLE_DEVICES": visible} if visible else {})}
    out = run(["bash", EXAMPLE / "run_pipeline.sh", "--gpu", tmp_path / "w"], env=env).stdout
    assert f"[--gpu] {pinned}\n" in out
    assert "[--gpu]" not in run(["bash", EXAMPLE / "run_pipeline.sh", tmp_path / "w"], env=env).stdout
    # common.sh, as every step sources it (no CUDA here: no --fp16 / --distributed-world-size)
    show = 'source "$1" --gpu --smoke "$2"; echo "GPUS=$GPUS CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'
    step = run(["bash", "-c", show, "_", EXAMPLE / "common.sh", tmp_path / "w"], env=env)
    assert step.stdout.splitlines()[-1] == pinned


@pytest.mark.parametrize("gpus, visible, message", [
    ("0", None, "GPUS=0: give the number of GPUs"),
    ("two", None, "GPUS=two: give the number of GPUs"),
    ("3", "4,6", "GPUS=3, but CUDA_VISIBLE_DEVICES='4,6' names 2 GPU(s)"),
])
def test_gpu_profile_bad_gpus(raw_multi30k, tmp_path, gpus, visible, message):
    env = {"DATA": str(raw_multi30k), "PATH": f"{BIN}:/usr/bin:/bin", "DRY_RUN": "1", "GPUS": gpus,
           **({"CUDA_VISIBLE_DEVICES": visible} if visible else {})}
    proc = run(["bash", EXAMPLE / "run_pipeline.sh", "--gpu", tmp_path / "w"], env=env, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "===" not in proc.stdout


def test_gpu_profile_plumbing_on_cpu(raw_multi30k, tmp_path):
    """run_pipeline.sh --smoke --gpu on a machine without CUDA: the GPU profile's commands run on
    the CPU without --fp16 and say so (teacher -> distillation -> CMLM -> LaNMT, evaluated)."""
    # 30 updates per model: the plumbing is under test here (CI's smoke pipeline trains 100)
    env = {"DATA": str(raw_multi30k), "PATH": f"{BIN}:/usr/bin:/bin", "NAT_MODELS": "lanmt",
           "BENCHMARK": "0", "MAX_UPDATE": "30"}
    work = tmp_path / "w"
    proc = run(["bash", EXAMPLE / "run_pipeline.sh", "--smoke", "--gpu", work], env=env, timeout=1500)
    assert "[--gpu] no CUDA device here" in proc.stderr
    for name in ("teacher", "cmlm", "lanmt"):
        done = (work / "checkpoints" / name / "DONE").read_text()
        assert "--fp16" not in done and "num_updates" in done, (name, done)
    summary = (work / "results" / "summary.tsv").read_text().splitlines()
    assert {line.split("\t")[0] for line in summary} == {"teacher", "cmlm", "lanmt"}


def test_benchmark_sh_writes_its_own_folder(raw_multi30k, tmp_path):
    """benchmark.sh writes WORK/benchmark, with --gpu WORK/benchmark-gpu, never the committed
    results/ (here every checkpoint is missing: the rows say so, nothing is decoded)."""
    work = tmp_path / "w"
    prepare(raw_multi30k, work, "sentencepiece")
    env = {"DATA": str(raw_multi30k), "PATH": f"{BIN}:/usr/bin:/bin", "BLIND": "none"}
    committed = EXAMPLE / "results" / "results.json"
    before = committed.read_bytes()
    try:
        for flags, folder in (([], "benchmark"), (["--gpu"], "benchmark-gpu")):
            run(["bash", EXAMPLE / "benchmark.sh", "--smoke", *flags, work, "--", "--systems", "ar.*"], env=env)
            res = json.loads((work / folder / "results.json").read_text())
            assert [r["status"].split(":")[0] for r in res["systems"]] == ["missing checkpoint"] * 2
            assert committed.read_bytes() == before
    finally:  # the old default wrote there: put the committed table back
        if committed.read_bytes() != before:
            committed.write_bytes(before)


def test_run_results_writes_its_own_log(tmp_path):
    """The documented `run_results.sh &` on a fresh clone: no WORK/logs/ yet, no redirection; the
    script makes the folder and logs there (here its first step fails: no data)."""
    work = tmp_path / "fresh"
    env = {"WORK": str(work), "DATA": str(tmp_path / "no_data"), "PATH": f"{BIN}:/usr/bin:/bin"}
    proc = run(["bash", EXAMPLE / "run_results.sh"], env=env, check=False)
    assert proc.returncode != 0 and f"log in {work}/logs/results.log" in proc.stdout
    assert "Multi30k not found" in (work / "logs" / "results.log").read_text()
    assert "run_results.sh &" in (REPO / "README.md").read_text()
