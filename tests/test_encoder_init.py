"""--init-encoder-from: a NAT's encoder starts as the autoregressive teacher's, through
fairseq-train; what is copied, what is adopted, and what is refused."""

import shutil

import pytest
import torch
from fairseq import checkpoint_utils

from helpers import NAR, OPTIM, USER_DIR, assert_user_error, cli, generate, run, train

# the toy teacher's encoder size (helpers.AR_TEACHER_ARGS)
TEACHER_SIZE = ["--encoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
                "--encoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
                "--decoder-attention-heads", "2"]
FAMILIES = {
    "refine_nat": ["--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss"],
    "lanmt": ["--arch", "lanmt_tiny", "--criterion", "lanmt_elbo"],
}
FROZEN = ["--lr", "1e-9", "--warmup-init-lr", "1e-9"]  # one update that moves nothing visibly


def load(path, data):
    import nar_refine  # noqa: F401  (registers the plugin's task and models)

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    return models[0].eval(), cfg, task


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encoder_starts_as_the_teachers(family, toy_data, ar_teacher, tmp_path):
    teacher_copy = tmp_path / "teacher.pt"
    shutil.copy(ar_teacher, teacher_copy)
    save = tmp_path / family
    proc = train(toy_data, str(save), [*NAR, *FAMILIES[family], "--share-all-embeddings",
                                       *TEACHER_SIZE, *OPTIM, *FROZEN,
                                       "--init-encoder-from", str(teacher_copy)], max_update=1)
    assert "encoder initialised from" in proc.stdout + proc.stderr
    nat, nat_cfg, task = load(str(save / "checkpoint_last.pt"), toy_data)
    teacher, teacher_cfg, _ = load(ar_teacher, toy_data)
    # the teacher is post-norm: the NAT's encoder computes as the teacher's does (its default
    # would be pre-norm with a final LayerNorm)
    assert teacher_cfg.model.encoder_normalize_before is False
    assert nat_cfg.model.encoder_normalize_before is False
    assert nat.encoder.layer_norm is None
    for key, value in teacher.encoder.state_dict().items():
        if not key.endswith("version"):
            assert torch.allclose(nat.encoder.state_dict()[key], value, atol=1e-6), key
    # shared embeddings: the decoder's token matrix is the teacher's as well
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 11, 2, 1]])
    lengths = torch.tensor([5, 4])
    with torch.no_grad():
        a = nat.encoder(src, src_lengths=lengths)["encoder_out"][0]
        b = teacher.encoder(src, src_lengths=lengths)["encoder_out"][0]
    assert torch.allclose(a, b, atol=1e-5)
    # a trained checkpoint keeps its own weights: decoding does not need the teacher any more
    teacher_copy.unlink()
    out = generate(toy_data, str(save / "checkpoint_last.pt"), [*NAR])
    assert out.returncode == 0 and "H-0" in out.stdout


def test_without_the_option_the_encoder_is_its_own(toy_data, ar_teacher, tmp_path):
    train(toy_data, str(tmp_path), [*NAR, *FAMILIES["refine_nat"], "--share-all-embeddings",
                                    *TEACHER_SIZE, *OPTIM, *FROZEN], max_update=1)
    nat, cfg, _ = load(str(tmp_path / "checkpoint_last.pt"), toy_data)
    teacher, _, _ = load(ar_teacher, toy_data)
    assert cfg.model.encoder_normalize_before is True
    w = "layers.0.fc1.weight"
    assert not torch.allclose(nat.encoder.state_dict()[w], teacher.encoder.state_dict()[w], atol=1e-3)


def _train(data, save, args):
    return run([cli("fairseq-train"), data, "--user-dir", USER_DIR, "--save-dir", save,
                "--max-update", "1", "--num-workers", "0", "--cpu", *args], check=False)


@pytest.mark.parametrize("case", ["size", "missing", "not_a_checkpoint"])
def test_refusals(case, toy_data, ar_teacher, tmp_path):
    args = [*NAR, *FAMILIES["refine_nat"], "--share-all-embeddings", *OPTIM]
    if case == "size":  # refine_nat_tiny is 64-d, the teacher 32-d
        proc = _train(toy_data, tmp_path / "ck", [*args, "--init-encoder-from", ar_teacher])
        assert_user_error(proc, "--init-encoder-from", "--encoder-embed-dim 32, this model 64")
    elif case == "missing":
        proc = _train(toy_data, tmp_path / "ck", [*args, *TEACHER_SIZE, "--init-encoder-from",
                                                  str(tmp_path / "nope.pt")])
        assert_user_error(proc, "--init-encoder-from", "no such checkpoint file")
    else:
        junk = tmp_path / "junk.pt"
        torch.save({"model": {"w": torch.zeros(1)}}, junk)
        proc = _train(toy_data, tmp_path / "ck", [*args, *TEACHER_SIZE, "--init-encoder-from", str(junk)])
        assert_user_error(proc, "--init-encoder-from", "not a fairseq checkpoint")
    assert not list((tmp_path / "ck").glob("*.pt")) if (tmp_path / "ck").exists() else True
