"""scripts/benchmark.py end to end, on tiny models trained here on the toy corpus.

Every system of the benchmark gets a checkpoint in a pipeline-style work dir
(WORK/checkpoints/NAME/checkpoint_best.pt) from a few dozen updates; the benchmark then runs in
one process on a dozen test sentences and must fill every row, write results.md/json and the
three plots. The models are untrained (scores near 0): this checks the plumbing, not the numbers.
"""

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers import REPO, run, train

SCRIPT = str(REPO / "scripts" / "benchmark.py")
TINY = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
        "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
        "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
OPTIM = ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "10", "--max-tokens", "2000", "--no-epoch-checkpoints"]
NAR = ["--task", "nar_translation", "--share-all-embeddings"]
UPDATES = 30


def absolute_paths(data):
    """Every word of every string in a JSON document that is an absolute path."""
    if isinstance(data, dict):
        return [p for v in data.values() for p in absolute_paths(v)]
    if isinstance(data, list):
        return [p for v in data for p in absolute_paths(v)]
    words = re.split(r"[\s,=`'\"]+", data) if isinstance(data, str) else []
    return [w for w in words if w.startswith(os.sep) and w != os.sep]  # "14.8 / 6.8 ms" is no path


def toy_args(toy_data, work):
    raw = Path(toy_data).parent / "raw"
    return [sys.executable, SCRIPT, "--work", str(work), "--data-bin", toy_data,
            "--ref", str(raw / "test.tgt"), "--bpe", "none", "--source-lang", "src", "--target-lang", "tgt",
            "--out", str(work / "results"), "--test-sentences", "12", "--latency-sentences", "4",
            "--warmup", "1", "--max-tokens", "500"]


@pytest.fixture(scope="module")
def work(toy_data, ar_teacher, tmp_path_factory):
    """A work dir with every checkpoint the benchmark reads, trained for a few dozen updates."""
    root = tmp_path_factory.mktemp("bench_work")
    ck = root / "checkpoints"
    (ck / "teacher").mkdir(parents=True)
    shutil.copy(ar_teacher, ck / "teacher" / "checkpoint_best.pt")

    def fit(name, args):
        train(toy_data, str(ck / name), args + OPTIM, max_update=UPDATES)
        best = ck / name / "checkpoint_best.pt"
        if not best.exists():
            shutil.copy(ck / name / "checkpoint_last.pt", best)
        return str(best)

    fit("cmlm", ["--task", "translation_lev", "--noise", "random_mask", "--arch", "cmlm_transformer",
                 "--share-all-embeddings", "--encoder-learned-pos", "--decoder-learned-pos", "--apply-bert-init",
                 "--criterion", "nat_loss", "--label-smoothing", "0.1", "--ddp-backend", "legacy_ddp", *TINY])
    fit("refine_nat", NAR + ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss"])
    lanmt = fit("lanmt", NAR + ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"])
    for net in ("score_net", "energy_net"):
        fit(net, ["--task", "nar_translation", "--arch", f"{net}_tiny", "--criterion", "score_matching",
                  "--lanmt-path", lanmt])
    return root


def test_every_system_is_measured(work, toy_data):
    proc = run(toy_args(toy_data, work) + ["--search-sizes", "2,3", "--score-search-sizes", "3",
                                           "--onnx", "refine_nat.fixed0,lanmt.delta1,score.steps1",
                                           "--onnx-int8", "refine_nat.fixed0",
                                           "--require-all"], timeout=900)
    out = work / "results"
    res = json.loads((out / "results.json").read_text())
    rows = {r["key"]: r for r in res["systems"]}
    expected = {"ar.beam1", "ar.beam5", "cmlm.iter1", "cmlm.iter4", "cmlm.iter10", "refine_nat.adaptive10",
                "refine_nat.adaptive10.keep", "refine_nat.fixed0", "refine_nat.fixed1", "refine_nat.fixed2", "refine_nat.fixed4", "refine_nat.fixed10",
                "refine_nat.beam3", "refine_nat.beam3.teacher",
                "lanmt.prior", "lanmt.delta1", "lanmt.delta2", "lanmt.delta4", "lanmt.delta1.ascent",
                "lanmt.delta2.ascent", "lanmt.delta4.ascent", "lanmt.search2", "lanmt.search3", "score.steps1", "score.search3", "energy.steps1"}
    # the teacher as CTranslate2 serves it, and compiled twins of the systems --onnx names
    ct2 = {f"ct2.{q}.beam{b}" for q in ("float32", "int8") for b in (1, 5)}
    twins = {"refine_nat.fixed0.onnx", "lanmt.delta1.onnx", "score.steps1.onnx"}
    assert set(rows) == expected | ct2 | twins | {"refine_nat.fixed0.onnx-int8"}
    have_ct2 = importlib.util.find_spec("ctranslate2") is not None
    for key in ct2 if not have_ct2 else ():  # an optional dependency: rows say why they are empty
        assert rows[key]["status"].startswith("skipped: ctranslate2 is not installed")
    for key, r in rows.items():
        if key in ct2 and not have_ct2:
            continue
        assert r["status"] == "ok", (key, r["status"], proc.stdout[-3000:])
        assert r["test_sentences"] == 12 and r["latency_sentences"] == 4 and len(r["latencies_ms"]) == 4
        assert r["latency_ms_median"] > 0 and r["throughput_sent_per_s"] > 0
        assert 0 <= r["bleu"] <= 100 and 0 <= r["bleu_papers"] <= 100
        assert "tok:13a" in r["bleu_signature"]
        assert r["speedup_vs_ar_beam5"] > 0 and r["speedup_vs_fastest_ar"] > 0
        hyps = (out / "hyps" / f"{key}.txt").read_text().splitlines()
        assert len(hyps) == 12
        assert r["fairseq_generate"].startswith("ct2-fairseq-converter " if key in ct2 else "fairseq-generate ")
    assert rows["ar.beam5"]["speedup_vs_ar_beam5"] == 1.0
    fastest = min((rows[k] for k in rows if rows[k]["family"] in ("AR", "CTranslate2") and
                   rows[k]["status"] == "ok"), key=lambda r: r["latency_ms_median"])
    assert res["fastest_ar"] == fastest["key"] and fastest["speedup_vs_fastest_ar"] == 1.0
    # a compiled twin decodes the same tokens as its system, over its exported passes
    for twin in twins:
        base = twin[: -len(".onnx")]
        assert "--onnx-dir" in rows[twin]["fairseq_generate"]
        assert (out / "hyps" / f"{twin}.txt").read_text() == (out / "hyps" / f"{base}.txt").read_text()
        assert rows[twin]["bleu"] == rows[base]["bleu"]
    assert (work / "onnx" / "refine_nat" / "manifest.json").is_file()
    # the int8 twin decodes over passes with int8 weights, in a folder of its own
    int8 = json.loads((work / "onnx" / "refine_nat-int8" / "manifest.json").read_text())
    assert int8["precision"] == "int8" and "refine_nat-int8" in rows["refine_nat.fixed0.onnx-int8"]["fairseq_generate"]
    assert json.loads((work / "onnx" / "refine_nat" / "manifest.json").read_text())["precision"] == "float32"
    if have_ct2:
        assert (work / "ct2" / "teacher-int8" / "model.bin").is_file()
        assert "| AR Transformer, CTranslate2 int8, beam 5 |" in (out / "results.md").read_text()
    assert any(t.startswith("one NAT pass (refine_nat decoder 1 or LaNMT prior) <= 1.5 ms") for t in res["targets"])
    # fixed refinement runs exactly its steps; CMLM reports iterations (decoder passes)
    assert rows["refine_nat.fixed4"]["mean_steps"] == 4 and rows["refine_nat.fixed0"]["mean_steps"] == 0
    # the results' targets are checked on the rows (each line ends MET or NOT MET)
    assert any(t.startswith("teacher (AR beam 5) >= 35 BLEU") for t in res["targets"])
    assert any("refine_nat.fixed0 >= +1.5 BLEU" in t for t in res["targets"])
    assert any(t.startswith("LaNMT delta inference (lanmt.delta") for t in res["targets"])
    assert any(t.startswith("lanmt.delta1 batch-1 latency <= 1.8x the LaNMT prior pass") for t in res["targets"])
    assert all(t.endswith("MET") for t in res["targets"] if not t.startswith("context")), res["targets"]
    # beside the refine_nat target, what fairseq's own iterative refinement (CMLM) gains here
    [context] = [t for t in res["targets"] if t.startswith("context, not a target: fairseq CMLM")]
    cmlm_best = max(("cmlm.iter4", "cmlm.iter10"), key=lambda k: rows[k]["bleu"])
    assert f"({cmlm_best}) vs cmlm.iter1: {rows[cmlm_best]['bleu']:.2f}" in context
    assert rows["cmlm.iter1"]["mean_steps"] == 1
    # delta rows run the paper's plain chain (the default); the ascent check has rows of its own
    assert "--delta-ascent-check" in rows["lanmt.delta2.ascent"]["fairseq_generate"]
    assert "--delta-ascent-check" not in rows["lanmt.delta2"]["fairseq_generate"]
    # refine_nat's length beam, ranked by itself and reranked by the AR teacher
    for key in ("refine_nat.beam3", "refine_nat.beam3.teacher"):
        assert "--iter-decode-with-beam 3" in rows[key]["fairseq_generate"]
    assert "--teacher-path" not in rows["refine_nat.beam3"]["fairseq_generate"]
    assert "--teacher-path" in rows["refine_nat.beam3.teacher"]["fairseq_generate"]
    assert rows["refine_nat.beam3.teacher"]["needs"] == ["teacher"]
    assert "at_or_above_cmlm_frontier" in rows["score.steps1"]
    for png in ("latency_vs_length.png", "bleu_vs_steps.png", "bleu_vs_latency.png"):
        assert (out / png).stat().st_size > 5000, png
    md = (out / "results.md").read_text()
    assert "scripts/benchmark.py" in md and "torch.set_num_threads(1)" in md
    # paths relative to the repository: no machine's absolute paths, commands run from its root
    assert res["command"].startswith("python scripts/benchmark.py --work ")
    assert absolute_paths(res) == [] and res["checkpoints"]["lanmt"]["path"] == os.path.relpath(
        work / "checkpoints" / "lanmt" / "checkpoint_best.pt", REPO)
    assert res["settings"]["out"] == os.path.relpath(out, REPO)
    assert f" --path {os.path.relpath(work, REPO)}/checkpoints/lanmt/" in rows["lanmt.prior"]["fairseq_generate"]
    assert md.count("| energy inference (1 step) | ") == 1
    assert "missing checkpoint" not in md
    assert "score inference + latent search m=3" in proc.stdout  # fairseq-style progress lines
    # --replot redraws the plots from results.json alone
    for png in ("latency_vs_length.png", "bleu_vs_steps.png", "bleu_vs_latency.png"):
        (out / png).unlink()
    (out / "notes.md").write_text("## What changed\n\nA hand-written note.\n")
    replot = run([sys.executable, SCRIPT, "--work", str(work), "--out", str(out), "--replot"])
    assert "redrew" in replot.stdout and "[1/" not in replot.stdout  # nothing decoded
    md_again = (out / "results.md").read_text()  # rewritten from results.json, with the notes
    assert "A hand-written note." in md_again and md_again.replace(
        "## What changed\n\nA hand-written note.\n\n", "") == md
    for png in ("latency_vs_length.png", "bleu_vs_steps.png", "bleu_vs_latency.png"):
        assert (out / png).stat().st_size > 5000, png


def test_missing_checkpoints_are_rows(toy_data, tmp_path):
    work = tmp_path / "empty"
    args = toy_args(toy_data, work) + ["--systems", "ar.*,lanmt.search*,energy.*"]
    run(args)
    res = json.loads((work / "results" / "results.json").read_text())
    assert [r["key"] for r in res["systems"]] == ["ar.beam1", "ar.beam5", "lanmt.search5", "lanmt.search10",
                                                  "lanmt.search20", "energy.steps1"]
    for r in res["systems"]:
        assert r["status"].startswith("missing checkpoint: "), r
    assert res["systems"][-1]["status"] == "missing checkpoint: " + os.path.relpath(
        work / "checkpoints" / "energy_net" / "checkpoint_best.pt", REPO)
    # the final table must have them all: --require-all turns a missing checkpoint into a failure
    assert run(args + ["--require-all"], check=False).returncode == 1


def test_default_output_is_the_work_dir(toy_data, tmp_path):
    """Without --out the benchmark writes WORK/benchmark (WORK/benchmark-gpu with --cuda), never
    the committed examples/multi30k/results/."""
    work = tmp_path / "w"
    args = toy_args(toy_data, work)
    del args[args.index("--out"):args.index("--out") + 2]
    committed = REPO / "examples" / "multi30k" / "results" / "results.json"
    before = committed.read_bytes()
    try:
        run(args + ["--systems", "energy.*"])
        assert committed.read_bytes() == before
    finally:  # the old default wrote there: put the committed table back
        if committed.read_bytes() != before:
            committed.write_bytes(before)
    res = json.loads((work / "benchmark" / "results.json").read_text())
    assert [r["key"] for r in res["systems"]] == ["energy.steps1"]
    assert res["settings"]["out"] == os.path.relpath(work / "benchmark", REPO)
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from bench.options import get_parser, resolve_paths
    finally:
        sys.path.remove(str(REPO / "scripts"))
    a = get_parser().parse_args(["--work", str(work), "--cuda"])
    resolve_paths(a)
    assert a.out == str(work / "benchmark-gpu")


def test_extra_source_files_are_translated_in_order(work, toy_data, tmp_path):
    """--translate: a raw source file is segmented, binarised with the data-bin's dictionary and
    translated by every system into OUT/blind/SET/SYSTEM.TGT, one line per source line in source
    order (here: the first test sentences reversed, so each line must be the test hypothesis of
    the mirrored line). --translate-only does only that and leaves results.json alone."""
    raw = (Path(toy_data).parent / "raw" / "test.src").read_text().splitlines()[:10]
    extra = tmp_path / "blind"
    extra.mkdir()
    (extra / "rev.src").write_text("".join(x + "\n" for x in reversed(raw)))
    (extra / "head.src").write_text("".join(x + "\n" for x in raw[:3]))
    (extra / "notes.txt").write_text("not a source file\n")
    out = tmp_path / "results"
    deterministic = "ar.beam1,cmlm.iter1,refine_nat.fixed2,lanmt.prior,lanmt.delta1,score.steps1,energy.steps1"
    args = toy_args(toy_data, work)
    args[args.index("--out") + 1] = str(out)
    args[args.index("--test-sentences") + 1] = "10"
    run(args + ["--systems", deterministic, "--translate", str(extra / "rev.src")])
    res = json.loads((out / "results.json").read_text())
    assert res["translated_sets"] == {"rev": {"source": os.path.relpath(extra / "rev.src", REPO), "lines": 10}}
    assert (work / "data-bin-extra" / "rev" / "test.src-tgt.src.bin").is_file()
    for r in res["systems"]:
        assert r["status"] == "ok", r
        test_hyps = (out / "hyps" / f"{r['key']}.txt").read_text().splitlines()
        blind = (out / "blind" / "rev" / f"{r['key']}.tgt").read_text().splitlines()
        assert blind == list(reversed(test_hyps)), r["key"]
        assert r["translated"]["rev"]["lines"] == 10
    assert "## Extra source files" in (out / "results.md").read_text()

    # --translate-only with --translate-dir: every *.src file, every system, no results.json rewrite
    before = (out / "results.json").read_text()
    run(args + ["--systems", deterministic + ",lanmt.search2", "--search-sizes", "2",
                "--translate-only", "--translate-dir", str(extra)])
    assert (out / "results.json").read_text() == before
    meta = json.loads((out / "blind" / "translations.json").read_text())
    assert set(meta["sets"]) == {"rev", "head"} and meta["failed"] == []
    assert set(meta["systems"]) == set(deterministic.split(",")) | {"lanmt.search2"}
    for key in meta["systems"]:
        head = (out / "blind" / "head" / f"{key}.tgt").read_text().splitlines()
        rev = (out / "blind" / "rev" / f"{key}.tgt").read_text().splitlines()
        assert len(head) == 3 and len(rev) == 10
        if key != "lanmt.search2":  # deterministic: the same sentence, the same translation
            assert head == list(reversed(rev))[:3], key
    assert "| lanmt.search2 |" in (out / "blind" / "translations.md").read_text()
    # a rerun of some systems replaces their files and entries and keeps the others' entries
    first = meta["systems"]
    (out / "blind" / "head" / "ar.beam1.tgt").write_text("stale\n")
    run(args + ["--systems", "ar.beam1", "--translate-only", "--translate-dir", str(extra)])
    meta = json.loads((out / "blind" / "translations.json").read_text())
    assert list(meta["systems"]) == list(first)
    assert [r["date"] for r in meta["earlier_runs"]] == [first["lanmt.search2"]["date"]]
    assert "--translate-only" in meta["earlier_runs"][0]["command"]
    assert {k: v for k, v in meta["systems"].items() if k != "ar.beam1"} == \
        {k: v for k, v in first.items() if k != "ar.beam1"}
    assert (out / "blind" / "head" / "ar.beam1.tgt").read_text().splitlines() == \
        list(reversed((out / "blind" / "rev" / "ar.beam1.tgt").read_text().splitlines()))[:3]
    assert "| lanmt.search2 |" in (out / "blind" / "translations.md").read_text()
    # nothing to translate is an error, not an empty run
    proc = run(args + ["--translate-only"], check=False)
    assert proc.returncode != 0 and "--translate-only: give --translate" in proc.stderr


def test_cmlm_fill_rate_reads_a_fairseq_cmlm(work, toy_data):
    """scripts/cmlm_fill_rate.py on the benchmark's CMLM: one masked word per valid target,
    filled from the gold context; the count is of the targets with two different words to
    draw from, the rate a share of it, and the same seed gives the same line."""
    script = str(Path(SCRIPT).parent / "cmlm_fill_rate.py")
    args = [sys.executable, script, "--path", str(work / "checkpoints" / "cmlm" / "checkpoint_best.pt"),
            "--data-bin", toy_data]
    line = run(args).stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"CMLM fills (\d+) of (\d+) masked words from their context \(([\d.]+)%\)", line)
    assert m, line
    right, n = int(m.group(1)), int(m.group(2))
    targets = Path(toy_data).parent / "raw" / "valid.tgt"
    eligible = [t for t in targets.read_text().splitlines() if len(t.split()) >= 2]
    assert 0 < n <= len(eligible) and 0 <= right <= n
    assert run(args).stdout.strip().splitlines()[-1] == line
