"""Decoding options through fairseq-generate (issue 11, items 2 and 3).

Every decoding option is checked when the generator is built (``validate_decoding_options``):
a bad value is one ``nar_refine: error:`` line, exit 2 and no hypothesis; 0, where the help
says what it means, still decodes. ``--teacher-path`` with ``--decoding refine`` reranks
refine_nat's length-beam candidates by the autoregressive teacher.
"""

import argparse
import math

import pytest
import torch

from helpers import (LANMT, NAR, REFINE, USER_DIR, assert_user_error, generate, parse_hypotheses,
                     teacher_one_by_one, train)

N_TEST = 60  # sentences of the toy test split


@pytest.fixture(scope="module")
def refine_ckpt(toy_data, tmp_path_factory):
    """refine_nat after 20 updates: good enough to rank lengths, not yet sure of them."""
    save = tmp_path_factory.mktemp("refine_opts")
    train(toy_data, str(save), REFINE, max_update=20)
    return str(save / "checkpoint_last.pt")


@pytest.fixture(scope="module")
def lanmt_ckpt(toy_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("lanmt_opts")
    train(toy_data, str(save), LANMT, max_update=20)
    return str(save / "checkpoint_last.pt")


# -- bad values: one line each, no hypothesis --------------------------------------------------
BAD = [
    ("refine", ["--iter-decode-max-iter", "-1"], "--iter-decode-max-iter must be >= 0"),
    ("delta", ["--iter-decode-max-iter", "-1"], "--iter-decode-max-iter must be >= 0"),
    ("refine", ["--iter-decode-with-beam", "0"], "--iter-decode-with-beam must be >= 1"),
    ("delta", ["--latent-search-size", "0"], "--latent-search-size must be >= 1 (1 = no search), got 0"),
    ("delta", ["--latent-search-size", "-2"], "--latent-search-size must be >= 1 (1 = no search), got -2"),
    ("delta", ["--latent-search-size", "2", "--latent-search-noise", "-0.5"],
     "--latent-search-noise must be finite and >= 0"),
    ("delta", ["--latent-search-size", "2", "--latent-search-noise", "nan"],
     "--latent-search-noise must be finite and >= 0"),
    ("delta", ["--latent-search-size", "2", "--latent-search-max-tokens", "-1"],
     "--latent-search-max-tokens must be >= 0 (0 = all candidates in one chunk), got -1"),
    ("prior", ["--score-steps", "-1"], "--score-steps must be >= 0"),
    ("prior", ["--score-alpha", "0"], "--score-alpha must be positive and finite, got 0.0"),
    ("prior", ["--score-alpha", "-1"], "--score-alpha must be positive and finite"),
    ("prior", ["--score-alpha", "inf"], "--score-alpha must be positive and finite, got inf"),
    ("refine", ["--adaptive-window", "-1"], "--adaptive-window must be >= 0"),
    ("refine", ["--adaptive-min-steps", "-1"], "--adaptive-min-steps must be >= 0"),
    ("prior", ["--score-line-search=-1,nan"], "--score-line-search wants comma-separated positive"),
    ("refine", ["--latent-search-size", "3"],
     "--latent-search-size 3 with --decoding refine: refine_nat has no latent to search"),
    ("refine", ["--iter-decode-max-iter", "100000", "--iter-decode-force-max-iter"],
     "--iter-decode-max-iter must be <= 1000"),
    ("prior", ["--score-steps", "100000"], "--score-steps must be <= 1000"),
    ("prior", ["--score-line-search", "0.5,,1"], "positive finite step sizes (e.g. 0.5,1,2), got '0.5,,1'"),
    ("refine", ["--nbest", "5"], "--nbest 5: nar_translation decoders give one hypothesis per sentence"),
    ("delta", ["--decode-memory-gb", "-1"], "--decode-memory-gb must be finite and >= 0"),
]


@pytest.mark.parametrize("decoding,args,phrase", BAD, ids=[" ".join(a) + f" ({d})" for d, a, _ in BAD])
def test_bad_value_is_one_line(toy_data, refine_ckpt, lanmt_ckpt, decoding, args, phrase):
    ckpt = refine_ckpt if decoding == "refine" else lanmt_ckpt
    proc = generate(toy_data, ckpt, [*NAR, "--decoding", decoding, *args], check=False)
    assert_user_error(proc, phrase)
    assert not parse_hypotheses(proc.stdout)


def test_every_bad_value_is_named_in_the_line(toy_data, refine_ckpt):
    proc = generate(toy_data, refine_ckpt, [*NAR, "--decoding", "refine", "--iter-decode-max-iter",
                                            "-1", "--adaptive-window", "-3", "--score-alpha", "0"],
                    check=False)
    line = assert_user_error(proc, "--iter-decode-max-iter must be >= 0 (0 = no refinement step), got -1",
                             "--adaptive-window must be >= 0 (0 = never stop early), got -3",
                             "--score-alpha must be positive and finite, got 0.0")
    assert not parse_hypotheses(proc.stdout), line


# -- 0 where the help allows it ---------------------------------------------------------------
def test_zero_where_allowed_decodes(toy_data, refine_ckpt, lanmt_ckpt):
    # refine: no refinement step at all = decoder 1's output, every sentence 0 steps
    proc = generate(toy_data, refine_ckpt, [*NAR, "--decoding", "refine", "--iter-decode-max-iter", "0",
                                            "--adaptive-window", "0", "--adaptive-min-steps", "0"])
    assert len(parse_hypotheses(proc.stdout)) == N_TEST
    # delta with 0 steps is the prior mean's decode; noise 0: every candidate is the prior mean,
    # so latent search (model's own score) returns the prior decode too; score-steps 0 accepted
    prior = parse_hypotheses(generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "prior"]).stdout)
    delta0 = generate(toy_data, lanmt_ckpt, [*NAR, "--decoding", "delta", "--iter-decode-max-iter", "0",
                                             "--latent-search-size", "2", "--latent-search-noise", "0",
                                             "--score-steps", "0"])
    assert len(prior) == N_TEST and parse_hypotheses(delta0.stdout) == prior


# -- the teacher reranks refine_nat's length beam ----------------------------------------------
def test_teacher_reranks_length_beam(toy_data, refine_ckpt, ar_teacher):
    """The kept candidate is the argmax of the teacher's scores computed one by one, and
    differs from refine_nat's own choice for some sentences."""
    from fairseq import checkpoint_utils, utils

    from nar_refine.inference import build_nar_generator

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [refine_ckpt], arg_overrides={"data": toy_data})
    model = models[0].eval()
    task.load_dataset("test")
    task.cfg.decoding, task.cfg.teacher_path = "refine", ar_teacher
    gen = build_nar_generator(task, [model], argparse.Namespace(iter_decode_with_beam=5,
                                                                iter_decode_max_iter=4))
    assert gen.scorer is not None and gen.length_beam == 5
    gen.keep_candidates = True
    itr = task.get_batch_iterator(task.dataset("test"), max_sentences=16, seed=1)
    pad = task.source_dictionary.pad()
    differs = sentences = 0
    for sample in itr.next_epoch_itr(shuffle=False):
        for row, hypos in enumerate(gen.generate([model], sample)):
            src = sample["net_input"]["src_tokens"][row]
            src = src[src.ne(pad)]
            cands = hypos[0]["candidates"]
            assert len(cands) == 5
            singles = [teacher_one_by_one(gen.scorer.model, task, src, c["tokens"]) for c in cands]
            for c, single in zip(cands, singles):  # batched scores == one-by-one scores
                assert math.isclose(c["score"], single, abs_tol=1e-3), (c["score"], single)
            chosen = hypos[0]["tokens"][:-1]  # without the final </s>
            teacher_best = max(range(5), key=lambda i: singles[i])
            assert torch.equal(chosen, cands[teacher_best]["tokens"]), (chosen, cands)
            assert math.isclose(hypos[0]["rerank_score"], singles[teacher_best], abs_tol=1e-3)
            own_best = max(range(5), key=lambda i: cands[i]["rank"])
            differs += not torch.equal(cands[own_best]["tokens"], chosen)
            sentences += 1
    assert sentences == N_TEST
    assert differs > 0, "the teacher never changed refine_nat's choice: the test proves little"


def test_teacher_with_refine_through_generate(toy_data, refine_ckpt, ar_teacher):
    """fairseq-generate: the teacher is loaded and changes some hypotheses of the same beam."""
    beam = [*NAR, "--decoding", "refine", "--iter-decode-with-beam", "5", "--iter-decode-max-iter", "4"]
    own = parse_hypotheses(generate(toy_data, refine_ckpt, beam).stdout)
    proc = generate(toy_data, refine_ckpt, [*beam, "--teacher-path", ar_teacher])
    reranked = parse_hypotheses(proc.stdout)
    assert "length beam) are scored by the autoregressive teacher" in proc.stderr
    assert len(own) == len(reranked) == N_TEST
    assert own != reranked
