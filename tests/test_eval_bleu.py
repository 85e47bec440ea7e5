"""``fairseq-train --task nar_translation --eval-bleu``: validation BLEU with each family's own
generator, checkpoint_best.pt selected by it, ``--eval-bleu-args`` checked and passed on."""

import argparse

import pytest
import torch

from helpers import USER_DIR, cli, generate, log_lines, log_value, parse_bleu, run, train

EVAL = ["--eval-bleu", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
OPTIM = ["--optimizer", "adam", "--lr-scheduler", "inverse_sqrt", "--max-tokens", "2000",
         "--no-epoch-checkpoints"]
REFINE = ["--task", "nar_translation", "--arch", "refine_nat_tiny",
          "--criterion", "refine_nat_loss", "--share-all-embeddings", "--lr", "2e-3",
          "--warmup-updates", "50", *OPTIM]
LANMT = ["--task", "nar_translation", "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo",
         "--share-all-embeddings", "--lr", "3e-3", "--warmup-updates", "20", *OPTIM]
# 4 forced refinement steps: every validation sentence reports exactly 4
FOUR_STEPS = '{"iter_decode_max_iter": 4, "iter_decode_force_max_iter": true}'


def valid_log(log):
    """[(num_updates, bleu, decode_steps)] of fairseq's validation lines."""
    return [(int(log_value(l, "num_updates")), log_value(l, "bleu"), log_value(l, "decode_steps"))
            for l in log_lines(log, "valid")]


def saved(path):
    """(num_updates, saved best metric, best metric name) of a checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return (state["optimizer_history"][-1]["num_updates"], state["extra_state"]["best"],
            state["cfg"]["checkpoint"]["best_checkpoint_metric"])


def check_best_follows_bleu(save_dir, log):
    """checkpoint_best.pt holds the model of the last validation with the highest BLEU."""
    valid = valid_log(log)
    best = max(b for _, b, _ in valid)
    best_update = max(u for u, b, _ in valid if b == best)  # ties: fairseq keeps the later one
    assert saved(f"{save_dir}/checkpoint_best.pt") == (best_update, best, "bleu"), valid
    return best, best_update


# -- training runs (the toy corpus of conftest: 8 updates per epoch, validation every epoch) ------
@pytest.fixture(scope="module")
def refine_run(toy_data, tmp_path_factory):
    """refine_nat: 40 updates that raise valid BLEU, then 8 at a destructive learning rate that
    ruin it, so the best checkpoint is not the last one. Returns (save dir, both logs)."""
    save = str(tmp_path_factory.mktemp("eval_bleu_refine"))
    args = [*REFINE, *EVAL, "--eval-bleu-args", FOUR_STEPS]
    first = train(toy_data, save, args, max_update=40)
    ruin = train(toy_data, save, [a if a != "2e-3" else "0.5" for a in args], max_update=48)
    return save, first.stdout + first.stderr + ruin.stdout + ruin.stderr


@pytest.fixture(scope="module")
def lanmt_run(toy_data, tmp_path_factory):
    """A tiny LaNMT with validation BLEU of its default (delta) decoding; (save dir, log)."""
    save = str(tmp_path_factory.mktemp("eval_bleu_lanmt"))
    proc = train(toy_data, save, [*LANMT, *EVAL], max_update=24)
    return save, proc.stdout + proc.stderr


# -- tests ----------------------------------------------------------------------------------------
def test_refine_nat_bleu_selects_checkpoint_best(toy_data, refine_run):
    save, log = refine_run
    valid = valid_log(log)
    assert [u for u, _, _ in valid] == [8, 16, 24, 32, 40, 48], valid
    assert all(steps == 4 for _, _, steps in valid), valid  # eval_bleu_args reached the generator
    bleus = [b for _, b, _ in valid]
    assert bleus[4] > bleus[0] + 50 and bleus[5] < bleus[4] - 50, bleus  # learnt, then ruined
    best, best_update = check_best_follows_bleu(save, log)
    assert best_update == 40 and saved(f"{save}/checkpoint_last.pt")[0] == 48
    # the selected weights decode the valid set to the logged BLEU (fairseq-generate, sacreBLEU)
    out = generate(toy_data, f"{save}/checkpoint_best.pt",
                   ["--task", "nar_translation", "--iter-decode-max-iter", "4",
                    "--iter-decode-force-max-iter", "--scoring", "sacrebleu"], subset="valid")
    assert parse_bleu(out.stdout) == pytest.approx(best, abs=0.01)


def test_eval_bleu_args_set_the_refinement_steps(toy_data, refine_run, tmp_path):
    """{"iter_decode_max_iter": 0}: decoder 1's output, no refinement step (refine_run: 4)."""
    proc = train(toy_data, str(tmp_path), [*REFINE, *EVAL, "--eval-bleu-args",
                                           '{"iter_decode_max_iter": 0}'], max_update=8)
    (update, _, steps), = valid_log(proc.stdout + proc.stderr)
    assert (update, steps) == (8, 0)
    assert valid_log(refine_run[1])[0][::2] == (8, 4)


def test_lanmt_logs_bleu_of_delta_inference(lanmt_run):
    save, log = lanmt_run
    valid = valid_log(log)
    assert [u for u, _, _ in valid] == [8, 16, 24], valid
    # delta inference: at least one step per sentence (y_0 -> y_1), at most fairseq's default 10
    assert all(1 <= steps <= 10 for _, _, steps in valid), valid
    check_best_follows_bleu(save, log)


def test_score_net_validates_with_score_inference(toy_data, lanmt_run, tmp_path):
    """score_net on the frozen LaNMT; a task option ({"score_steps": 2}) sets its generator."""
    lanmt = f"{lanmt_run[0]}/checkpoint_last.pt"
    proc = train(toy_data, str(tmp_path), [
        "--task", "nar_translation", "--arch", "score_net_tiny", "--criterion", "score_matching",
        "--lanmt-path", lanmt, "--lr", "3e-3", "--warmup-updates", "4", *OPTIM, *EVAL,
        "--eval-bleu-args", '{"score_steps": 2}'], max_update=8)
    log = proc.stdout + proc.stderr
    (update, bleu, steps), = valid_log(log)
    assert (update, steps) == (8, 2) and 0 <= bleu <= 100
    check_best_follows_bleu(str(tmp_path), log)


def test_unknown_key_is_a_clear_error(toy_data, tmp_path):
    proc = run([cli("fairseq-train"), toy_data, "--user-dir", USER_DIR, "--save-dir", tmp_path,
                "--max-update", "8", *REFINE, *EVAL, "--eval-bleu-args", '{"beam": 5}'],
               check=False)
    assert proc.returncode == 2
    assert "nar_refine: error: --eval-bleu-args: unknown key(s) ['beam']" in proc.stderr
    assert "iter_decode_max_iter" in proc.stderr  # ... and says which keys there are
    assert not (tmp_path / "checkpoint_last.pt").exists()


# -- in-process: the task's generator and valid_step ---------------------------------------------
def build(toy_data, args):
    """(task, model, criterion) as fairseq-train builds them."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        parser, [toy_data, "--user-dir", USER_DIR, "--cpu", "--seed", "1", *args]))
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), task.build_criterion(cfg.criterion)


@pytest.mark.parametrize("eval_args,message", [
    ('{"iter_decode_max_iter": "many"}', "bad value for iter_decode_max_iter"),
    ('{"iter_decode_with_beam": 0}', "iter_decode_with_beam >= 1"),
    ('{"decoding": "bogus"}', "bad value for decoding"),
    ('{"decoding": "delta"}', "--decoding delta needs a lanmt model"),  # the generator's own check
    ('{"iter_decode_max_iter": 4', "not valid JSON"),
])
def test_bad_values_are_clear_errors(toy_data, eval_args, message):
    from nar_refine.errors import NARConfigError

    with pytest.raises(NARConfigError, match="eval-bleu-args") as err:
        build(toy_data, [*REFINE, *EVAL, "--eval-bleu-args", eval_args])
    assert message in str(err.value)


@pytest.mark.parametrize("family", ["refine_nat", "energy_net"])
def test_valid_step_decodes_in_eval_mode_and_restores_train_mode(toy_data, lanmt_run, family):
    if family == "refine_nat":
        args = [*REFINE, "--dropout", "0.3"]
    else:
        args = ["--task", "nar_translation", "--arch", "energy_net_tiny", "--criterion",
                "score_matching", "--lanmt-path", f"{lanmt_run[0]}/checkpoint_last.pt", *OPTIM]
    task, model, criterion = build(toy_data, [*args, *EVAL])
    task.load_dataset("valid")
    itr = task.get_batch_iterator(task.dataset("valid"), max_sentences=16, seed=1)
    sample = next(iter(itr.next_epoch_itr(shuffle=False)))
    model.train()
    _, _, first = task.valid_step(sample, model, criterion)
    assert model.training, "valid_step must give the model back in train mode"
    _, _, again = task.valid_step(sample, model, criterion)
    # decoded in eval mode: no dropout, so the same BLEU counts twice (train mode would differ)
    keys = [k for k in first if k.startswith("_bleu_")]
    assert len(keys) == 10 and all(first[k] == again[k] for k in keys)
    assert first["_bleu_totals_0"] > 0 and first["_decode_sents"] == sample["nsentences"]
    if family == "energy_net":
        assert not model.lanmt.training  # the frozen LaNMT stays in eval mode throughout
