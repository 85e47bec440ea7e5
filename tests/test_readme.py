"""README.md runs as written: its Translate now block (the released models), its Quick start
block and its Python API example, extracted from the README text itself (so the documentation
cannot drift from the code)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import forkserver
from helpers import REPO

DATA = Path(os.environ.get("DATA", REPO.parent / "shared" / "data" / "multi30k"))


def readme_block(kind, marker=None):
    text = (REPO / "README.md").read_text()
    if marker:
        text = text.split(f"<!-- {marker}:begin -->", 1)[1].split(f"<!-- {marker}:end -->", 1)[0]
    blocks = re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)
    assert blocks, f"no ```{kind} block in README.md"
    return blocks[0]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """Run the Quick start in a fresh folder that looks like a clone (links to the plugin,
    the examples and this interpreter's environment)."""
    if not (DATA / "train.en").exists():
        pytest.skip(f"Multi30k not found at {DATA} (shared/ beside the checkout, or DATA=)")
    root = tmp_path_factory.mktemp("clone")
    for name in ("nar_refine", "examples", "scripts"):
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.prefix))
    env = dict(os.environ, DATA=str(DATA), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env = forkserver.shell_env(env)  # its fairseq commands run in forks of one interpreter
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("bash", "quickstart")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"Quick start failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return root, proc


def test_quickstart_runs_every_family(quickstart):
    root, proc = quickstart
    for model in ("refine", "teacher", "lanmt", "score"):
        assert (root / "quickstart" / model / "checkpoint_best.pt").exists(), model
    # four fairseq-generate runs over the 100-line smoke test split, each scored by sacrebleu
    assert len(re.findall(r"Generate test with beam=\d+: BLEU", proc.stdout)) == 4
    assert proc.stdout.count("\nH-") >= 4 * 100
    assert re.search(r"^E-\d+_0\t", proc.stdout, flags=re.M)  # --retain-iter-history
    # fairseq-interactive (after the last fairseq-generate): two raw sentences in, two
    # detokenised hypotheses out
    interactive = proc.stdout.rsplit("Generate test with beam", 1)[1]
    assert len(re.findall(r"^D-\d+\t", interactive, flags=re.M)) == 2


def test_python_api_example_runs(quickstart):
    root, _ = quickstart
    proc = subprocess.run([sys.executable, "-c", readme_block("python", "api")], cwd=root,
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("[")]
    assert len(lines) == 2 and all(re.fullmatch(r"\['.*'\]", l) for l in lines), proc.stdout


def shown_output(marker):
    """The ```text block inside a README marker: what the block before it printed."""
    return readme_block("text", marker).splitlines()


def test_translate_now_prints_what_the_readme_shows(tmp_path):
    """The README's first block after set-up translates with the released models (no training)
    and prints what the README shows, line for line."""
    models = REPO / "examples" / "multi30k" / "models"
    for name in ("teacher", "refine_nat", "lanmt", "score_net"):
        assert (models / f"{name}.pt").exists(), f"{name}.pt is not released"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    block = readme_block("bash", "translate").replace("source .venv/bin/activate\n", "")
    root = tmp_path  # looks like a clone: the block writes sentences.en where it runs
    for name in ("nar_refine", "examples"):
        (root / name).symlink_to(REPO / name)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root,
                          env=forkserver.shell_env(env),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    shown = shown_output("translate")
    printed = [l for l in proc.stdout.splitlines() if l.startswith(("# ", "D-"))]
    def strip_score(line):  # "D-0<TAB>score<TAB>text" as shown: "D-0 text", spaces collapsed
        return " ".join(re.sub(r"^(D-\d+)\t-?[\d.e-]+\t", r"\1 ", line).split())

    assert [strip_score(l) for l in printed] == [strip_score(l) for l in shown], proc.stdout
    api = subprocess.run([sys.executable, "-c", readme_block("python", "translate-api")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert api.returncode == 0, api.stderr[-4000:]
    assert [l for l in api.stdout.splitlines() if l.startswith("[")] == readme_block("text", "translate-api").splitlines()
