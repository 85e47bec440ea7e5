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
from nar_refine.modules import token_scores


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
    # judges them all alike) and the counts compare like with like; (a batch of one row per
    # distinct candidate takes a few more views in PyTorch's indexing than larger ones)
    assert counts[1, 2] == counts[1, 6] and counts[8, 2] == counts[8, 6], (name, counts)
    assert counts[1, 2] - 8 <= counts[8, 2] <= counts[1, 2], (name, counts)


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
            with pytest.MonkeyPatch.context() as mp:
                # the vocabulary projection's blocks (one per ROW_BLOCK positions) grow with the
                # batch by design; everything else must not
                mp.setattr(token_scores, "ROW_BLOCK", 1 << 30)
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


@pytest.mark.parametrize("scores", [True, False])
def test_projected_argmax_in_blocks_equals_one_block(monkeypatch, scores):
    """The vocabulary projection read ROW_BLOCK positions at a time gives every position the
    tokens and log-probabilities (bit for bit) of projecting the whole batch at once: ties
    (equal rows of the projection), banned ids and a last block shorter than the others."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 300, bias=False)
    with torch.no_grad():
        proj.weight[7] = proj.weight[5]  # ids 5 and 7 always tie: 5 must win
        proj.weight[2] = proj.weight[5] * 3  # a banned id that would win
    hidden = torch.randn(4, 29, 16)
    hidden[0, :3] = proj.weight[5].detach() * 5  # positions where the tie is the maximum
    banned = torch.tensor([0, 1, 2])
    want = token_scores.argmax_log_probs(proj(hidden), banned)
    if not scores:
        want = (None, want[1])
    blocks = []
    real = proj.forward
    monkeypatch.setattr(proj, "forward", lambda x: blocks.append(x.shape[:-1]) or real(x))
    monkeypatch.setattr(token_scores, "ROW_BLOCK", 10)
    got = token_scores.projected_argmax(hidden, proj, banned, scores)
    assert blocks == [(10,)] * 11 + [(6,)]  # 116 positions, never all at once
    assert torch.equal(got[1], want[1]) and bool((got[1][0, :3] == 5).all())
    assert not torch.isin(got[1], banned).any()
    if scores:
        assert got[0].dtype == torch.float32 and torch.equal(got[0], want[0])
    else:
        assert got[0] is None
    blocks.clear()
    monkeypatch.setattr(token_scores, "ROW_BLOCK", 116)  # fits: one call on the B x T x d states
    assert torch.equal(token_scores.projected_argmax(hidden, proj, banned, scores)[1], want[1])
    assert blocks == [(4, 29)]


def test_projected_token_log_probs_in_blocks_equals_one_block(monkeypatch):
    torch.manual_seed(1)
    proj = torch.nn.Linear(16, 300, bias=False)
    hidden, target = torch.randn(3, 41, 16), torch.randint(0, 300, (3, 41))
    want = torch.log_softmax(proj(hidden), -1, dtype=torch.float32).gather(-1, target[..., None])[..., 0]
    monkeypatch.setattr(token_scores, "ROW_BLOCK", 16)
    assert torch.equal(token_scores.projected_token_log_probs(hidden, proj, target), want)


def test_decoding_in_projection_blocks_equals_one_block(toy_data, lanmt, ar_teacher, monkeypatch):
    """refine_nat (decoder 1, refinement steps, length beam), LaNMT delta inference and latent
    search with the teacher give the same tokens and scores whatever the projection's block."""
    from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator
    from nar_refine.inference.teacher import TeacherScorer

    task, model = lanmt
    teacher = TeacherScorer.from_path(ar_teacher, task, like=model)
    refine_task, refine = build(toy_data, "refine_nat_tiny")
    sample = batch(task, 12)
    runs = []
    for block in (1 << 30, 7):
        monkeypatch.setattr(token_scores, "ROW_BLOCK", block)
        out = []
        gens = [(refine, AdaptiveRefinementGenerator(refine_task.target_dictionary, max_iter=3,
                                                     length_beam=2, scorer=teacher)),
                (model, latent_gen(task, refiner=delta_refiner, max_iter=2)),
                (model, latent_gen(task, refiner=delta_refiner, max_iter=1, search_size=3,
                                   search_noise=1.0, scorer=teacher))]
        for m, gen in gens:
            torch.manual_seed(3)
            out.append([(h[0]["tokens"].tolist(), h[0]["positional_scores"].tolist(),
                         h[0].get("search_score"), h[0].get("rerank_score"))
                        for h in gen.generate([m], sample)])
        runs.append(out)
    assert runs[0] == runs[1]
    assert any(r[3] is not None for r in runs[0][0]) and any(r[2] is not None for r in runs[0][2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_vocab_argmax_is_argmax_with_its_tie_rule(dtype):
    """The chunked argmax (chunk maxima, then within the first chunk holding the maximum) picks
    torch.argmax's id: the lowest among equal maxima, across chunks and within one."""
    from nar_refine.modules.token_scores import chunk_size, vocab_argmax

    vocab = 8004
    assert chunk_size(vocab) is not None  # the chunked path, not the fallback
    torch.manual_seed(0)
    logits = torch.randn(4, 7, vocab).to(dtype)
    size = chunk_size(vocab)
    logits[0, 0, [5 * size + 3, 2 * size + 7]] = 50.0  # tie across chunks: the lower id wins
    logits[0, 1, [size + 9, size + 2]] = 50.0  # tie within a chunk
    logits[1, 2] = 1.0  # a row of equal values: id 0
    logits[2, 3, vocab - 1] = 60.0  # the last id
    tokens = vocab_argmax(logits)
    assert torch.equal(tokens, logits.argmax(-1))
    assert tokens[0, 0] == 2 * size + 7 and tokens[0, 1] == size + 2 and tokens[1, 2] == 0


def test_distinct_rows_groups_bitwise_equal_rows():
    from nar_refine.inference.distinct_rows import distinct_rows, on_distinct_rows

    groups = torch.tensor([1, 0, 1, 1, 0, 1])
    tokens = torch.tensor([[3, 4], [3, 4], [3, 4], [5, 6], [3, 4], [3, 4]])
    first, inverse = distinct_rows(groups, tokens)
    assert first.tolist() == [0, 1, 3]  # first rows of their groups, ascending
    assert inverse.tolist() == [0, 1, 0, 2, 1, 0]
    z = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [float("nan"), 2.0], [float("nan"), 2.0]])
    # equal means bit-for-bit: -0.0 is not 0.0, a NaN equals its own bits
    assert distinct_rows(torch.zeros(4, dtype=torch.long), z)[1].tolist() == [0, 1, 2, 2]
    close = torch.tensor([[1.0], [1.0 + 1e-12], [1.0]], dtype=torch.float64)  # equal in fp32
    assert distinct_rows(close)[1].tolist() == [0, 1, 0]
    assert distinct_rows(close.half())[1].tolist() == [0, 0, 0]
    calls = []

    def fn(index, rows, row_groups, nothing):
        calls.append(index.tolist())
        return rows.sum(1) * 10 + row_groups, nothing

    out, none = on_distinct_rows(fn, (groups, tokens), torch.arange(6), tokens, groups, None)
    assert calls == [[0, 1, 3]] and none is None  # one call, on the first rows of the groups
    assert out.tolist() == (tokens.sum(1) * 10 + groups).tolist()
    calls.clear()
    on_distinct_rows(fn, (torch.arange(6), tokens), torch.arange(6), tokens, groups, None)
    assert calls == [list(range(6))]  # all distinct: one call on every row


def test_latent_search_computes_each_distinct_candidate_once(lanmt, ar_teacher, monkeypatch):
    """Candidates of one sentence that decode alike share their delta posterior, their next
    decode and their teacher score: each is computed once, and the translations, scores and
    candidates equal those of computing every candidate."""
    from nar_refine.inference import latent_search, teacher as teacher_module
    from nar_refine.inference.teacher import TeacherScorer

    task, model = lanmt
    teacher = TeacherScorer.from_path(ar_teacher, task, like=model)
    real_candidates = latent_search.latent_candidates

    def twinned(mu, sigma, m, noise, generator=None):  # candidates 2k and 2k+1 are equal
        z = real_candidates(mu, sigma, m, noise, generator)
        z.view(mu.size(0), m, *mu.shape[1:])[:, 1::2] = z.view(mu.size(0), m, *mu.shape[1:])[:, 0::2]
        return z

    monkeypatch.setattr(latent_refinement, "latent_candidates", twinned)
    monkeypatch.setattr(token_scores, "ROW_BLOCK", 1 << 30)  # one projection call per decode
    rows = {"posterior": [], "decoder": [], "teacher": []}
    hooks = [model.posterior_out.register_forward_hook(lambda mod, i, o: rows["posterior"].append(o.size(0))),
             model.output_projection.register_forward_hook(lambda mod, i, o: rows["decoder"].append(o.size(0))),
             teacher.model.decoder.register_forward_hook(lambda mod, i, o: rows["teacher"].append(o[0].size(0)))]
    sample = batch(task, 6)
    bsz, m = 6, 4
    outs = []
    try:
        for plain in (False, True):
            if plain:
                for module in (latent_refinement, teacher_module):
                    monkeypatch.setattr(module, "on_distinct_rows", lambda fn, keys, *rows: fn(*rows))
            for r in rows.values():
                r.clear()
            gen = latent_gen(task, refiner=delta_refiner, max_iter=1, search_size=m, search_noise=1.0,
                             scorer=teacher, keep_candidates=True)
            torch.manual_seed(3)
            hypos = gen.generate([model], sample)
            outs.append([(h[0]["tokens"].tolist(), h[0]["search_score"],
                          [(c["tokens"].tolist(), c["score"]) for c in h[0]["candidates"]]) for h in hypos])
            if not plain:
                distinct = [len({tuple(c["tokens"].tolist()) for c in h[0]["candidates"]}) for h in hypos]
                # step 0 decodes every candidate; the posterior and the final decode see at most
                # half of them (twins), the teacher one per distinct final translation
                assert rows["decoder"][0] == bsz * m
                assert len(rows["posterior"]) == 1 and rows["posterior"][0] <= bsz * m // 2
                assert len(rows["decoder"]) == 2 and rows["decoder"][1] <= rows["posterior"][0]
                assert rows["teacher"] == [sum(distinct)]
            else:
                assert rows["posterior"] == [bsz * m] and rows["teacher"] == [bsz * m]
    finally:
        for h in hooks:
            h.remove()
    assert outs[0] == outs[1]


@pytest.mark.parametrize("kw,softmaxes", [
    (dict(max_iter=1), 1),  # step 0 cannot stop a row: its decode needs no softmax
    (dict(max_iter=3, adaptive=False), 1),
    (dict(max_iter=3), 3),  # steps 1 and 2 may stop rows (their decode is final): scored
    (dict(max_iter=2, ascent_check=True), 2),  # the ascent check reads every step's log-probs
])
def test_delta_steps_compute_token_scores_only_where_read(lanmt, monkeypatch, kw, softmaxes):
    task, model = lanmt
    calls = []
    real = token_scores.argmax_log_probs
    monkeypatch.setattr(token_scores, "argmax_log_probs", lambda *a: calls.append(1) or real(*a))
    sample = batch(task, 4)
    gen = latent_gen(task, refiner=delta_refiner, **kw)
    hypos = gen.generate([model], sample)
    if kw.get("adaptive", True) and kw["max_iter"] > 1:
        assert 1 <= len(calls) <= softmaxes  # rows stop, or not, as the model decides
    else:
        assert len(calls) == softmaxes
    monkeypatch.undo()
    # the same translations and scores as decoding every step with its softmax
    scored = DeltaRefinerWithScores()
    again = latent_gen(task, refiner=scored, **kw).generate([model], sample)
    for h, g in zip(hypos, again):
        assert torch.equal(h[0]["tokens"], g[0]["tokens"])
        assert torch.allclose(h[0]["positional_scores"], g[0]["positional_scores"])


class DeltaRefinerWithScores(type(delta_refiner)):
    def decode_step(self, model, enc, z, scores=True):
        return super().decode_step(model, enc, z, scores=True)
