"""The talk's figures (scripts/latent_space.py, elbo_steps.py, qualitative.py) on the toy.

Tiny models are trained once per session through fairseq-train on the two-style toy corpus
(each target in one of two styles by a coin flip, so LaNMT's latent carries something and the
methods' outputs differ): a LaNMT, a score network and an energy network on it, a refine_nat.
Each script runs as its command line; what it writes is checked against fairseq-generate's
output and against the models loaded the way fairseq-generate loads them.
"""

import importlib.util
import json
import re
import sys

import pytest
import torch

from helpers import REPO, USER_DIR, generate, parse_hypotheses, preprocess, run, train

SCRIPTS = REPO / "scripts"
NAR = ["--task", "nar_translation"]
OPTIM = ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates",
         "20", "--max-tokens", "2000", "--no-epoch-checkpoints", "--disable-validation"]
WORD_LEVEL = ["--remove-bpe", "none"]

sys.path.insert(0, str(SCRIPTS))
from figures.text import changed_flags, marked, marked_change, md_escape, moved_words  # noqa: E402


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fig_data(tmp_path_factory):
    """The two-style toy corpus (60 test, 100 valid sentences), binarized."""
    spec = importlib.util.spec_from_file_location("two_mode_toy", SCRIPTS / "two_mode_toy.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    root = tmp_path_factory.mktemp("figures")
    return preprocess(toy.write_two_style_corpus(root / "raw", n_test=60), str(root / "bin"))


@pytest.fixture(scope="session")
def fig_lanmt(fig_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("fig_lanmt")
    train(fig_data, str(save), NAR + ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo",
                                      "--share-all-embeddings", "--kl-budget-hold-updates", "60",
                                      "--kl-budget-anneal-updates", "60", *OPTIM], max_update=150)
    return str(save / "checkpoint_last.pt")


def _inference_net(arch, data, lanmt, tmp_path_factory, updates):
    save = tmp_path_factory.mktemp(arch)
    train(data, str(save), NAR + ["--arch", arch, "--criterion", "score_matching", "--lanmt-path", lanmt,
                                  *OPTIM], max_update=updates)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="session")
def fig_score(fig_data, fig_lanmt, tmp_path_factory):
    return _inference_net("score_net_tiny", fig_data, fig_lanmt, tmp_path_factory, 60)


@pytest.fixture(scope="session")
def fig_energy(fig_data, fig_lanmt, tmp_path_factory):
    return _inference_net("energy_net_tiny", fig_data, fig_lanmt, tmp_path_factory, 20)


@pytest.fixture(scope="session")
def fig_refine(fig_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("fig_refine")
    train(fig_data, str(save), NAR + ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
                                      "--share-all-embeddings", *OPTIM], max_update=80)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="session")
def fig_outputs(fig_data, fig_lanmt, fig_score):
    """fairseq-generate's test-set outputs ({id: text}) of the prior mean, delta inference (at most
    4 steps, the plain chain) and one score step: what the scripts must reproduce."""
    runs = {"prior": (fig_lanmt, ["--decoding", "prior"]),
            "delta": (fig_lanmt, ["--decoding", "delta", "--iter-decode-max-iter", "4"]),
            "score": (fig_score, ["--decoding", "score", "--score-steps", "1"])}
    return {name: parse_hypotheses(generate(fig_data, path, [*NAR, *opts]).stdout, "D")
            for name, (path, opts) in runs.items()}


def script(name, *args):
    return run([sys.executable, SCRIPTS / name, *args, "--threads", "1"])


def load(path, data):
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(argparse_ns(user_dir=USER_DIR))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    return models[0].eval(), task


def argparse_ns(**kw):
    import argparse

    return argparse.Namespace(**kw)


def edit_distance(a, b):
    """Levenshtein distance of two word lists (the test's own)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def history_lines(stdout):
    """{id: [E- line text per step]} of fairseq-generate --retain-iter-history."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^E-(\d+)_(\d+)\t(.*)$", line)
        if m:
            out.setdefault(int(m.group(1)), {})[int(m.group(2))] = m.group(3)
    return {i: [h[k] for k in sorted(h)] for i, h in out.items()}


def unmark(cell):
    """A markdown cell of scripts/figures/text.marked(_change) back to its words: bold kept,
    struck-through (dropped) words removed, escapes undone."""
    cell = re.sub(r"~~(?:\\.|[^~\\])*~~", "", cell).replace("**", "")
    return " ".join(re.sub(r"\\(.)", r"\1", cell).split())


# -- the word-level helpers --------------------------------------------------------------------------
def test_moved_words_tell_reordering_from_local_edits():
    old = "Es gibt nicht viele Aerzte im westafrikanischen Land".split()
    new = "Im westafrikanischen Land gibt es nicht viele Aerzte".split()  # the talk's example 1
    assert moved_words(old, new) == 2  # "westafrikanischen Land" changed places
    assert moved_words("a b c d".split(), "a x c y".split()) == 0  # substitutions only
    assert moved_words("a b c".split(), "a c".split()) == 0
    assert moved_words("a b c".split(), "c a b".split()) == 1


def test_marks_are_the_changed_words_and_escape_markdown():
    assert marked("a x y c".split(), changed_flags("a b c".split(), "a x y c".split())) == "a **x y** c"
    assert marked("a b".split(), changed_flags("a b".split(), "a b".split())) == "a b"
    assert md_escape("a|b *c* _d_ <u>") == r"a\|b \*c\* \_d\_ \<u\>"
    assert unmark(marked(["x|y", "*z*"], [True, False])) == "x|y *z*"
    assert marked_change("a b c d".split(), "a x c".split()) == "a **x** c ~~d~~"
    assert marked_change("a b".split(), "b a b".split()) == "**b** a b"
    assert unmark(marked_change("a ~ b".split(), "a b".split())) == "a b"


# -- elbo_steps.py -----------------------------------------------------------------------------------
def test_elbo_steps_outputs_and_elbo_parts(fig_data, fig_lanmt, fig_score, fig_outputs, tmp_path):
    out = tmp_path / "out"
    script("elbo_steps.py", "--data-bin", fig_data, "--gen-subset", "test", "--lanmt", fig_lanmt,
           "--score-net", fig_score, "--steps", "0,1,4", "--save-hyps", "--out", out, *WORD_LEVEL)
    res = json.loads((out / "elbo_steps.json").read_text())
    hyps = json.loads((out / "elbo_steps_hyps.json").read_text())
    assert "python scripts/elbo_steps.py" in res["command"] and "--steps 0,1,4" in res["command"]
    assert res["command"] in (out / "elbo_steps.md").read_text()
    assert (out / "elbo_steps.png").read_bytes()[:4] == b"\x89PNG"
    rows = {(r["method"], r["steps"]): r for r in res["rows"]}
    assert set(rows) == {(m, k) for m in ("delta", "score") for k in (0, 1, 4)}
    for r in res["rows"]:
        assert r["elbo"] == pytest.approx(r["lp_y"] + r["lp_length"] - r["kl"], abs=1e-4)
        assert r["proxy"] == pytest.approx(r["lp_y"] + r["lp_length"] + r["log_prior"], abs=1e-4)
        assert r["kl"] >= 0 and r["lp_y"] <= 0 and 0 <= r["bleu"] <= 100
    assert rows["delta", 0]["elbo"] == rows["score", 0]["elbo"]  # both start at the prior mean

    # the outputs after k steps are fairseq-generate's (4 forced delta steps = the plain chain's
    # at most 4: once y repeats, z = E_q(z|x,y) repeats too)
    n = res["sentences"]
    for method, k, name in (("delta", "0", "prior"), ("delta", "4", "delta"), ("score", "1", "score")):
        assert hyps[method][k] == [fig_outputs[name][i] for i in range(n)], (method, k)
    assert hyps["delta"]["0"] != hyps["delta"]["4"]  # the steps change something here

    # the ELBO parts of the step-0 outputs, from the LaNMT's training forward (eval mode: z is
    # the posterior mean, KL per source position, length logits)
    lanmt, task = load(fig_lanmt, fig_data)
    task.load_dataset("test")
    ds, d = task.dataset("test"), task.target_dictionary
    totals = {"lp_y": 0.0, "kl": 0.0, "lp_length": 0.0}
    with torch.no_grad():
        for i in range(n):
            src = ds[i]["source"][None]
            y = d.encode_line(hyps["delta"]["0"][i], add_if_not_exist=False)[None].long()
            o = lanmt(src, torch.tensor([src.size(1)]), tgt_tokens=y)
            w = o["word_ins"]
            totals["lp_y"] += float(torch.log_softmax(w["out"].float(), -1).gather(-1, w["tgt"][..., None])
                                    .squeeze(-1)[w["mask"]].sum())
            totals["kl"] += float(o["kl"]["out"].sum())
            length = o["length"]
            totals["lp_length"] += float(torch.log_softmax(length["out"].float(), -1)[0, length["tgt"][0]])
    for key, total in totals.items():
        assert rows["delta", 0][key] == pytest.approx(total / n, abs=1e-3), key


# -- latent_space.py ---------------------------------------------------------------------------------
def test_latent_space_rule_points_and_field(fig_data, fig_lanmt, fig_score, fig_outputs, tmp_path):
    out = tmp_path / "out"
    script("latent_space.py", "--data-bin", fig_data, "--lanmt", fig_lanmt, "--score-net", fig_score,
           "--num", "2", "--grid", "5", "--out", out, *WORD_LEVEL)
    res = json.loads((out / "latent_space.json").read_text())
    md = (out / "latent_space.md").read_text()
    assert res["command"] in md and "PCA over all" in md and "source position" in md
    assert [f["figure"] for f in res["figures"]] == ["latent_space_1.png", "latent_space_2.png"]
    for f in res["figures"]:
        assert (out / f["figure"]).read_bytes()[:4] == b"\x89PNG"

    # the rule, recomputed from fairseq-generate's outputs: the largest sum of pairwise edit distances
    outs = fig_outputs
    value = {i: sum(edit_distance(outs[a][i].split(), outs[b][i].split())
                    for a, b in (("prior", "delta"), ("prior", "score"), ("delta", "score")))
             for i in outs["prior"]}
    best = sorted(value, key=lambda i: (-value[i], i))[:2]
    assert [f["id"] for f in res["figures"]] == best and value[best[0]] > 0
    for f in res["figures"]:
        assert f["rule_value"] == value[f["id"]]
        assert {m: f["outputs"][m] for m in ("prior", "delta", "score")} == {m: outs[m][f["id"]] for m in outs}

    # the points are the PCA projections of the model's prior and posterior means
    lanmt, task = load(fig_lanmt, fig_data)
    task.load_dataset("test")
    f = res["figures"][0]
    sample = task.dataset("test")[f["id"]]
    with torch.no_grad():
        enc = lanmt.encode(sample["source"][None], torch.tensor([sample["source"].numel()]))
        mu_p = lanmt.prior(enc)[0][0]
        mu_q = lanmt.posterior(enc, sample["target"][None, :-1])[0][0]
    mean, comps = torch.tensor(f["pca"]["mean"]), torch.tensor(f["pca"]["components"])
    for name, z in (("prior", mu_p), ("posterior", mu_q)):
        assert torch.allclose(torch.tensor(f["points"][name]), (z - mean) @ comps.T, atol=1e-4), name
    assert len(f["source_tokens"]) == sample["source"].numel() == len(f["field"])
    # one score step from the prior mean lands on the dot, and the arrow drawn there is that step
    for i, panel in enumerate(f["field"]):
        star, dot = torch.tensor(f["points"]["prior"][i]), torch.tensor(f["points"]["score"][i])
        assert torch.allclose(star + torch.tensor(panel["step_at_prior"]), dot, atol=1e-4)
        assert len(panel["grid"]) == len(panel["arrows"]) == 25
    # every target token of an output labels exactly one source position
    for m in ("prior", "delta", "score", "posterior"):
        assert sorted(" ".join(f["labels"][m]).split()) == sorted(f["outputs"][m].split()), m


def test_latent_space_energy_contours_and_given_ids(fig_data, fig_lanmt, fig_energy, tmp_path):
    out = tmp_path / "out"
    script("latent_space.py", "--data-bin", fig_data, "--energy-net", fig_energy, "--ids", "3",
           "--grid", "4", "--out", out, *WORD_LEVEL)
    res = json.loads((out / "latent_space.json").read_text())
    assert [f["id"] for f in res["figures"]] == [3] and "--ids" in res["rule"]
    assert all(len(p["energy"]) == 16 for p in res["figures"][0]["field"])
    assert "energy E(z;x)" in res["figures"][0]["caption"]


# -- qualitative.py ----------------------------------------------------------------------------------
def test_qualitative_tables_follow_the_history(fig_data, fig_refine, fig_lanmt, fig_score, fig_outputs,
                                               tmp_path):
    out = tmp_path / "out"
    script("qualitative.py", "--data-bin", fig_data, "--refine-nat", fig_refine, "--lanmt", fig_lanmt,
           "--score-net", fig_score, "--refine-steps", "10", "--out", out, *WORD_LEVEL)
    md = (out / "qualitative.md").read_text()
    res = json.loads((out / "qualitative.json").read_text())
    assert res["command"] in md and "--retain-iter-history" in md

    # refine_nat: six sentences chosen by the rule, rows = the E- lines of those steps, bold = changed
    proc = generate(fig_data, fig_refine, [*NAR, "--decoding", "refine", "--iter-decode-max-iter", "10",
                                           "--iter-decode-force-max-iter", "--retain-iter-history"])
    hist = history_lines(proc.stdout)
    assert all(len(h) == 11 for h in hist.values())
    key = {i: (-edit_distance(h[0].split(), h[-1].split()),
               -sum(edit_distance(a.split(), b.split()) for a, b in zip(h, h[1:])), i) for i, h in hist.items()}
    chosen = sorted(key, key=key.get)[:6]
    assert [c["id"] for c in res["refine_nat"]["chosen"]] == chosen
    assert key[chosen[0]][0] < 0  # refinement changed the first one
    sections = re.split(r"^### \d+\. ", md.split("## refine_nat")[1].split("\n## ")[0], flags=re.M)[1:]
    assert len(sections) == 6
    for sid, text in zip(chosen, sections):
        assert text.startswith(f"test sentence {sid} ")
        rows = dict(re.findall(r"^\| ([^|]+?) \| (.*) \|$", text, flags=re.M))
        labels = ["decoder 1 (step 0)", "step 1", "step 2", "step 4", "step 8", "step 10 (last)"]
        assert [k for k in rows if k not in ("source", "reference", " ")][:6] == labels
        prev = None
        for label, step in zip(labels, (0, 1, 2, 4, 8, 10)):
            cell = rows[label]
            assert unmark(cell) == hist[sid][step], (sid, label)
            marks = re.findall(r"\*\*(.+?)\*\*|~~(.+?)~~", cell)
            assert bool(marks) == (prev is not None and prev != hist[sid][step]), (sid, label, cell)
            prev = hist[sid][step]

    # delta and score: the original is the prior mean's output, the refined one the final output
    prior = fig_outputs["prior"]
    for name in ("delta", "score"):
        final = fig_outputs[name]
        outs = res[name]["outputs"]
        assert all(outs[str(i)] == {"original": prior[i], "refined": final[i]} for i in final), name
        for c in res[name]["chosen"]:
            o, r = c["original"].split(), c["refined"].split()
            assert o != r and (moved_words(o, r) > 0 or c["edited_places"] >= 2)
