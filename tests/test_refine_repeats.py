"""--refine-repeats mask / drop: what decoder 2 reads at a token equal to the one before it
(inference/adaptive_refinement.py): no token (mask), or the token deleted and the gap closed
(drop)."""

import pytest
import torch

from nar_refine.errors import NARConfigError
from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator, drop_repeated_tokens
from nar_refine.modules.corruption import repeated_positions
from test_decoding_ops import batch, build

PAD = 1


def test_drop_repeated_tokens_moves_tokens_and_states_left():
    tokens = torch.tensor([[5, 5, 6, 7, 7, 7, 8, PAD],
                           [9, 4, 9, 9, PAD, PAD, PAD, PAD],
                           [3, 3, 3, 3, 3, 3, 3, 3]])
    hidden = torch.arange(24, dtype=torch.float).view(3, 8, 1) + 100 * tokens[..., None]
    out, h, lengths = drop_repeated_tokens(tokens, hidden, PAD)
    assert out.tolist() == [[5, 6, 7, 8, PAD, PAD, PAD, PAD],
                            [9, 4, 9, PAD, PAD, PAD, PAD, PAD],
                            [3, PAD, PAD, PAD, PAD, PAD, PAD, PAD]]
    assert lengths.tolist() == [4, 3, 1]  # a row keeps its first token
    # each kept token brings its own decoder state (the first of a run); pads get zeros
    assert h[0, :4, 0].tolist() == [500 + 0, 600 + 2, 700 + 3, 800 + 6]
    assert h[1, :3, 0].tolist() == [900 + 8, 400 + 9, 900 + 10]
    assert h[0, 4:].abs().sum() == 0 and h[2, 1:].abs().sum() == 0


def _history(gen, model, sample):
    hypos = gen.generate([model], sample)
    # each history entry is the decoder's row without pads, plus the </s> hypotheses end with
    return [[[t for t in e["tokens"].tolist() if t != PAD][:-1] for e in h[0]["history"]] for h in hypos]


def _repeats(toks):
    return sum(a == b for a, b in zip(toks[1:], toks[:-1]))


def test_each_step_refines_the_sentence_without_its_repeats(toy_data):
    """On an untrained refine_nat (whose outputs are full of repeats): without the option a row
    keeps its length; with it, step l's output is exactly as long as step l-1's output minus
    its repeated tokens, i.e. decoder 2 read the shortened sentence."""
    task, model = build(toy_data, "refine_nat_tiny")
    sample = batch(task, 8)
    kw = dict(max_iter=3, adaptive=False, retain_history=True)
    plain = _history(AdaptiveRefinementGenerator(task.target_dictionary, repeats="keep", **kw),
                     model, sample)
    assert all(len({len(s) for s in row}) == 1 for row in plain)
    dropped = _history(AdaptiveRefinementGenerator(task.target_dictionary, repeats="drop", **kw),
                       model, sample)
    seen = 0
    for row in dropped:
        for prev, cur in zip(row, row[1:]):
            assert len(cur) == len(prev) - _repeats(prev)
            seen += _repeats(prev)
    assert seen > 0, "the untrained model made no repeats: the test checks nothing"
    # step 0 is decoder 1's output, the same with or without the option
    assert [r[0] for r in dropped] == [r[0] for r in plain]


def test_option_reaches_the_generator_and_is_refused_elsewhere(toy_data):
    from argparse import Namespace

    from omegaconf import open_dict

    task, model = build(toy_data, "refine_nat_tiny")
    with open_dict(task.cfg):
        task.cfg.refine_repeats = "mask"
        task.cfg.decoding = "refine"
    gen = task.build_generator([model], Namespace(iter_decode_max_iter=2))
    assert gen.repeats == "mask"
    lanmt_task, lanmt = build(toy_data, "lanmt_tiny")
    with open_dict(lanmt_task.cfg):
        lanmt_task.cfg.refine_repeats = "drop"
        lanmt_task.cfg.decoding = "delta"
    with pytest.raises(NARConfigError, match="--refine-repeats drop applies to --decoding refine"):
        lanmt_task.build_generator([lanmt], Namespace(iter_decode_max_iter=2))


def test_mask_reads_repeated_positions_without_their_token(toy_data):
    """mask: decoder 2 gets token_mask = the repeated positions of its input, and a masked
    position's input is the previous hidden state alone (the token's embedding is not added)."""
    task, model = build(toy_data, "refine_nat_tiny")
    sample = batch(task, 8)
    seen = []
    real = model.refine_step

    def spy(enc, prev_tokens, prev_hidden, token_mask=None, project=True):
        seen.append((prev_tokens.clone(), token_mask))
        return real(enc, prev_tokens, prev_hidden, token_mask=token_mask, project=project)

    model.refine_step = spy
    AdaptiveRefinementGenerator(task.target_dictionary, max_iter=2, adaptive=False,
                                repeats="mask").generate([model], sample)
    assert len(seen) == 2 and all(m is not None for _, m in seen)
    for prev, m in seen:
        assert torch.equal(m, repeated_positions(prev, PAD))
    assert sum(int(m.sum()) for _, m in seen) > 0, "no repeats: the test checks nothing"
    seen.clear()  # keep: every token read
    AdaptiveRefinementGenerator(task.target_dictionary, max_iter=2, adaptive=False,
                                repeats="keep").generate([model], sample)
    assert len(seen) == 2 and all(not m.any() for _, m in seen)
    # the decoder: with every token masked its input is the hidden state alone, so the token
    # ids do not matter; unmasked, they do
    del model.refine_step
    tokens = seen[0][0]
    with torch.no_grad():
        enc = model.encode(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
        _, hidden = model.initial_step(enc, tokens.ne(PAD).sum(1))
        other = tokens.masked_fill(tokens.ne(PAD), 7)
        everything = tokens.ne(PAD)
        a = model.refine_step(enc, tokens, hidden, token_mask=everything)[0]
        b = model.refine_step(enc, other, hidden, token_mask=everything)[0]
        assert torch.allclose(a, b)
        assert not torch.allclose(model.refine_step(enc, tokens, hidden)[0],
                                  model.refine_step(enc, other, hidden)[0])


def test_training_passes_mask_repeated_tokens(toy_data):
    """--refine-mask-repeats (refine_nat_loss, parsed by fairseq's own parser) reaches the
    training plan and the validation chain; each refinement pass then gets token_mask = the
    repeated positions of its input, and without the option none."""
    import argparse

    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from helpers import USER_DIR

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    crits = {}
    for flag in ([], ["--refine-mask-repeats"]):
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
            options.get_training_parser(),
            [toy_data, "--user-dir", USER_DIR, "--task", "nar_translation", "--share-all-embeddings",
             "--cpu", "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", *flag]))
        task = tasks.setup_task(cfg.task)
        crits[bool(flag)] = task.build_criterion(cfg.criterion)
    assert not crits[False].plan(True).mask_repeats and not crits[False].plan(False).mask_repeats
    assert crits[True].plan(True).mask_repeats and crits[True].plan(False).mask_repeats

    task, model = build(toy_data, "refine_nat_tiny")
    sample = batch(task, 8)
    seen = []
    real = model.decoder.refine_step

    def spy(enc, prev_tokens, prev_hidden, token_mask=None, project=True):
        seen.append((prev_tokens.clone(), token_mask))
        return real(enc, prev_tokens, prev_hidden, token_mask, project)

    model.decoder.refine_step = spy
    net = sample["net_input"]
    with torch.no_grad():
        for with_mask in (False, True):
            seen.clear()
            model(net["src_tokens"], net["src_lengths"], tgt_tokens=sample["target"],
                  plan=crits[with_mask].plan(False))
            assert len(seen) == crits[with_mask].passes - 1
            if not with_mask:
                assert all(m is None for _, m in seen)
            else:
                assert all(torch.equal(m, repeated_positions(p, PAD)) for p, m in seen)
                assert sum(int(m.sum()) for _, m in seen) > 0, "no repeats: nothing checked"
