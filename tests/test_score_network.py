"""Score / energy inference networks (Lee, Shu & Cho 2020) through the real fairseq CLIs.

A tiny LaNMT is trained once (``frozen_lanmt``), then a score network and an energy network
on top of it with ``fairseq-train --lanmt-path``; the tests decode them with
``fairseq-generate`` and load them the way fairseq-generate does for the in-process checks.
"""

import argparse
import re
import shutil

import pytest
import torch

from helpers import USER_DIR, generate, parse_hypotheses, train

N_TEST = 60  # sentences in the toy test split
NAR = ["--task", "nar_translation"]
OPTIM = ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "20", "--max-tokens", "2000", "--no-epoch-checkpoints"]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def frozen_lanmt(toy_data, tmp_path_factory):
    """Checkpoint path of a tiny LaNMT (the model the inference networks refine)."""
    save = tmp_path_factory.mktemp("score_lanmt")
    train(toy_data, str(save), NAR + [
        "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", "--share-all-embeddings",
        "--disable-validation", "--kl-budget-hold-updates", "60", "--kl-budget-anneal-updates", "60",
        *OPTIM], max_update=150)
    return str(save / "checkpoint_last.pt")


def _train_inference_net(arch, toy_data, lanmt_path, tmp_path_factory):
    save = tmp_path_factory.mktemp(arch)
    proc = train(toy_data, str(save), NAR + [
        "--arch", arch, "--criterion", "score_matching", "--lanmt-path", lanmt_path, *OPTIM,
    ], max_update=120)
    return str(save / "checkpoint_last.pt"), proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def score_run(toy_data, frozen_lanmt, tmp_path_factory):
    """(checkpoint, training log) of a score_net_tiny trained on ``frozen_lanmt``."""
    return _train_inference_net("score_net_tiny", toy_data, frozen_lanmt, tmp_path_factory)


@pytest.fixture(scope="session")
def energy_run(toy_data, frozen_lanmt, tmp_path_factory):
    """(checkpoint, training log) of an energy_net_tiny trained on ``frozen_lanmt``."""
    return _train_inference_net("energy_net_tiny", toy_data, frozen_lanmt, tmp_path_factory)


@pytest.fixture(params=["score", "energy"])
def net_run(request, score_run, energy_run):
    return request.param, (score_run if request.param == "score" else energy_run)


def load(path, toy_data):
    """(model, task) the way fairseq-generate loads a checkpoint (LaNMT re-read from its path)."""
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": toy_data})
    task.load_dataset("test")
    return models[0].eval(), task


def held_out_batches(task, size=16):
    itr = task.get_batch_iterator(task.dataset("test"), max_sentences=size, seed=1)
    return list(itr.next_epoch_itr(shuffle=False))


def log_values(log, kind, key):
    """Values of ``key`` in fairseq's log lines of one kind (train_inner / train / valid)."""
    out = []
    for line in log.splitlines():
        if f"| {kind} |" in line:
            m = re.search(rf"(?:\| |, |\s){key}[ =](-?[\d.]+)", line)
            if m:
                out.append(float(m.group(1)))
    return out


# -- training -----------------------------------------------------------------------------------
def test_training_loss_falls_and_terms_are_logged(net_run):
    kind, (_, log) = net_run
    loss = log_values(log, "train_inner", "loss")
    assert len(loss) >= 5, log[-2000:]
    assert loss[-1] < loss[0] - 0.5, f"{kind}: score-matching loss did not fall: {loss}"
    cosine = log_values(log, "train_inner", "cosine")
    assert cosine[-1] > cosine[0] and cosine[-1] > 0.5, cosine
    # ||S||^2 - 2<S, delta> == ||S - delta||^2 - ||delta||^2, per latent position
    for loss_v, mse, dsq in zip(*(log_values(log, "valid", k) for k in ("loss", "mse", "delta_sq"))):
        assert abs(loss_v - (mse - dsq)) < 2e-3


def test_checkpoint_holds_only_the_inference_network(net_run, frozen_lanmt, toy_data):
    """No LaNMT weights in the checkpoint: its path and a fingerprint of its parameters."""
    from nar_refine.models.inference_network import parameter_fingerprint

    kind, (path, _) = net_run
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert not [k for k in state["model"] if k.startswith("lanmt.")]
    assert any(k.startswith("net.") for k in state["model"])
    assert state["cfg"]["model"].lanmt_path == frozen_lanmt
    lanmt, _ = load(frozen_lanmt, toy_data)
    assert torch.equal(state["model"]["lanmt_fingerprint"], parameter_fingerprint(lanmt))


def test_lanmt_stays_bit_identical_through_training(toy_data, frozen_lanmt):
    """fairseq's own Trainer (adam, weight decay, clipping): only the inference network moves."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        toy_data, "--user-dir", USER_DIR, *NAR, "--arch", "energy_net_tiny",
        "--criterion", "score_matching", "--lanmt-path", frozen_lanmt, "--optimizer", "adam",
        "--lr", "1e-2", "--weight-decay", "0.1", "--clip-norm", "1.0", "--max-tokens", "2000",
        "--cpu", "--seed", "1",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    lanmt_before = {k: v.clone() for k, v in model.lanmt.state_dict().items()}
    net_before = {k: v.clone() for k, v in model.net.state_dict().items()}
    trainer = Trainer(cfg, task, model, criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=2000, seed=1)
    for _, sample in zip(range(4), itr.next_epoch_itr(shuffle=False)):
        trainer.train_step([sample])
    assert not model.lanmt.training, "the frozen LaNMT must stay in eval mode"
    assert all(not p.requires_grad for p in model.lanmt.parameters())
    for k, v in model.lanmt.state_dict().items():
        assert torch.equal(v, lanmt_before[k]), f"LaNMT tensor {k} changed during training"
    on_disk = torch.load(frozen_lanmt, map_location="cpu", weights_only=False)["model"]
    for k, v in model.lanmt.state_dict().items():
        if k in on_disk:
            assert torch.equal(v, on_disk[k]), f"LaNMT tensor {k} differs from its checkpoint"
    moved = [k for k, v in model.net.state_dict().items() if not torch.equal(v, net_before[k])]
    assert moved, "the inference network did not train"
    trainable = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not trainable & {id(p) for p in model.lanmt.parameters()}


# -- what the network learned -------------------------------------------------------------------
def test_one_score_step_moves_z_toward_the_delta_target(net_run, toy_data):
    """On held-out sentences S(z;x) points where delta inference goes: cos(S, z_1 - z) > 0."""
    kind, (path, _) = net_run
    model, task = load(path, toy_data)
    torch.manual_seed(0)
    cos, before, after = [], [], []
    for sample in held_out_batches(task):
        net = sample["net_input"]
        enc = model.encode(net["src_tokens"], net["src_lengths"])
        mu, sigma = model.prior(enc)
        valid = ~enc["padding_mask"]
        for z in (mu, mu + sigma * torch.randn_like(mu)):
            target = model.delta_target(enc, z, 1)
            with torch.no_grad():
                step = model.score(enc, z)
            cos.append(torch.cosine_similarity(step[valid], target[valid], dim=-1))
            before.append(target[valid].pow(2).sum(-1))
            after.append((target - step)[valid].pow(2).sum(-1))
    cos, before, after = torch.cat(cos), torch.cat(before), torch.cat(after)
    print(f"{kind}: mean cos(S, delta) {cos.mean():.3f}; ||z - z_k||^2 {before.mean():.3f} "
          f"-> {after.mean():.3f} after one step")
    assert cos.mean() > 0
    assert after.mean() < before.mean()


def test_generator_applies_the_update_rule(net_run, toy_data):
    """score/energy decoding == argmax p(y | mu + alpha*S(mu) + ..., x), computed by hand."""
    kind, (path, _) = net_run
    model, task = load(path, toy_data)
    task.cfg.decoding, task.cfg.score_steps, task.cfg.score_alpha = kind, 2, 0.7
    task.cfg.score_line_search, task.cfg.latent_search_size = None, 1
    gen = task.build_generator([model], argparse.Namespace())
    sample = held_out_batches(task)[0]
    hypos = task.inference_step(gen, [model], sample)
    net = sample["net_input"]
    enc = model.encode(net["src_tokens"], net["src_lengths"])
    z, _ = model.prior(enc)
    for _ in range(2):
        z = z + 0.7 * model.score(enc, z).detach()
    tokens, _, _ = model.decode(enc, z)
    for row, hypo in zip(tokens, hypos):
        assert torch.equal(hypo[0]["tokens"][:-1], row[row.ne(model.lanmt.pad)])


def test_energy_score_is_minus_the_energy_gradient(energy_run, toy_data):
    """S = -dE/dz: a step along S lowers E, and <S, v> matches a finite difference of E."""
    model, task = load(energy_run[0], toy_data)
    net = held_out_batches(task)[0]["net_input"]
    enc = model.encode(net["src_tokens"], net["src_lengths"])
    mu, _ = model.prior(enc)
    z = mu.double()
    model.double()
    enc = type(enc)({k: v.double() if v.is_floating_point() else v for k, v in enc.items()})
    keep = (~enc["padding_mask"]).unsqueeze(-1).double()
    v = torch.randn_like(z) * keep
    eps = 1e-3  # fairseq's attention softmax runs in float32 even in a double model
    with torch.no_grad():
        fd = (model.energy_value(enc, z + eps * v) - model.energy_value(enc, z - eps * v)) / (2 * eps)
        s = model.score(enc, z)
        assert torch.allclose(fd, -(s * v).sum((1, 2)), rtol=1e-2, atol=1e-4)
        assert (model.energy_value(enc, z + 1e-2 * s) < model.energy_value(enc, z)).all()


# -- generation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--score-steps", "2", "--score-line-search", "0.5,1,2"],
                                   ["--latent-search-size", "3"]],
                         ids=["plain", "line_search", "latent_search"])
def test_fairseq_generate_translates_every_sentence(net_run, toy_data, extra):
    kind, (path, _) = net_run
    proc = generate(toy_data, path, NAR + ["--decoding", kind, *extra])
    hypos = parse_hypotheses(proc.stdout)
    assert sorted(hypos) == list(range(N_TEST)), proc.stderr[-2000:]
    assert all(hypos.values())


def test_latent_search_with_teacher(score_run, toy_data, ar_teacher):
    proc = generate(toy_data, score_run[0], NAR + ["--latent-search-size", "3", "--teacher-path", ar_teacher])
    assert len(parse_hypotheses(proc.stdout)) == N_TEST


def _projection_rows(model, task, **cfg):
    """Rows (sentences) through the LaNMT's vocabulary projection while decoding the test set."""
    for key, value in cfg.items():
        setattr(task.cfg, key, value)
    gen = task.build_generator([model], argparse.Namespace())
    calls = []
    handle = model.lanmt.output_projection.register_forward_hook(
        lambda mod, inp, out: calls.append(inp[0].size(0)))
    try:
        n = 0
        for sample in held_out_batches(task):
            hypos = task.inference_step(gen, [model], sample)
            n += len(hypos)
    finally:
        handle.remove()
    return sum(calls), n


def test_score_inference_runs_one_output_projection_per_sentence(net_run, toy_data):
    kind, (path, _) = net_run
    model, task = load(path, toy_data)
    rows, n = _projection_rows(model, task, decoding=kind, score_steps=3, score_line_search=None,
                               latent_search_size=1)
    assert n == N_TEST and rows == N_TEST, f"{rows} projection rows for {n} sentences"
    # a line search pays one softmax per candidate step size and step, plus the final decode
    rows, n = _projection_rows(model, task, decoding=kind, score_steps=2, score_line_search="0.5,1,2")
    assert rows == N_TEST * (1 + 2 * 3)
    # latent search: m candidates per sentence, each decoded once
    rows, n = _projection_rows(model, task, decoding=kind, score_steps=1, score_line_search=None,
                               latent_search_size=4)
    assert rows == N_TEST * 4


def test_history_shows_each_step(score_run, toy_data):
    proc = generate(toy_data, score_run[0], NAR + ["--score-steps", "2", "--retain-iter-history",
                                                 "--print-step"])
    assert len(parse_hypotheses(proc.stdout)) == N_TEST
    assert re.search(r"^E-\d+_1\t", proc.stdout, re.M), proc.stdout[:1500]


# -- the frozen LaNMT's checkpoint ---------------------------------------------------------------
def test_missing_lanmt_is_a_clear_error(score_run, toy_data, tmp_path):
    proc = generate(toy_data, score_run[0], NAR + ["--lanmt-path", str(tmp_path / "gone.pt")], check=False)
    assert proc.returncode != 0
    assert "NARConfigError" in proc.stderr and "does not exist" in proc.stderr, proc.stderr[-2000:]


def test_moved_lanmt_is_found_with_lanmt_path(score_run, frozen_lanmt, toy_data, tmp_path):
    """The recorded path is gone: a clear error, and --lanmt-path at generation time fixes it."""
    state = torch.load(score_run[0], map_location="cpu", weights_only=False)
    moved = tmp_path / "moved_lanmt.pt"
    shutil.copy(frozen_lanmt, moved)
    for section in ("model", "task"):  # a Namespace or a dict, depending on fairseq's config
        cfg = state["cfg"][section]
        if isinstance(cfg, dict):
            cfg["lanmt_path"] = str(tmp_path / "old_place.pt")
        else:
            cfg.lanmt_path = str(tmp_path / "old_place.pt")
    ckpt = tmp_path / "score.pt"
    torch.save(state, ckpt)
    proc = generate(toy_data, str(ckpt), NAR, check=False)
    assert proc.returncode != 0 and "old_place.pt" in proc.stderr and "does not exist" in proc.stderr
    proc = generate(toy_data, str(ckpt), NAR + ["--lanmt-path", str(moved)])
    assert len(parse_hypotheses(proc.stdout)) == N_TEST


def test_mismatching_lanmt_is_refused(net_run, frozen_lanmt, toy_data, tmp_path):
    kind, (path, _) = net_run
    state = torch.load(frozen_lanmt, map_location="cpu", weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and "prior" in k)
    state["model"][name] = state["model"][name] + 1e-3
    other = tmp_path / "other_lanmt.pt"
    torch.save(state, other)
    proc = generate(toy_data, path, NAR + ["--lanmt-path", str(other)], check=False)
    assert proc.returncode != 0
    assert "NARConfigError" in proc.stderr and "not the one" in proc.stderr, proc.stderr[-2000:]


def test_lanmt_path_must_name_a_lanmt(score_run, toy_data):
    """Pointing --lanmt-path at an inference network (not a LaNMT) is refused."""
    proc = generate(toy_data, score_run[0], NAR + ["--lanmt-path", score_run[0]], check=False)
    assert proc.returncode != 0 and "not a LaNMT" in proc.stderr, proc.stderr[-2000:]


def test_decoding_must_match_the_network(score_run, toy_data):
    proc = generate(toy_data, score_run[0], NAR + ["--decoding", "energy"], check=False)
    assert proc.returncode != 0 and "does not match" in proc.stderr


# -- DDP safety (process_group: tests/conftest.py) ------------------------------------------------
@pytest.mark.parametrize("arch", ["score_net_tiny", "energy_net_tiny"])
def test_ddp_steps_use_every_trainable_parameter(toy_data, frozen_lanmt, process_group, arch):
    """fairseq's DDP (find_unused_parameters=False): two steps fail if one left a parameter out."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import ModuleProxyWrapper

    args = options.parse_args_and_arch(options.get_training_parser(), [
        toy_data, "--user-dir", USER_DIR, *NAR, "--arch", arch, "--criterion", "score_matching",
        "--lanmt-path", frozen_lanmt, "--max-tokens", "500"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=500, seed=1).next_epoch_itr(shuffle=False)
    ddp = ModuleProxyWrapper(torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False))
    ddp.train()
    for _, sample in zip(range(2), itr):
        loss, _, _ = criterion(ddp, sample)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{arch}: parameters without gradient: {missing}"
    assert all(p.grad is None for p in model.lanmt.parameters())
