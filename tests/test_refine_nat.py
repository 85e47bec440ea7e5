"""refine_nat through the real fairseq CLIs: train, generate, adaptive stop, history, resume."""

import argparse
import json
import math
import random
import re
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers import (REPO, USER_DIR, cli, generate, log_lines, log_value, parse_bleu, parse_hypotheses,
                     preprocess, run, train, write_toy_corpus)
from nar_refine.models.refine_nat import RefineNATModel

NAR = ["--task", "nar_translation"]
REFINE_ARGS = [
    "--task", "nar_translation", "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
    "--share-all-embeddings", "--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler",
    "inverse_sqrt", "--warmup-updates", "50", "--max-tokens", "2000", "--no-epoch-checkpoints",
]


@pytest.fixture(scope="session")
def refine_ckpt(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("refine")
    proc = train(toy_data, str(save), REFINE_ARGS + ["--disable-validation", "--max-tokens", "1000"],
                 max_update=250)
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
    def steps(*extra):
        # the stop rule on its own: with --refine-repeats mask (the default) a word the toy
        # legitimately repeats is re-predicted at every step and may keep a row changing
        args = [*NAR, "--iter-decode-max-iter", "8", "--print-step", "--refine-repeats", "keep", *extra]
        return _steps(generate(toy_data, refine_ckpt[0], args).stdout)

    adaptive, forced = steps(), steps("--iter-decode-force-max-iter")
    assert len(adaptive) == len(forced) == 60
    assert all(s == 8 for s in forced.values())
    # converged sentences leave the batch after 2 stale steps and at least 3 steps (defaults)
    assert sum(s < 8 for s in adaptive.values()) >= 50
    assert all(s >= 3 for s in adaptive.values())
    # fairseq's rule stops at the first unchanged step; a minimum holds every sentence back
    assert sum(s == 1 for s in steps("--adaptive-window", "1", "--adaptive-min-steps", "0").values()) >= 50
    assert all(5 <= s < 8 for s in steps("--adaptive-window", "3", "--adaptive-min-steps", "5").values())
    assert all(s == 8 for s in steps("--adaptive-window", "0").values())


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


# -- adaptive stop on a scripted decoder: the rule itself, step by step ---------------------------
class ScriptedRefiner(torch.nn.Module):
    """Stands in for RefineNATModel: row r outputs the word ``script[r][l]`` (one token, repeated
    over the row's length) at step l, decoder 1 being step 0; the hidden state carries l."""

    def __init__(self, script, length=3, vocab=12):
        super().__init__()
        self.script, self.length, self.vocab = script, length, vocab

    def encode(self, src_tokens, src_lengths):
        from nar_refine.models.refine_nat import SourceEncoding

        return SourceEncoding(row=torch.arange(src_tokens.size(0)), length=src_lengths)

    def length_logits(self, enc):
        return torch.zeros(enc["row"].numel(), 3)

    @property
    def length_predictor(self):
        script = self

        class Lengths:
            def predict(self, logits, src_lengths, beam, max_len):
                return torch.full((logits.size(0), beam), script.length)

            def log_prob(self, logits, src_lengths, lengths):
                return torch.zeros(lengths.shape)

        return Lengths()

    def _out(self, rows, step, project=True):
        # the hidden state of every position is (step, row): the projection reads the script
        hidden = torch.stack([step.float(), rows.float()], -1)[:, None].expand(-1, self.length, 2)
        return (self._project(hidden) if project else None), hidden

    def _project(self, hidden):
        flat = hidden.reshape(-1, 2).long().tolist()
        words = torch.tensor([self.script[r][min(l, len(self.script[r]) - 1)] for l, r in flat])
        logits = torch.nn.functional.one_hot(words, self.vocab).float() * 10
        return logits.view(*hidden.shape[:-1], self.vocab)

    @property
    def decoder(self):
        return types.SimpleNamespace(output_projection=self._project, refine_output=self._project)

    def initial_step(self, enc, lengths, project=True):
        return self._out(enc["row"], torch.zeros_like(enc["row"]), project)

    def refine_step(self, enc, prev_tokens, prev_hidden, token_mask=None, project=True):
        return self._out(enc["row"], prev_hidden[:, 0, 0].long() + 1, project)

    # what the generator calls: the model's own reading of the two steps above
    pad = 1
    initial_read = RefineNATModel.initial_read
    refine_read = RefineNATModel.refine_read
    read_output = RefineNATModel.read_output


class _Dict:
    def pad(self):
        return 1

    def eos(self):
        return 2


def _scripted_decode(script, **kw):
    from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator

    gen = AdaptiveRefinementGenerator(_Dict(), retain_history=True, **kw)
    n = len(script)
    sample = {"net_input": {"src_tokens": torch.full((n, 3), 5), "src_lengths": torch.full((n,), 3)}}
    hypos = gen.generate([ScriptedRefiner(script)], sample)
    steps = [h[0]["steps"] for h in hypos]
    history = [[int(e["tokens"][0]) for e in h[0]["history"]] for h in hypos]
    return steps, history


A, B, C = 4, 5, 6
SCRIPT = [
    [A, A, B, C, C, C, C, C, C, C, C],  # unchanged for one step (1), then still changing (2, 3)
    [A, B, B, B, B, B, B, B, B, B, B],  # a fixed point from step 1
    [A, B, A, B, A, B, A, B, A, B, A],  # a 2-cycle
]


def test_adaptive_window_does_not_stop_at_one_unchanged_step():
    steps, history = _scripted_decode(SCRIPT, max_iter=10, window=2, min_steps=0)
    # row 0: step 1 repeats A (stale), step 2 gives B (new), 3 gives C (new), 4 and 5 repeat C
    assert history[0] == [A, A, B, C, C, C] and steps[0] == 5
    assert history[1] == [A, B, B, B] and steps[1] == 3
    assert history[2] == [A, B, A, B] and steps[2] == 3  # the cycle is caught by the window
    # fairseq's rule (window 1) stops row 0 at its first unchanged step and misses C
    steps, history = _scripted_decode(SCRIPT, max_iter=10, window=1, min_steps=0)
    assert history[0] == [A, A] and steps == [1, 2, 10]
    # a minimum number of steps, and window 0 = no early stop
    assert _scripted_decode(SCRIPT, max_iter=10, window=2, min_steps=7)[0] == [7, 7, 7]
    assert _scripted_decode(SCRIPT, max_iter=6, window=0)[0] == [6, 6, 6]


# -- a toy task whose lengths vary: validation, history, length prediction ------------------------
def write_fertility_corpus(folder, n_train=2000, n_valid=100, n_test=60, seed=3):
    """w0-w3 -> two words (W0 V0), w4-w7 -> nothing, any other wK -> WK: len(y) - len(x) varies
    with the source (-10..10), so predicting it takes reading x; a constant guess is right for
    about a third of the sentences."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def translate(word):
        k = int(word[1:])
        return [f"W{k}", f"V{k}"] if k < 4 else [] if k < 8 else [word.upper()]

    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = []
        while len(pairs) < n:
            src = [f"w{rng.randrange(24)}" for _ in range(rng.randint(3, 10))]
            tgt = [t for w in src for t in translate(w)]
            if tgt:
                pairs.append((" ".join(src), " ".join(tgt)))
        for side, i in (("src", 0), ("tgt", 1)):
            (folder / f"{split}.{side}").write_text("\n".join(p[i] for p in pairs) + "\n")
    return folder


FERTILITY_UPDATES = 200


@pytest.fixture(scope="module")
def fertility_run(tmp_path_factory):
    """A short refine_nat run on the fertility toy, validated every epoch (the last validation
    is that of checkpoint_last.pt): (data-bin, checkpoint, training log, raw folder)."""
    root = tmp_path_factory.mktemp("fertility")
    raw = write_fertility_corpus(root / "raw")
    data = preprocess(raw, str(root / "bin"))
    proc = train(data, str(root / "ckpt"), REFINE_ARGS + ["--validate-interval", "1000"],
                 max_update=FERTILITY_UPDATES)
    return data, str(root / "ckpt" / "checkpoint_last.pt"), proc.stdout + proc.stderr, raw


def _load(path, data):
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    task.load_dataset("valid")
    return models[0].eval(), task


def _valid_batches(task):
    itr = task.get_batch_iterator(task.dataset("valid"), max_tokens=1000, seed=1)
    return list(itr.next_epoch_itr(shuffle=False))


@torch.no_grad()
def _chain_nll_by_hand(model, task, passes=4):
    """Bits per token of every pass of the decoder's own chain: decoder 1, then decoder 2 on its
    own argmax output and hidden state, at the reference length."""
    pad, eos = task.target_dictionary.pad(), task.target_dictionary.eos()
    nll, ntok = [0.0] * passes, 0
    for sample in _valid_batches(task):
        y = sample["target"].masked_fill(sample["target"].eq(eos), pad)
        mask = y.ne(pad)
        y, mask = y[:, : int(mask.sum(1).max())], mask[:, : int(mask.sum(1).max())]
        enc = model.encode(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
        logits, hidden = model.initial_step(enc, mask.sum(1))
        for k in range(passes):
            if k > 0:
                logits, hidden = model.refine_step(enc, logits.argmax(-1).masked_fill(~mask, pad), hidden)
            lp = torch.log_softmax(logits.float(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
            nll[k] -= float(lp[mask].sum())
        ntok += int(mask.sum())
    return [v / ntok / math.log(2) for v in nll]


@torch.no_grad()
def _training_mix_nll(model, task, passes=4, seed=0):
    """The same terms under the training mix (alpha 0.5, corrupted references): the old,
    leaky validation."""
    from nar_refine.models.refine_nat import RefinePlan
    from nar_refine.modules.corruption import corrupt

    d = task.target_dictionary
    torch.manual_seed(seed)
    plan = RefinePlan(passes=passes, lvm_alpha=0.5,
                      corrupt=lambda t, m, k: corrupt(t, m, 0.6 - 0.25 * (k - 1), ("swap", "replace", "repeat"),
                                                      d.nspecial, len(d)))
    nll, ntok = [0.0] * passes, 0
    for sample in _valid_batches(task):
        net = sample["net_input"]
        out = model(net["src_tokens"], net["src_lengths"], tgt_tokens=sample["target"], plan=plan)
        for k in range(passes):
            o = out[f"pass_{k}"]
            lp = torch.log_softmax(o["out"].float(), -1).gather(-1, o["tgt"].unsqueeze(-1)).squeeze(-1)
            nll[k] -= float(lp[o["mask"]].sum())
        ntok += int(out["pass_0"]["mask"].sum())
    return [v / ntok / math.log(2) for v in nll]


def test_validation_runs_the_decoders_chain(fertility_run):
    """Validation NLL per pass == the pure argmax chain recomputed by hand from the checkpoint
    (not the training mix, where corrupted references leak the answer into passes 1-3)."""
    data, path, log, _ = fertility_run
    last = log_lines(log, "valid")[-1]
    logged = [log_value(last, f"nll_pass_{k}") for k in range(4)]
    model, task = _load(path, data)
    by_hand = _chain_nll_by_hand(model, task)
    assert by_hand == pytest.approx(logged, abs=2e-3)
    leaky = _training_mix_nll(model, task)
    assert leaky[3] < by_hand[3] - 0.1, (leaky, by_hand)  # the leak made validation look better
    # what fairseq selects checkpoints on is the pure chain's loss: every pass plus the length
    # loss (a mean over sentences, weight 1)
    expected = sum(logged) + log_value(last, "length_loss")
    assert log_value(last, "loss") == pytest.approx(expected, rel=0.02)


def test_history_step_0_is_decoder_1_output(fertility_run):
    """E-<id>_0 (--retain-iter-history) is what --iter-decode-max-iter 0 outputs, not a view of
    the final tokens."""
    data, path, _, _ = fertility_run
    out = generate(data, path, [*NAR, "--retain-iter-history", "--iter-decode-max-iter", "6"]).stdout
    first = parse_hypotheses(generate(data, path, [*NAR, "--iter-decode-max-iter", "0"]).stdout)
    final = parse_hypotheses(out)
    step0 = {int(i): text for i, text in re.findall(r"^E-(\d+)_0\t(.*)$", out, re.M)}
    assert len(step0) == len(first) == 60
    assert step0 == first
    assert sum(first[i] != final[i] for i in final) >= 3  # refinement changed some sentences


def _offsets(raw, split):
    src = (raw / f"{split}.src").read_text().splitlines()
    tgt = (raw / f"{split}.tgt").read_text().splitlines()
    return [len(t.split()) - len(s.split()) for s, t in zip(src, tgt)]


def test_length_predictor_beats_a_constant(fertility_run):
    """Validation length accuracy (logged by the criterion) beats always guessing the most
    frequent training offset."""
    _, _, log, raw = fertility_run
    mode = Counter(_offsets(raw, "train")).most_common(1)[0][0]
    valid = _offsets(raw, "valid")
    constant = sum(o == mode for o in valid) / len(valid)
    acc = log_value(log_lines(log, "valid")[-1], "length_acc")
    assert 0.25 < constant < 0.45
    # 0.94 here; 0.63 before issue 8 (length loss weighted 0.1 per token instead of 1 per sentence)
    assert acc > 0.8 and acc > constant + 0.3, (acc, constant)


def test_positional_attention_by_default_and_old_checkpoints_load(fertility_run):
    """Every decoder layer has positional attention by default; a checkpoint trained before it
    existed (no such weights) still loads, without it, and decodes as it was trained."""
    data, path, _, _ = fertility_run
    state = torch.load(path, map_location="cpu", weights_only=False)["model"]
    found = {re.match(r"decoder\.(\w+)\.positional_attention\.(\d+)\.", k).groups()
             for k in state if ".positional_attention." in k}
    assert found == {("initial", "0"), ("initial", "1"), ("refine", "0"), ("refine", "1")}
    model, task = _load(path, data)
    old = {k: v for k, v in state.items() if ".positional_attention." not in k}
    model.load_state_dict(old, strict=True)
    assert model.decoder.initial.positional_attention is None
    assert model.decoder.refine.positional_attention is None
    assert not any(".positional_attention." in k for k in model.state_dict())


def test_steps_curve_script(toy_data, refine_ckpt, tmp_path):
    """scripts/steps_curve.py: the update count comes from the checkpoint, each BLEU is
    sacreBLEU of fairseq-generate's own fixed-step output, and the table's gains are the
    differences of those BLEUs."""
    import sacrebleu

    ckpt, _ = refine_ckpt
    ref = Path(toy_data).parent / "raw" / "test.tgt"
    out = tmp_path / "curve_alpha0.5"  # a prefix with a dot: OUT.json, not curve_alpha0.json
    script = Path(USER_DIR).parent / "scripts" / "steps_curve.py"
    run([sys.executable, str(script), "--data-bin", toy_data, "--ref", str(ref), "--gen-subset", "test",
         "--checkpoints", ckpt, "--steps", "3,0,1", "--remove-bpe", "none", "--out", str(out)])
    meta = json.loads(Path(f"{out}.json").read_text())
    [point] = meta["points"]
    assert point["updates"] == 250 and meta["steps"] == [0, 1, 3]
    refs = ref.read_text().splitlines()
    for k in (0, 3):
        hyps = parse_hypotheses(generate(toy_data, ckpt, NAR + ["--decoding", "refine", "--iter-decode-max-iter",
                                                                str(k), "--iter-decode-force-max-iter"]).stdout)
        bleu = sacrebleu.corpus_bleu([hyps[i] for i in sorted(hyps)], [refs], tokenize="13a").score
        assert point["bleu"][str(k)] == round(bleu, 2), k
    b = point["bleu"]
    row = [line for line in Path(f"{out}.md").read_text().splitlines() if line.startswith("| 250 |")]
    assert row and row[0].endswith(f"| {b['3'] - b['0']:+.2f} | {b['3'] - b['1']:+.2f} |"), row
    assert Path(f"{out}.png").stat().st_size > 5000
    # a missing checkpoint is named, not a traceback
    proc = subprocess.run([sys.executable, str(script), "--data-bin", toy_data, "--ref", str(ref),
                           "--checkpoints", str(tmp_path / "none.pt"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "no such checkpoint" in proc.stderr


# -- the refinement decoder's options, old checkpoints, split-invariant loss -------------------
def _build(data, extra):
    """(task, model, criterion) as fairseq-train builds them, without training."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--user-dir", USER_DIR, *REFINE_ARGS, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def test_refinement_decoder_has_its_own_matrix_and_post_norm(toy_data):
    """Default: decoder 2 embeds its input and projects its output with its own matrix (not the
    shared encoder/decoder-1 one), post-norm layers and no final LayerNorm; --decoder-norm pre
    --refine-embedding shared builds the nar_refine < 0.3 decoder."""
    _, model, _ = _build(toy_data, [])
    dec = model.decoder
    assert dec.refine_projection is not None
    assert dec.refine_projection.weight.data_ptr() != dec.output_projection.weight.data_ptr()
    assert dec.refine.layer_norm is None and not dec.refine.layers[0].normalize_before
    assert dec.initial.layer_norm is None
    _, old, _ = _build(toy_data, ["--decoder-norm", "pre", "--refine-embedding", "shared"])
    assert old.decoder.refine_projection is None and old.decoder.refine.layers[0].normalize_before
    assert old.decoder.refine.layer_norm is not None

    # decoder 2 reads tokens through its own matrix: changing it moves its output only
    model.eval()
    src = torch.tensor([[5, 6, 7, 2]])
    enc = model.encode(src, torch.tensor([4]))
    logits0, h = model.initial_step(enc, torch.tensor([3]))
    before = model.refine_step(enc, logits0.argmax(-1), h)[0]
    with torch.no_grad():
        dec.refine_projection.weight.add_(torch.randn_like(dec.refine_projection.weight))
    assert torch.equal(model.initial_step(enc, torch.tensor([3]))[0], logits0)
    assert not torch.allclose(model.refine_step(enc, logits0.argmax(-1), h)[0], before)


def test_refine_input_tokens_reads_no_hidden_state(toy_data, tmp_path):
    """--refine-input tokens: a refinement step depends on the previous tokens only (the hidden
    states, which carry the previous prediction, are not read); the default reads both. The
    option trains and decodes through fairseq-train / fairseq-generate."""
    src = torch.tensor([[5, 6, 7, 2]])
    for choice, reads_hidden in (("tokens+hidden", True), ("tokens", False)):
        _, model, _ = _build(toy_data, ["--refine-input", choice])
        model.eval()
        enc = model.encode(src, torch.tensor([4]))
        logits0, h = model.initial_step(enc, torch.tensor([3]))
        prev = logits0.argmax(-1)
        a = model.refine_step(enc, prev, h)[0]
        b = model.refine_step(enc, prev, h + torch.randn_like(h))[0]
        assert torch.allclose(a, b) != reads_hidden, choice
        c = model.refine_step(enc, (prev + 1) % 4 + 4, h)[0]
        assert not torch.allclose(a, c), choice  # the tokens are read either way
    train(toy_data, str(tmp_path), REFINE_ARGS + ["--refine-input", "tokens"], max_update=3)
    hyps = parse_hypotheses(generate(toy_data, str(tmp_path / "checkpoint_last.pt"), NAR).stdout)
    assert len(hyps) == 60
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["cfg"]["model"].refine_input == "tokens"
    # the compiled path: the refinement pass's graph has no use for the hidden states
    pytest.importorskip("onnxruntime")
    folder = str(tmp_path / "onnx")
    proc = run([sys.executable, str(REPO / "scripts" / "export_onnx.py"), "--path",
                str(tmp_path / "checkpoint_last.pt"), "--data-bin", toy_data, "--out", folder])
    assert "exported refine_nat to" in proc.stdout, proc.stdout[-2000:]
    fixed = NAR + ["--iter-decode-max-iter", "3", "--iter-decode-force-max-iter"]
    eager = parse_hypotheses(generate(toy_data, str(tmp_path / "checkpoint_last.pt"), fixed).stdout)
    compiled = parse_hypotheses(generate(toy_data, str(tmp_path / "checkpoint_last.pt"),
                                         fixed + ["--onnx-dir", folder]).stdout)
    assert compiled == eager


def test_checkpoint_of_older_version_loads_as_it_was_built(toy_data, tmp_path):
    """A refine_nat checkpoint whose arguments predate --decoder-norm/--refine-embedding is
    built pre-norm with the shared matrix (as it was trained) and decodes the same."""
    train(toy_data, str(tmp_path), REFINE_ARGS + ["--disable-validation", "--decoder-norm", "pre",
                                                  "--refine-embedding", "shared"], max_update=3)
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    for key in ("decoder_norm", "refine_embedding"):
        delattr(state["cfg"]["model"], key)
    torch.save(state, tmp_path / "old.pt")
    new = parse_hypotheses(generate(toy_data, str(tmp_path / "checkpoint_last.pt"), NAR).stdout)
    old = parse_hypotheses(generate(toy_data, str(tmp_path / "old.pt"), NAR).stdout)
    assert old == new and len(old) == 60


def _loss(task, model, criterion, sample):
    model.eval()
    with torch.no_grad():
        loss, sample_size, _ = criterion(model, sample)
    return float(loss), float(sample_size)


def _batches(task, sizes):
    """Two collated batches of the valid split with different lengths, and their union."""
    ds = task.dataset("valid")
    order = sorted(range(len(ds)), key=lambda i: ds.tgt_sizes[i])
    a, b = order[:sizes[0]], order[-sizes[1]:]
    return ds.collater([ds[i] for i in a]), ds.collater([ds[i] for i in b]), ds.collater([ds[i] for i in a + b])


@pytest.mark.parametrize("family", ["refine_nat", "lanmt"])
def test_objective_does_not_depend_on_how_a_batch_is_split(toy_data, family):
    """fairseq sums the losses and sample sizes of its workers (and of --update-freq steps):
    (loss_A + loss_B) / (ss_A + ss_B) must equal loss_U / ss_U for U = A + B, with A and B of
    different lengths (the old length term, scaled by each batch's tokens per sentence, broke
    this)."""
    extra = [] if family == "refine_nat" else ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"]
    task, model, criterion = _build(toy_data, extra)
    A, B, U = _batches(task, (7, 5))
    (la, sa), (lb, sb), (lu, su) = (_loss(task, model, criterion, s) for s in (A, B, U))
    assert sa != sb
    assert (la + lb) / (sa + sb) == pytest.approx(lu / su, rel=1e-5)


def test_remove_repeats_option(toy_data, refine_ckpt):
    """--remove-repeats drops tokens equal to the one before them; off, the output is raw."""
    from nar_refine.inference.hypotheses import remove_repeats

    h = {"tokens": torch.tensor([5, 5, 6, 5, 5, 5, 2]), "positional_scores": torch.tensor([-1., -2, -3, -4, -5, -6, 0]),
         "score": 0.0}
    remove_repeats(h)
    assert h["tokens"].tolist() == [5, 6, 5, 2] and h["positional_scores"].tolist() == [-1, -3, -4, 0]
    assert h["score"] == pytest.approx(-8 / 3)
    raw = parse_hypotheses(generate(toy_data, refine_ckpt[0], NAR + ["--iter-decode-max-iter", "0"]).stdout)
    dedup = parse_hypotheses(generate(toy_data, refine_ckpt[0], NAR + ["--iter-decode-max-iter", "0",
                                                                     "--remove-repeats"]).stdout)
    collapse = lambda s: " ".join(w for i, w in enumerate(s.split()) if i == 0 or w != s.split()[i - 1])
    assert dedup == {k: collapse(v) for k, v in raw.items()}
    assert any(dedup[k] != raw[k] for k in raw)  # the toy output has repeats to remove


def test_refine_diagnostic(toy_data, refine_ckpt, tmp_path):
    """scripts/refine_diagnostic.py on the toy model: per-step table, injected errors."""
    out = tmp_path / "diag"
    run([sys.executable, str(Path(USER_DIR).parent / "scripts" / "refine_diagnostic.py"), "--path",
         refine_ckpt[0], "--data-bin", toy_data, "--gen-subset", "test", "--steps", "3",
         "--remove-bpe", "none", "--inject-data", toy_data, "--out", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())
    steps = res["steps"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3] and res["sentences"] == 60
    assert all(0 <= r["repeat_rate"] <= 1 and r["bleu"] > 50 for r in steps)
    assert all("changed" in r for r in steps[1:])
    inj = res["injected"]
    assert all(inj[op]["errors"] > 50 for op in ("repeat", "replace", "swap"))
    assert inj["replace"]["fixed_rate"] > 0.5
    assert (tmp_path / "diag.png").exists() and "Injected errors" in (tmp_path / "diag.md").read_text()


# -- shortening (--target-eos-slack) ------------------------------------------------------------
def test_shortening_target_and_trim(toy_data):
    """The decoder target is y, then 1 + s </s> (s <= S in training; in evaluation the
    decoding canvas's 1 + ceil(S/2)); the length predictor still predicts len(y); decoding
    trims every output at its first </s>."""
    from nar_refine.inference.adaptive_refinement import trim_at_eos

    task, model, _ = _build(toy_data, ["--target-eos-slack", "2"])
    d = task.target_dictionary
    eos, pad = d.eos(), d.pad()
    target = torch.tensor([[7, 8, 9, eos], [7, 8, eos, pad]])
    model.eval()
    Y, content, canvas = model.decoder_target(target)  # evaluation: decoding's 1 + ceil(S/2)
    assert Y.tolist() == [[7, 8, 9, eos, eos], [7, 8, eos, eos, pad]]
    assert content.tolist() == [3, 2] and canvas.tolist() == [5, 4]
    assert model.training_extra(content).tolist() == [2, 2]
    Y, _, canvas = model.decoder_target(target, torch.tensor([3, 1]))
    assert Y.tolist() == [[7, 8, 9, eos, eos, eos], [7, 8, eos, pad, pad, pad]]
    model.train()
    extras = {int(model.training_extra(content)[0]) for _ in range(200)}
    assert extras == {1, 2, 3}
    assert model.canvas_lengths(torch.tensor([5])).tolist() == [7]  # 1 + ceil(S/2): training's mean
    tok, lp = trim_at_eos(torch.tensor([[5, eos, 6, eos], [5, 6, 7, 8]]), torch.ones(2, 4), eos, pad)
    assert tok.tolist() == [[5, pad, pad, pad], [5, 6, 7, 8]] and lp.tolist() == [[1, 0, 0, 0], [1] * 4]
    _, plain, _ = _build(toy_data, [])
    assert plain.decoder_target(target)[0].tolist() == [[7, 8, 9], [7, 8, pad]]
    with pytest.raises(Exception, match="--target-eos-slack must be >= 0"):
        _build(toy_data, ["--target-eos-slack", "-1"])


def test_shortening_ends_a_too_long_canvas(toy_data, tmp_path):
    """Trained with --target-eos-slack 2, decoder 1 given a canvas 3 positions longer than the
    reference (the longest training canvas) writes about the reference's length and then </s>
    (no filler), and fairseq-generate prints no </s> or padding inside a hypothesis."""
    train(toy_data, str(tmp_path), REFINE_ARGS + ["--disable-validation", "--target-eos-slack", "2",
                                                  "--max-tokens", "800"], max_update=250)
    ckpt = str(tmp_path / "checkpoint_last.pt")
    from fairseq import checkpoint_utils
    from nar_refine.inference.adaptive_refinement import trim_at_eos

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt], arg_overrides={"data": toy_data})
    model = models[0].eval()
    task.load_dataset("test")
    ds = task.dataset("test")
    sample = ds.collater([ds[i] for i in range(len(ds))])
    d = task.target_dictionary
    with torch.no_grad():
        enc = model.encode(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
        _, gold, _ = model.decoder_target(sample["target"])
        out = model.initial_step(enc, gold + 3)[0].argmax(-1)
        mask = torch.arange(out.size(1))[None, :] >= (gold + 3)[:, None]
        tok, _ = trim_at_eos(out.masked_fill(mask, d.pad()), None, d.eos(), d.pad())
    over = (tok.ne(d.pad()).sum(-1) - gold).float()  # without shortening: 3 for every sentence
    assert over.abs().mean() < 1.0 and (over < 3).float().mean() > 0.9, over.tolist()
    proc = generate(toy_data, ckpt, NAR + ["--retain-iter-history", "--iter-decode-max-iter", "3",
                                           "--iter-decode-force-max-iter"])
    hyps = parse_hypotheses(proc.stdout)
    assert len(hyps) == 60 and all(h and "</s>" not in h and "<pad>" not in h for h in hyps.values())
    steps = [l for l in proc.stdout.splitlines() if l.startswith("E-")]
    assert len(steps) == 60 * 4 and not any("</s>" in l or "<pad>" in l for l in steps)
    # the diagnostic injects its errors into y's positions of the gold canvas (y </s>)
    out = tmp_path / "diag"
    run([sys.executable, str(Path(USER_DIR).parent / "scripts" / "refine_diagnostic.py"), "--path", ckpt,
         "--data-bin", toy_data, "--gen-subset", "test", "--steps", "2", "--remove-bpe", "none",
         "--inject-data", toy_data, "--out", str(out)])
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["step"] for r in res["steps"]] == [0, 1, 2] and res["steps"][0]["bleu"] > 50
    assert res["injected"]["replace"]["fixed_rate"] > 0.5
