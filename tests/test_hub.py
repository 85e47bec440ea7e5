"""The Python API (nar_refine.hub.from_pretrained): every family translates a list of
sentences with its decoding options, the same output as fairseq-generate gives."""

import pytest

from helpers import parse_hypotheses, train

NAR = ["--task", "nar_translation", "--share-all-embeddings"]
OPTIM = ["--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "20", "--max-tokens", "2000", "--no-epoch-checkpoints",
         "--disable-validation"]
SOURCES = ["w1 w2 w3", "w4 w5 w6 w7", "w10 w11"]


@pytest.fixture(scope="module")
def checkpoints(toy_data, tmp_path_factory):
    """Tiny refine_nat, lanmt and score_net checkpoints (short trainings: the API is tested,
    not the models)."""
    root = tmp_path_factory.mktemp("hub")
    out = {}
    train(toy_data, str(root / "refine"), NAR + [
        "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", *OPTIM], max_update=40)
    out["refine"] = root / "refine"
    train(toy_data, str(root / "lanmt"), NAR + [
        "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", *OPTIM], max_update=40)
    out["lanmt"] = root / "lanmt"
    train(toy_data, str(root / "score"), NAR[:2] + [
        "--arch", "score_net_tiny", "--criterion", "score_matching",
        "--lanmt-path", str(root / "lanmt" / "checkpoint_last.pt"), *OPTIM], max_update=10)
    out["score"] = root / "score"
    return out


def load(folder, toy_data):
    from nar_refine.hub import from_pretrained

    return from_pretrained(str(folder), "checkpoint_last.pt", data_name_or_path=toy_data,
                           source_lang="src", target_lang="tgt")


def cli_outputs(toy_data, folder, args, tmp_path):
    """fairseq-interactive's translations of SOURCES with the same options."""
    from helpers import USER_DIR, cli, run

    proc = run([cli("fairseq-interactive"), toy_data, "--user-dir", USER_DIR,
                "--task", "nar_translation", "--source-lang", "src", "--target-lang", "tgt",
                "--path", str(folder / "checkpoint_last.pt"), *args],
               input="\n".join(SOURCES) + "\n")
    hyps = parse_hypotheses(proc.stdout)
    return [hyps[i] for i in range(len(SOURCES))]


@pytest.mark.parametrize("family,kwargs,args", [
    ("refine", {"iter_decode_max_iter": 0}, ["--iter-decode-max-iter", "0"]),
    ("refine", {"iter_decode_max_iter": 4, "iter_decode_force_max_iter": True},
     ["--iter-decode-max-iter", "4", "--iter-decode-force-max-iter"]),
    ("lanmt", {"decoding": "prior"}, ["--decoding", "prior"]),
    ("lanmt", {"decoding": "delta", "iter_decode_max_iter": 2},
     ["--decoding", "delta", "--iter-decode-max-iter", "2"]),
    ("score", {"decoding": "score", "score_steps": 2}, ["--decoding", "score", "--score-steps", "2"]),
])
def test_translate_equals_fairseq_interactive(checkpoints, toy_data, tmp_path, family, kwargs, args):
    nat = load(checkpoints[family], toy_data)
    got = nat.translate(SOURCES, **kwargs)
    assert len(got) == len(SOURCES) and all(isinstance(h, str) for h in got)
    assert got == cli_outputs(toy_data, checkpoints[family], args, tmp_path)
    assert nat.task.cfg.decoding == "auto"  # per-call options do not stick


def test_latent_search_option_reaches_the_generator(checkpoints, toy_data):
    """Latent search draws noise: same seed, same output; a search over 8 candidates can
    only raise the NAT's own mean log-prob score of the kept hypothesis over the prior mean."""
    import torch

    nat = load(checkpoints["lanmt"], toy_data)
    tokens = [nat.encode(s) for s in SOURCES]
    torch.manual_seed(0)
    first = nat.generate(tokens, decoding="prior", latent_search_size=8)
    torch.manual_seed(0)
    again = nat.generate(tokens, decoding="prior", latent_search_size=8)
    assert [h[0]["tokens"].tolist() for h in first] == [h[0]["tokens"].tolist() for h in again]
    plain = nat.generate(tokens, decoding="prior")
    for searched, one in zip(first, plain):
        assert searched[0]["score"] >= one[0]["score"] - 1e-4


def test_options_change_the_output_and_do_not_leak(checkpoints, toy_data):
    nat = load(checkpoints["refine"], toy_data)
    hyps0 = nat.generate([nat.encode(s) for s in SOURCES], iter_decode_max_iter=0, print_step=True)
    hyps4 = nat.generate([nat.encode(s) for s in SOURCES], iter_decode_max_iter=4,
                         iter_decode_force_max_iter=True)
    assert [h[0]["steps"] for h in hyps4] == [4, 4, 4]
    assert [h[0]["steps"] for h in hyps0] == [0, 0, 0]


def test_bad_options_and_checkpoints_are_clear_errors(checkpoints, toy_data, tmp_path):
    from nar_refine import NARConfigError
    from nar_refine.hub import from_pretrained

    nat = load(checkpoints["refine"], toy_data)
    with pytest.raises(NARConfigError, match="unknown decoding option"):
        nat.translate(SOURCES, no_such_option=1)
    with pytest.raises(NARConfigError, match="needs a lanmt model"):
        nat.translate(SOURCES, decoding="delta")
    with pytest.raises(NARConfigError, match="no such checkpoint"):
        from_pretrained(str(tmp_path), "nothing.pt", data_name_or_path=toy_data)
