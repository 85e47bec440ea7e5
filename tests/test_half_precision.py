"""fp16-safe numerics (issue 10, items 1-4), in process with CPU stand-ins (model.half()).

fairseq-train --fp16 runs the model in half precision and scales the loss (here by 128);
these tests check that the LaNMT's Gaussian heads, the length transform and the length
cross-entropy keep their fp32 values there, and that --refine-passes 1 (which leaves the
refinement decoder unused and breaks DDP) is refused.
"""

import argparse
import copy

import pytest
import torch
from fairseq import options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

import nar_refine  # noqa: F401
from helpers import USER_DIR
from nar_refine.errors import NARConfigError

LOSS_SCALE = 128.0  # a typical fairseq fp16 loss scale


def build(data, args, criterion=True):
    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        parser, [data, "--user-dir", USER_DIR, "--task", "nar_translation", "--share-all-embeddings",
                 "--cpu", "--seed", "1", *args]))
    task = tasks.setup_task(cfg.task)
    if not criterion:
        return task, cfg
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


def one_batch(task):
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=16, seed=1)
    return next(itr.next_epoch_itr(shuffle=False))


# -- 1. Gaussian heads in fp32 ----------------------------------------------------------------
def test_lanmt_elbo_half_gradients_finite_and_match_fp32(toy_data):
    torch.manual_seed(0)
    task, model, criterion = build(toy_data, ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"])
    sample = one_batch(task)
    d = model.latent_dim
    with torch.no_grad():  # posterior sigma = softplus(-7) ~ 9e-4: KL gradient ~ -1/sigma ~ -1100
        model.posterior_out.bias[d:].fill_(-7.0)
    half = copy.deepcopy(model).half()
    grads = {}
    for name, m in [("fp32", model), ("fp16", half)]:
        m.train()
        torch.manual_seed(1)  # the same reparameterisation noise in both
        loss, _, log = criterion(m, sample)
        assert loss.dtype == torch.float32
        (loss * LOSS_SCALE).backward()
        grads[name] = {n: p.grad.float() / LOSS_SCALE for n, p in m.named_parameters() if p.grad is not None}
    bad = [n for n, g in grads["fp16"].items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite fp16 gradients: {bad}"
    assert grads["fp16"].keys() == grads["fp32"].keys()
    g16 = torch.cat([g.flatten() for g in grads["fp16"].values()])
    g32 = torch.cat([grads["fp32"][n].flatten() for n in grads["fp16"]])
    rel = ((g16 - g32).norm() / g32.norm()).item()
    assert rel < 0.05, f"fp16 gradients differ from fp32 by {rel:.3f} (relative norm)"
    heads = grads["fp32"]["posterior_out.bias"]
    assert torch.allclose(grads["fp16"]["posterior_out.bias"], heads, rtol=0.05, atol=0.05 * heads.abs().max())
    # the heads are fp32 even in the half model, and sigma keeps its floor
    enc = half.encode(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"])
    mu, sigma = half.posterior(enc, sample["target"][:, :-1].masked_fill(
        sample["target"][:, :-1].eq(task.target_dictionary.eos()), task.target_dictionary.pad()))
    assert mu.dtype == sigma.dtype == torch.float32
    assert sigma.min().item() >= 1e-4 and sigma.max().item() > 0


# -- 2. the length transform in fp32 ----------------------------------------------------------
@pytest.mark.parametrize("src_len,tgt_len", [(130, 137), (300, 311)])
def test_length_transform_half_weights_match_fp32(src_len, tgt_len):
    from nar_refine.models.lanmt import length_transform

    torch.manual_seed(0)
    states = torch.randn(2, src_len, 8)
    mask = torch.zeros(2, src_len, dtype=torch.bool)
    mask[1, : src_len // 3] = True  # one left-padded row
    lengths = torch.tensor([tgt_len, tgt_len - 20])
    width = torch.tensor(1.0)
    out32, w32 = length_transform(states, mask, lengths, width)
    out16, w16 = length_transform(states.half(), mask, lengths, width.half())
    assert w16.dtype == out16.dtype == torch.float16
    assert torch.isfinite(w16).all() and torch.isfinite(out16).all()
    err = (w16.float() - w32).abs().max().item()
    assert err < 1e-3, f"half weights off by {err} at {src_len} source tokens"
    # the last target position still reads the last real source token (no collapsed positions)
    assert w16[0, tgt_len - 1].float().argmax().item() == src_len - 1


# -- 3. length cross-entropy on half logits ---------------------------------------------------
class _Stub(torch.nn.Module):
    """Returns fixed outputs: fp32 token logits, length logits in ``dtype``."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, *args, **kwargs):
        return {k: dict(v) for k, v in self.outputs.items()}


def _stub_outputs(family, dtype):
    g = torch.Generator().manual_seed(0)
    B, T, V, L = 64, 5, 30, 40
    length = {"out": (3 * torch.randn(B, L, generator=g)).half().to(dtype),
              "tgt": torch.randint(0, L, (B,), generator=g)}
    word = {"out": torch.randn(B, T, V, generator=g), "tgt": torch.randint(4, V, (B, T), generator=g),
            "mask": torch.ones(B, T, dtype=torch.bool)}
    if family == "lanmt":
        kl = {"out": torch.rand(B, 6, generator=g), "mask": torch.ones(B, 6, dtype=torch.bool)}
        return {"word_ins": word, "kl": kl, "length": length}
    return {"pass_0": word, "pass_1": dict(word), "length": length}


@pytest.mark.parametrize("family,args", [
    ("lanmt", ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"]),
    ("refine_nat", ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss"]),
])
def test_length_loss_on_half_logits_matches_fp32(toy_data, family, args):
    task, cfg = build(toy_data, args, criterion=False)
    criterion = task.build_criterion(cfg.criterion)
    B = 64
    sample = {"net_input": {"src_tokens": torch.full((B, 4), 5), "src_lengths": torch.full((B,), 4)},
              "target": torch.full((B, 6), 5)}
    logs = {}
    for dtype in (torch.float32, torch.float16):
        model = _Stub(_stub_outputs(family, dtype)).train()
        loss, _, log = criterion(model, sample)
        assert loss.dtype == torch.float32
        logs[dtype] = log
    ref = logs[torch.float32]["length_loss"]
    assert ref > 50  # summed over 64 sentences: a sum that fp16 rounds to 1/4 or coarser
    assert abs(logs[torch.float16]["length_loss"] - ref) <= 1e-5 * ref
    assert abs(logs[torch.float16]["loss"] - logs[torch.float32]["loss"]) <= 1e-5 * abs(logs[torch.float32]["loss"])


# -- 4. --refine-passes 1 is refused ----------------------------------------------------------
def test_one_refine_pass_is_refused(toy_data):
    task, cfg = build(toy_data, ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
                                 "--refine-passes", "1"], criterion=False)
    with pytest.raises(NARConfigError, match=r"--refine-passes must be >= 2.*DDP.*--refine-passes 2"):
        task.build_criterion(cfg.criterion)
    cfg.criterion.refine_passes = 2
    assert task.build_criterion(cfg.criterion).passes == 2
