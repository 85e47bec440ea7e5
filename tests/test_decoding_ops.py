"""Decoding without per-sentence device work (issue 10, items 6-10), in process on tiny
untrained models (the op counts do not depend on training).

Every tensor operation a generator dispatches outside the networks (outside any nn.Module's
forward, and outside the final host-side construction of fairseq's hypothesis dicts, which
runs on CPU tensors after one transfer per batch) is counted with a TorchDispatchMode. Before
issue 10 the latent generators kept per-row Python lists, so these counts grew with the batch
size and with the latent-search size m; now they must not.
"""

import argparse

import pytest
import torch
from fairseq import options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from torch.utils._python_dispatch import TorchDispatchMode

import nar_refine  # noqa: F401
from helpers import USER_DIR
from nar_refine.inference import adaptive_refinement, latent_refinement
from nar_refine.inference.latent_refinement import LatentRefinementGenerator, delta_refiner
from nar_refine.inference.latent_search import ModelScorer


class OpCounter(TorchDispatchMode):
    """Counts aten ops dispatched while no nn.Module forward runs and counting is not paused."""

    def __init__(self):
        super().__init__()
        self.n, self.depth, self.paused = 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and not self.paused:
            self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn, monkeypatch):
    counter = OpCounter()
    pre = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, i: setattr(counter, "depth", counter.depth + 1))
    post = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: setattr(counter, "depth", counter.depth - 1))

    def paused(fn_):
        def wrapper(*a, **k):
            counter.paused += 1
            try:
                return fn_(*a, **k)
            finally:
                counter.paused -= 1
        return wrapper

    monkeypatch.setattr(latent_refinement, "latent_hypotheses", paused(latent_refinement.latent_hypotheses))
    monkeypatch.setattr(adaptive_refinement, "refine_hypotheses", paused(adaptive_refinement.refine_hypotheses))
    try:
        with counter:
            out = fn()
    finally:
        pre.remove()
        post.remove()
        monkeypatch.undo()
    return counter.n, out


def build(data, arch):
    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_training_parser(),
        [data, "--user-dir", USER_DIR, "--task", "nar_translation", "--share-all-embeddings",
         "--cpu", "--arch", arch, "--criterion", "refine_nat_loss" if "refine" in arch else "lanmt_elbo"]))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("test")
    return task, model


def batch(task, n):
    ds = task.dataset("test")
    return ds.collater([ds[i] for i in range(n)])


@pytest.fixture(scope="module")
def lanmt(toy_data):
    return build(toy_data, "lanmt_tiny")


def latent_gen(task, **kw):
    return LatentRefinementGenerator(task.target_dictionary, **kw)


@pytest.mark.parametrize("name,kw", [
    ("delta, 3 fixed steps", dict(refiner=delta_refiner, max_iter=3, adaptive=False)),
    ("delta, 3 fixed steps, ascent check", dict(refiner=delta_refiner, max_iter=3, adaptive=False,
                                                ascent_check=True)),
    ("score-like refiner (never decodes)", dict(refiner=lambda m, e, z: (z * 0.9, None), max_iter=2,
                                                adaptive=False)),
])
def test_latent_ops_do_not_grow_with_batch_or_search_size(lanmt, monkeypatch, name, kw):
    task, model = lanmt
    scorer = ModelScorer(task.target_dictionary.pad())
    counts = {}
    for bsz in (1, 8):
        for m in (2, 6):
            gen = latent_gen(task, search_size=m, search_noise=0.0, scorer=scorer, **kw)
            sample = batch(task, bsz)
            torch.manual_seed(0)
            n, hypos = count_ops(lambda: gen.generate([model], sample), monkeypatch)
            assert len(hypos) == bsz
            counts[bsz, m] = n
    # noise 0: every candidate is the prior mean, so every row runs every step (the ascent check
    # judges them all alike) and the counts compare like with like
    assert len(set(counts.values())) == 1, (name, counts)


def test_delta_runs_the_posterior_only_for_continuing_rows(lanmt):
    """A sentence whose y did not change stops; its posterior is not computed (item 10)."""
    task, model = lanmt
    calls = []
    hook = model.posterior_out.register_forward_hook(lambda mod, i, o: calls.append(o.size(0)))
    try:
        gen = latent_gen(task, refiner=delta_refiner, max_iter=6)
        sample = batch(task, 8)
        hypos = gen.generate([model], sample)
    finally:
        hook.remove()
    steps = [h[0]["steps"] for h in hypos]
    # step k's posterior runs for the rows that take step k: sum over steps = sum of steps
    assert sum(calls) == sum(steps), (calls, steps)
    assert len(calls) <= max(steps) + 1


def test_latent_search_in_chunks_equals_one_chunk(lanmt):
    """--latent-search-max-tokens splits the B x m candidates into chunks of whole sentences
    (memory); the translations are those of one chunk (with the same noise)."""
    task, model = lanmt
    scorer = ModelScorer(task.target_dictionary.pad())
    sample = batch(task, 8)
    src_len = sample["net_input"]["src_tokens"].size(1)
    outs = []
    for max_tokens in (0, 3 * 4 * src_len, 1):  # one chunk; 3 sentences per chunk; 1 per chunk
        gen = latent_gen(task, refiner=delta_refiner, max_iter=2, search_size=4, search_noise=0.0,
                         scorer=scorer, max_search_tokens=max_tokens)
        outs.append([h[0]["tokens"].tolist() for h in gen.generate([model], sample)])
    assert outs[0] == outs[1] == outs[2]


def test_refine_ops_do_not_grow_with_batch_or_beam(toy_data, monkeypatch):
    from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator

    task, model = build(toy_data, "refine_nat_tiny")
    counts = {}
    for bsz in (1, 8):
        for beam in (1, 3):
            gen = AdaptiveRefinementGenerator(task.target_dictionary, max_iter=3, adaptive=False,
                                              length_beam=beam)
            sample = batch(task, bsz)
            n, hypos = count_ops(lambda: gen.generate([model], sample), monkeypatch)
            assert len(hypos) == bsz
            counts[bsz, beam] = n
    # (a batch of one takes a few more views in PyTorch's indexing than larger ones)
    assert counts[8, 1] <= counts[1, 1] and counts[8, 3] <= counts[1, 3], counts
    assert counts[1, 3] <= counts[1, 1] + 16 and counts[8, 3] <= counts[8, 1] + 16, counts


def test_decoding_runs_in_inference_mode(lanmt):
    """Decoding builds no autograd state (torch.inference_mode; issue 10.7)."""
    task, model = lanmt
    seen = []
    hook = model.posterior_out.register_forward_hook(lambda mod, i, o: seen.append(torch.is_inference_mode_enabled()))
    try:
        latent_gen(task, refiner=delta_refiner, max_iter=2).generate([model], batch(task, 4))
    finally:
        hook.remove()
    assert seen and all(seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_argmax_log_probs_equals_log_softmax_then_mask(dtype):
    """max logit - logsumexp == log_softmax(...).index_fill(banned, -inf).max(-1), without the
    full-vocabulary copies (issue 10.8); banned ids are never chosen."""
    from nar_refine.modules.token_scores import argmax_log_probs

    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 50) * 4).to(dtype)
    banned = torch.tensor([0, 1, 2, 3])
    logits[..., 2] += 100  # the unmasked argmax would be a banned id
    want_scores, want_tokens = torch.log_softmax(logits.float(), -1).index_fill(-1, banned, float("-inf")).max(-1)
    scores, tokens = argmax_log_probs(logits.clone(), banned)
    assert torch.equal(tokens, want_tokens) and not torch.isin(tokens, banned).any()
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, want_scores, atol=1e-4)
    plain_scores, plain_tokens = argmax_log_probs(logits.clone())
    assert torch.equal(plain_tokens, logits.float().argmax(-1))
    assert torch.allclose(plain_scores, torch.log_softmax(logits.float(), -1).max(-1)[0], atol=1e-4)
