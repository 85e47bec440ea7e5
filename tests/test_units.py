"""Unit tests: corruption ops, length predictor, token-loss masking, uniform copy, compat."""

import pytest
import torch

import nar_refine  # noqa: F401  (applies the compat patches)
from nar_refine.criterions.token_loss import masked_token_loss
from nar_refine.modules import LengthPredictor, uniform_copy
from nar_refine.modules.corruption import corrupt, parse_corruptions

PAD = 1


def batch():
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, PAD, PAD, PAD]])
    return tokens, tokens.eq(PAD)


def test_parse_corruptions():
    assert parse_corruptions("swap, repeat") == ("swap", "repeat")
    with pytest.raises(ValueError, match="unknown corruption"):
        parse_corruptions("swap,drop")
    with pytest.raises(ValueError):
        parse_corruptions("")


def test_zero_rate_is_identity():
    tokens, pad = batch()
    assert torch.equal(corrupt(tokens, pad, 0.0, ("swap",), 4, 30), tokens)


def test_replace_changes_only_real_tokens():
    torch.manual_seed(0)
    tokens, pad = batch()
    out = corrupt(tokens, pad, 1.0, ("replace",), 4, 9, count="independent")  # 4..8: disjoint from the tokens
    assert torch.equal(out[pad], tokens[pad])
    assert ((out[~pad] >= 4) & (out[~pad] < 9)).all()


def test_repeat_copies_previous_token():
    tokens, pad = batch()
    out = corrupt(tokens, pad, 1.0, ("repeat",), 4, 30, count="independent")
    # independent count: every position but the first copies its left neighbour (applied on the original)
    assert out[0].tolist() == [10, 10, 11, 12, 13, 14]
    assert out[1].tolist() == [20, 20, 21, PAD, PAD, PAD]


def test_swap_exchanges_neighbours_and_keeps_the_multiset():
    tokens, pad = batch()
    out = corrupt(tokens, pad, 1.0, ("swap",), 4, 30, count="independent")
    assert out[0].tolist() == [11, 10, 13, 12, 15, 14]
    assert out[1].tolist() == [21, 20, 22, PAD, PAD, PAD]  # no swap with padding
    for _ in range(20):
        out = corrupt(tokens, pad, 0.5, ("swap",), 4, 30, count=("exact", "independent")[_ % 2])
        for row_in, row_out in zip(tokens, out):
            assert sorted(row_in.tolist()) == sorted(row_out.tolist())


def test_mixed_rate_statistics():
    torch.manual_seed(1)
    tokens = torch.arange(4, 1004).view(10, 100)
    out = corrupt(tokens, torch.zeros_like(tokens, dtype=torch.bool), 0.3, ("replace",), 2000, 3000)
    frac = out.ne(tokens).float().mean().item()
    assert 0.25 < frac < 0.35


def test_length_predictor_targets_and_beam():
    lp = LengthPredictor(8, 16, max_offset=3)
    src = torch.tensor([5, 2])
    tgt = torch.tensor([7, 10])
    assert lp.target(src, tgt).tolist() == [5, 6]  # offsets 2 and clamp(8)=3, shifted by 3
    logits = torch.full((2, 7), -10.0)
    logits[0, 4] = 10.0  # offset +1
    logits[1, 0] = 10.0  # offset -3 -> length -1 -> clamped to 1
    assert lp.predict(logits, src).tolist() == [[6], [1]]
    assert lp.predict(logits, src, beam=3).tolist() == [[5, 6, 7], [1, 1, 1]]
    assert lp.predict(logits, src, beam=3, max_length=6)[0].tolist() == [5, 6, 6]
    lprob = lp.log_prob(logits, src, torch.tensor([[6, 5], [100, 2]]))
    assert lprob[0, 0] > lprob[0, 1] and lprob[1, 0] == float("-inf")
    loss = lp.loss(lp(torch.randn(2, 8)), src, tgt)
    assert loss.dim() == 0 and loss > 0


def test_token_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    target = torch.randint(2, 10, (2, 4))
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    loss, nll = masked_token_loss(logits, target, mask)
    changed = logits.clone()
    changed[~mask] = 100.0  # whatever the model says at pads
    loss2, _ = masked_token_loss(changed, target, mask)
    assert torch.allclose(loss, loss2)
    expected = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
    assert torch.allclose(nll, expected)
    smoothed, nll_s = masked_token_loss(logits, target, mask, label_smoothing=0.1)
    assert torch.allclose(nll_s, nll) and not torch.allclose(smoothed, nll)


def test_uniform_copy():
    src = torch.arange(5).float().view(1, 5, 1).repeat(2, 1, 1)
    out = uniform_copy(src, torch.tensor([5, 3]), torch.tensor([9, 3]))
    assert out[0, :, 0].tolist() == [0, 0, 1, 2, 2, 2, 3, 4, 4]  # round(t * 4/8)
    assert out[1, :3, 0].tolist() == [0, 1, 2]


def test_torch_load_patch_keeps_explicit_choice(tmp_path):
    import argparse

    path = tmp_path / "x.pt"
    torch.save({"args": argparse.Namespace(a=1)}, path)
    assert torch.load(path)["args"].a == 1  # fairseq's silent call now works
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # an explicit choice is still honoured


def test_batch_by_size_keeps_the_last_batch():
    import numpy as np
    from fairseq.data import data_utils

    batches = data_utils.batch_by_size(np.arange(60), None, num_tokens_vec=np.full(60, 9),
                                       max_sentences=32, required_batch_size_multiple=8)
    assert sum(len(b) for b in batches) == 60
