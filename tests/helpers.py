"""Tiny data and real fairseq CLI runs for the tests (after fairseq's tests/utils.py)."""

import os
import random
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import forkserver

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "nar_refine")
BIN = Path(sys.executable).parent


def cli(name):
    """Path of a fairseq console script of this interpreter's environment."""
    path = BIN / name
    return str(path) if path.exists() else name


def run(cmd, check=True, env=None, timeout=1200, input=None):
    """Run a CLI command; on failure show its output in the assertion message.

    fairseq's console scripts and ``python script.py`` commands run in a fork of a server that
    has imported torch and fairseq once (tests/forkserver.py), also when a ``bash`` command
    runs them; the rest as plain subprocesses."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    full_env.update(env or {})
    if str(cmd[0]) == "bash":
        full_env = forkserver.shell_env(full_env)
    target = forkserver.target_of(cmd) if forkserver.ENABLED else None
    if target is not None and forkserver.SERVER.usable_for(full_env):
        # one folder per test process for the command's stdin/stdout/stderr files (commands of
        # one process run one at a time; the files are removed after each)
        tmp = Path(tempfile.gettempdir()) / f"nar_refine_fork_{os.getpid()}"
        proc = forkserver.SERVER.run(target, full_env, timeout, input, tmp)
    else:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=full_env,
                              timeout=timeout, input=input)
    if check:
        check_ok(cmd, proc)
    return proc


def check_ok(cmd, proc):
    """Fail with the command's output when it exited with an error."""
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )


def write_toy_corpus(folder, n_train=2000, n_valid=100, n_test=60, vocab=24, min_len=3,
                     max_len=8, seed=1):
    """A deterministic 'translation' task: lowercase word wK -> uppercase WK, same order.

    Easy enough that tiny non-autoregressive models learn it in a few hundred updates.
    """
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(vocab)]

    def sentence():
        return [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]

    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        src = [sentence() for _ in range(n)]
        (folder / f"{split}.src").write_text("\n".join(" ".join(s) for s in src) + "\n")
        (folder / f"{split}.tgt").write_text(
            "\n".join(" ".join(w.upper() for w in s) for s in src) + "\n"
        )
    return folder


def preprocess(raw, dest, extra=()):
    run([cli("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test",
         "--destdir", dest, "--joined-dictionary", "--workers", "1", *extra])
    return dest


# fairseq-train arguments of the tiny models that tests only decode with (quality does not matter)
NAR = ["--task", "nar_translation"]
OPTIM = ["--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "20", "--max-tokens", "2000", "--no-epoch-checkpoints",
         "--disable-validation"]
REFINE = [*NAR, "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss",
          "--share-all-embeddings", *OPTIM]
LANMT = [*NAR, "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", "--share-all-embeddings", *OPTIM]

TEARDOWN_ABORT = "terminate called without an active exception"


def train(data, save_dir, args, max_update=300, extra_env=None):
    cmd = [cli("fairseq-train"), data, "--user-dir", USER_DIR, "--save-dir", save_dir,
           "--max-update", str(max_update), "--num-workers", "0", "--seed", "1",
           "--no-progress-bar", "--log-format", "simple", "--log-interval", "10", *args]
    proc = run(cmd, env=extra_env, check=False)
    if proc.returncode == -6 and "done training in" in proc.stdout and TEARDOWN_ABORT in proc.stderr:
        # Seen once in many hundred runs, on a loaded machine, with fairseq's own cmlm_transformer:
        # a C++ thread aborts the interpreter's teardown after training finished and every
        # checkpoint was written. Not ours to fix; the checkpoints are complete.
        warnings.warn(f"fairseq-train aborted at exit after training finished ({TEARDOWN_ABORT})")
        return proc
    check_ok(cmd, proc)
    return proc


AR_TEACHER_ARGS = [
    "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
    "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20",
    "--max-tokens", "2000", "--criterion", "cross_entropy", "--no-epoch-checkpoints",
]


def train_ar_teacher(data, save_dir, extra=(), max_update=150):
    """A tiny autoregressive fairseq Transformer (task translation); returns checkpoint_last.pt."""
    train(data, str(save_dir), [*AR_TEACHER_ARGS, *extra], max_update=max_update)
    return str(save_dir / "checkpoint_last.pt")


def generate(data, path, args=(), check=True, subset="test"):
    cmd = [cli("fairseq-generate"), data, "--user-dir", USER_DIR, "--path", path,
           "--gen-subset", subset, "--batch-size", "32", "--num-workers", "0", *args]
    return run(cmd, check=check)


def parse_hypotheses(stdout, prefix="H"):
    """{sample id: text} from fairseq-generate's H-/D- lines."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(rf"^{prefix}-(\d+)\t(\S+)\t(.*)$", line)
        if m:
            out[int(m.group(1))] = m.group(3)
    return out


def parse_bleu(stdout):
    m = re.search(r"BLEU4? = ([\d.]+)|BLEU = ([\d.]+)", stdout)
    assert m, f"no BLEU line in output:\n{stdout[-2000:]}"
    return float(m.group(1) or m.group(2))


def log_value(line, key):
    """A metric from a fairseq log line, in either '| key value' or 'key=value' form."""
    m = re.search(rf"(?:\| |\b){re.escape(key)}[ =](-?[\d.]+)", line)
    assert m, f"no {key} in log line: {line}"
    return float(m.group(1))


def log_lines(log, kind):
    """fairseq log lines of one kind: 'train_inner', 'train', 'valid'."""
    return [l for l in log.splitlines() if f"| {kind} |" in l]


def assert_user_error(proc, *phrases, status=2):
    """A plugin usage error as the CLIs show it: exit ``status`` (2, as argparse), exactly one
    ``nar_refine: error:`` line on stderr that contains every phrase, and no traceback.
    Returns that line."""
    errors = [l for l in proc.stderr.splitlines() if l.startswith("nar_refine: error:")]
    assert proc.returncode == status and len(errors) == 1, (
        f"exit {proc.returncode}, {len(errors)} error line(s):\n{proc.stderr[-4000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in: {errors[0]}"
    return errors[0]


def teacher_one_by_one(teacher, task, src, tokens):
    """Sum of token log-probs of ``tokens`` + </s> given ``src`` by fairseq's SequenceScorer:
    one sentence at a time, no batching, no padding (what batched teacher scoring must equal)."""
    import torch
    from fairseq.sequence_scorer import SequenceScorer

    eos = task.target_dictionary.eos()
    target = torch.cat([tokens, tokens.new_tensor([eos])])[None]
    prev = torch.cat([tokens.new_tensor([eos]), tokens])[None]
    sample = {"net_input": {"src_tokens": src[None], "src_lengths": torch.tensor([src.numel()]),
                            "prev_output_tokens": prev}, "target": target}
    hypo = SequenceScorer(task.target_dictionary).generate([teacher], sample)[0][0]
    return float(hypo["positional_scores"].sum())


def max_grad_at_init(data, args):
    """Largest gradient element of the *summed* loss of one batch (what fairseq's --fp16 scales
    and backpropagates in half precision) for a freshly built model."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    torch.manual_seed(1)
    a = options.parse_args_and_arch(options.get_training_parser(),
                                    [data, "--user-dir", USER_DIR, "--max-tokens", "2000", *args])
    cfg = convert_namespace_to_omegaconf(a)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    sample = next(task.get_batch_iterator(task.dataset("valid"), max_tokens=2000, seed=1)
                  .next_epoch_itr(shuffle=False))
    model.train()
    criterion(model, sample)[0].backward()
    return max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)


FP16_SIZE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "64",
             "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim",
             "128", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
             "--share-all-embeddings", "--dropout", "0"]
