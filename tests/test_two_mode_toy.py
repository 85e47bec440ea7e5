"""scripts/two_mode_toy.py: the mode classification on hand-made outputs, and the whole script
(real fairseq-preprocess/train/generate) on a tiny budget. The tiny models are barely trained:
the end-to-end test checks the plumbing and the bookkeeping, not the numbers."""

import importlib.util
import json
import os
import shlex
from types import SimpleNamespace

import pytest

from helpers import REPO, run

SCRIPT = REPO / "scripts" / "two_mode_toy.py"
spec = importlib.util.spec_from_file_location("two_mode_toy", SCRIPT)
toy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toy)


@pytest.mark.parametrize("hyp, kind", [
    ("W3 W5", "exact"),          # the source in style W
    ("V3 V5", "exact"),          # ... or in style V: both are right
    ("W3 W3", "single"),         # one style, wrong word
    ("V3", "single"),            # one style, a word short
    ("V3 V5 V5", "single"),      # one style, a word too many
    ("W3 V5", "mixed"),          # the multimodality problem
    ("V3 W5 <unk>", "mixed"),    # both styles whatever else is there
    ("W3 <unk>", "other"),       # neither one style nor both
    ("w3 w5", "other"),          # copied source words have no style
    ("W3 W5x", "other"),
    ("", "other"),
])
def test_classify(hyp, kind):
    assert toy.classify(hyp, "w3 w5") == kind


def test_mode_shares():
    src = "w1 w2"
    shares = toy.mode_shares([("W1 W2", src), ("V1 V2", src), ("V1 V1", src), ("W1 V2", src),
                              ("", src)])
    assert shares == {"single_style": 0.6, "exact": 0.4, "mixed": 0.2, "other": 0.2, "n": 5}


OUTPUT = """S-1\tw1 w2
H-1\t-0.1\tW1 W2
E-1_0\tW1 V2
E-1_1\tW1 W2
I-1\t1
S-0\tw7
H-0\t-0.2\tV7
E-0_0\tW8
E-0_1\tV8
E-0_2\tV7
I-0\t2
Generate test with beam=1: BLEU4 = 12.50, 50/20/10/0 (BP=1.000, ratio=1.000)
"""


def test_parse_and_step_shares():
    sents, bleu = toy.parse_generate(OUTPUT)
    assert bleu == 12.5
    assert sents[1] == {"src": "w1 w2", "hyp": "W1 W2", "steps": 1,
                        "history": {0: "W1 V2", 1: "W1 W2"}}
    rows = toy.step_shares(sents, 3)
    # step 0: mixed + single-style wrong word; step 1: exact + single; then both exact (a
    # sentence that stopped keeps its last output)
    assert [(r["single_style"], r["exact"], r["mixed"]) for r in rows] == [
        (0.5, 0.0, 0.5), (1.0, 0.5, 0.0), (1.0, 1.0, 0.0), (1.0, 1.0, 0.0)]
    summary = toy.decode_summary(OUTPUT)
    assert summary["exact"] == 1.0 and summary["mean_steps"] == 1.5 and summary["n"] == 2


def test_script_end_to_end(tmp_path, monkeypatch):
    """The script through the real CLIs on 20 updates and 20 test sentences: every table row is
    filled from every sentence, the last refinement step is the forced run's output, z_usage is
    read from the LaNMT's validation log. Without --out the results go to --work, never over the
    committed examples/toy_two_mode/, and they hold no absolute paths."""
    committed = {p: p.read_bytes() for p in (REPO / "examples" / "toy_two_mode").glob("results.*")}
    out = tmp_path / "work"
    # the script's main() in this process, its fairseq commands through helpers.run (the tests'
    # fork server: the same CLIs, without a fresh interpreter importing torch for each)
    monkeypatch.setattr(toy, "subprocess", SimpleNamespace(
        run=lambda cmd, capture_output, text, env: run(cmd, check=False, env=env, timeout=600)))
    toy.main([str(w) for w in ("--work", out, "--updates", "20", "--test-sentences", "20",
                               "--delta-steps", "1")])
    assert {p: p.read_bytes() for p in committed} == committed
    res = json.loads((out / "results.json").read_text())
    words = [w for c in [res["command"], *res["commands"].values()] for w in shlex.split(c)]
    assert not [w for w in words if os.path.isabs(w)], res["commands"]
    assert res["commands"]["preprocess"].startswith("fairseq-preprocess ")
    steps = res["refine_nat"]["steps"]
    assert [s["step"] for s in steps] == list(range(11))
    rows = [*steps, res["refine_nat"]["adaptive"], *res["lanmt"].values()]
    assert set(res["lanmt"]) == {"prior", "delta_1", "score_1"}
    for r in rows:
        assert r["n"] == 20
        assert r["exact"] <= r["single_style"]
        assert r["single_style"] + r["mixed"] + r["other"] == pytest.approx(1)
    # the history's step 10 is the forced run's hypothesis
    forced = toy.decode_summary((tmp_path / "work" / "logs" / "generate_refine_steps.log").read_text())
    assert {k: forced[k] for k in ("single_style", "exact", "mixed")} == {
        k: steps[-1][k] for k in ("single_style", "exact", "mixed")}
    assert res["lanmt"]["delta_1"]["mean_steps"] <= 1
    log = (tmp_path / "work" / "logs" / "train_lanmt.log").read_text()
    assert res["lanmt_valid"]["z_usage"] == toy.final_valid(log, "z_usage") is not None
    assert "--iter-decode-force-max-iter" in res["commands"]["generate_refine_steps"]
    md = (out / "results.md").read_text()
    assert "| 10 |" in md and "prior mean" in md and "score, 1 step" in md and "z_usage" in md
