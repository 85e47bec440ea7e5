"""The denoising corruption: what the refinement decoder is taught to repair."""

import torch

from nar_refine.modules.corruption import corrupt

OPS = ("swap", "replace", "repeat")


def _sentences(n=400, width=12, seed=0):
    """Rows of distinct tokens 10..(10+width) with random lengths 1..width (pad = 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    tokens = (torch.arange(width) + 10).repeat(n, 1)
    pad = torch.arange(width)[None, :] >= lengths[:, None]
    return tokens.masked_fill(pad, 1), pad, lengths


def test_exact_count_corrupts_max_floor_rate_t_1_positions():
    """replace only, replacements outside the sentence's tokens: exactly max(floor(rate*T), 1)
    positions change (at most T-1), pads never."""
    tokens, pad, lengths = _sentences()
    for rate in (0.1, 0.35, 0.6):
        torch.manual_seed(1)
        out = corrupt(tokens, pad, rate, ("replace",), 100, 200)
        changed = out.ne(tokens).sum(1)
        want = torch.floor(rate * lengths.float()).long().clamp(min=1)
        want = torch.minimum(want, (lengths - 1).clamp(min=1))
        assert torch.equal(changed, want), rate
        assert torch.equal(out[pad], tokens[pad])


def test_no_clean_input_and_runs_of_repeats():
    """exact: no row comes out clean, and sequential repeats form runs of three or more;
    independent (nar_refine < 0.3): many clean rows at a low rate and no such runs."""
    tokens, pad, lengths = _sentences()
    torch.manual_seed(2)
    exact = corrupt(tokens, pad, 0.1, OPS, 100, 200)
    torch.manual_seed(2)
    old = corrupt(tokens, pad, 0.1, OPS, 100, 200, count="independent")
    real = lengths >= 2  # a swap or repeat of a one-token row is a replace
    assert not (exact.eq(tokens).all(1) & real).any()
    assert (old.eq(tokens).all(1) & real).float().mean() > 0.2

    def has_run3(x):
        eq = x[:, 1:].eq(x[:, :-1]) & ~pad[:, 1:]
        return (eq[:, 1:] & eq[:, :-1]).any(1)

    torch.manual_seed(3)
    exact = corrupt(tokens, pad, 0.6, ("repeat",), 100, 200)
    torch.manual_seed(3)
    old = corrupt(tokens, pad, 0.6, ("repeat",), 100, 200, count="independent")
    assert has_run3(exact).float().mean() > 0.2
    assert not has_run3(old).any()


def test_operations_keep_the_multiset_or_overwrite_one_position():
    """swap only: each row is a permutation of itself; repeat only (a token overwrites the next
    one): every position holds the original token of itself or of a position to its left."""
    tokens, pad, lengths = _sentences()
    torch.manual_seed(4)
    swapped = corrupt(tokens, pad, 0.3, ("swap",), 100, 200)
    real = lengths >= 2  # a one-token row has nothing to swap with: it is replaced
    assert torch.equal(swapped[real].sort(1).values, tokens[real].sort(1).values)
    assert swapped[~real].ne(tokens[~real]).any(1).all()
    torch.manual_seed(4)
    repeated = corrupt(tokens, pad, 0.3, ("repeat",), 100, 200)
    # tokens are 10 + position, so "from the left" is "not larger than its own original"
    assert (repeated[real] <= tokens[real]).all()
    assert repeated.ne(tokens).any()


def test_reproducible_from_torch_seed():
    tokens, pad, _ = _sentences()
    torch.manual_seed(5)
    a = corrupt(tokens, pad, 0.4, OPS, 100, 200)
    torch.manual_seed(5)
    b = corrupt(tokens, pad, 0.4, OPS, 100, 200)
    assert torch.equal(a, b)
