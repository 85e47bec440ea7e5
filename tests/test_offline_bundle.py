"""The offline bundle (scripts/make_offline_bundle.sh) without building one: what it carries,
its fairseq source edit, and the installer's refusals. Building a bundle needs the network and
installing one builds fairseq (minutes), so the whole path is measured by hand (README,
"Offline install on a GPU node")."""

import importlib.metadata
import io
import re
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import REPO, run

BUNDLE = REPO / "scripts" / "offline_bundle"
sys.path.insert(0, str(BUNDLE))
import fairseq_sdist  # noqa: E402

FAIRSEQ = Path(importlib.util.find_spec("fairseq").origin).parent
NOT_CARRIED = {"torch", "torchaudio", "scikit-learn"}  # the node's own / speech only / made optional


def bundle_requirements():
    lines = (BUNDLE / "requirements.txt").read_text().splitlines()
    return {r.name.lower(): r for r in (Requirement(l) for l in lines if l and not l.startswith("#"))}


def test_bundle_carries_what_fairseq_and_the_plugin_need():
    carried = bundle_requirements()
    for dist in ("fairseq-fixed", "nar_refine"):
        for spec in importlib.metadata.requires(dist):
            req = Requirement(spec)
            if req.marker is not None or req.name.lower() in NOT_CARRIED:
                continue
            assert req.name.lower() in carried, f"{dist} needs {spec}, the bundle has no {req.name}"
            if str(req.specifier).startswith("=="):  # pinned: the same release
                assert carried[req.name.lower()].specifier == req.specifier, (spec, carried[req.name.lower()])
    # building fairseq with --no-build-isolation, and the recipe's subword model
    assert {"setuptools", "wheel", "cython", "sentencepiece"} <= set(carried)
    # the same versions as scripts/setup.sh installs
    setup = (REPO / "scripts" / "setup.sh").read_text()
    for name in ("hydra-core", "omegaconf", "numpy", "sacrebleu"):
        assert f'"{carried[name]}"' in setup, f"setup.sh does not install {carried[name]}"


def _import_fairseq(blocked, patched):
    """`import fairseq` in a fresh interpreter where the ``blocked`` packages cannot be imported;
    with ``patched`` its two modules that import them are read through the bundle's edit."""
    code = f"""
import importlib.abc, importlib.machinery, sys
sys.path.insert(0, {str(BUNDLE)!r})
from fairseq_sdist import EDITS, patch_source
for name in {blocked!r}:
    sys.modules[name] = None  # "import name" raises ImportError
MODULES = {{rel[:-3].replace("/", "."): rel for rel in EDITS}}

class Patched(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name in MODULES:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            spec.loader = self
            return spec
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        text = open(module.__spec__.origin, newline="").read()
        code = patch_source(MODULES[module.__name__], text)
        exec(compile(code, module.__spec__.origin, "exec"), module.__dict__)

if {patched!r}:
    sys.meta_path.insert(0, Patched())
import fairseq  # imports every criterion and task
from fairseq.criterions import sentence_prediction
try:
    sentence_prediction.f1_score(y_true=[1, 0], y_pred=[1, 0])
except ImportError:
    print("metric needs scikit-learn")
print("imported")
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_bundle_fairseq_imports_without_sklearn_and_scipy():
    proc = _import_fairseq(["sklearn", "scipy"], patched=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["metric", "needs", "scikit-learn", "imported"]
    # the edit is what makes the difference: unpatched fairseq does not import without them
    proc = _import_fairseq(["sklearn", "scipy"], patched=False)
    assert proc.returncode != 0 and "sklearn" in proc.stderr
    # where scikit-learn is installed the metric works as before
    proc = _import_fairseq([], patched=True)
    assert proc.returncode == 0 and proc.stdout.split() == ["imported"], proc.stderr[-3000:]


# the part of fairseq-fixed 0.12.3.1's setup.py that the build edit touches (setup.py is not
# installed), its extension classes replaced by a stand-in that has their ``name``
SETUP_EXCERPT = """import os
from types import SimpleNamespace as Ext
extensions = [Ext(name="fairseq.libbleu"), Ext(name="fairseq.data.data_utils_fast"),
              Ext(name="fairseq.data.token_block_utils_fast")]
extensions.extend([Ext(name="fairseq.libbase"), Ext(name="fairseq.libnat"),
                   Ext(name="alignment_train_cpu_binding")])
if "CUDA_HOME" in os.environ:
    extensions.extend([Ext(name="fairseq.libnat_cuda")])
"""


def _fake_sdist(folder, crlf=True):
    """A source distribution with fairseq-fixed's edited files (the two modules from the
    installed fairseq, setup.py's excerpt, with the Windows line ends of the real sdist),
    version.txt and PKG-INFO."""
    path = folder / "fairseq_fixed-0.12.3.1.tar.gz"
    files = {rel: (FAIRSEQ.parent / rel).read_text() for rel in fairseq_sdist.EDITS}
    files["setup.py"] = SETUP_EXCERPT
    files = {rel: text.replace("\r\n", "\n").replace("\n", "\r\n") if crlf else text
             for rel, text in files.items()}
    files["fairseq/version.txt"] = "0.12.3.1"
    files["PKG-INFO"] = "Metadata-Version: 2.1\r\nName: fairseq-fixed\r\nVersion: 0.12.3.1\r\nSummary: x\r\n"
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"fairseq_fixed-0.12.3.1/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sdist_edit_and_version_label(tmp_path):
    out = fairseq_sdist.patch_sdist(_fake_sdist(tmp_path), tmp_path)
    assert out.name == "fairseq_fixed-0.12.3.1+lazyimports.tar.gz"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        read = lambda rel: tar.extractfile(f"fairseq_fixed-0.12.3.1+lazyimports/{rel}").read().decode()
        assert all(n.startswith("fairseq_fixed-0.12.3.1+lazyimports/") for n in names)
        assert read("fairseq/version.txt") == "0.12.3.1+lazyimports"
        assert "\r\nVersion: 0.12.3.1+lazyimports\r\n" in read("PKG-INFO")
        for rel in fairseq_sdist.EDITS:
            text = read(rel)
            assert "\r\n" in text and "\n" not in text.replace("\r\n", "")  # line ends kept
            assert not re.search(r"(?m)^(from|import) (sklearn|scipy)", text), rel
            compile(text, rel, "exec")
        setup = read("setup.py")
    assert "\r\n" in setup
    for env, built in (
        ({}, ["fairseq.libbleu", "fairseq.data.data_utils_fast",
                     "fairseq.data.token_block_utils_fast"]),
        ({"FAIRSEQ_TORCH_EXTENSIONS": "1"}, ["fairseq.libbleu", "fairseq.data.data_utils_fast",
         "fairseq.data.token_block_utils_fast", "fairseq.libbase", "fairseq.libnat",
         "alignment_train_cpu_binding"]),
        ({"CUDA_HOME": "/cuda"}, ["fairseq.libbleu", "fairseq.data.data_utils_fast",
         "fairseq.data.token_block_utils_fast", "fairseq.libnat_cuda"]),
    ):
        code = setup.replace("\r\n", "\n").replace("import os\n", "")  # os: a stand-in
        scope = {"os": types.SimpleNamespace(environ=env)}
        exec(compile(code, "setup.py", "exec"), scope)
        assert [e.name for e in scope["extensions"]] == built, env


def test_sdist_edit_refuses_another_fairseq():
    """A fairseq whose text differs from fairseq-fixed 0.12.3.1's stops the build, loudly."""
    text = (FAIRSEQ / "criterions" / "sentence_prediction.py").read_text()
    with pytest.raises(SystemExit, match="expected the fairseq-fixed 0.12.3.1 text once"):
        fairseq_sdist.patch_source("fairseq/criterions/sentence_prediction.py",
                                   text.replace("from scipy.stats import", "from scipy.stats  import"))


def test_install_refuses_another_python(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "TARGET").write_text("3.99\n")
    (bundle / "install.sh").write_bytes((BUNDLE / "install.sh").read_bytes())
    proc = run(["bash", bundle / "install.sh"], check=False, env={"PYTHON": sys.executable})
    have = "%d.%d" % sys.version_info[:2]
    assert proc.returncode == 2
    assert f"holds wheels for Python 3.99, but {sys.executable} is Python {have}" in proc.stderr
    assert f"make_offline_bundle.sh --python-version {have}" in proc.stderr


def test_make_bundle_refuses_a_bad_python_version(tmp_path):
    proc = run(["bash", REPO / "scripts" / "make_offline_bundle.sh", "--python-version", "312",
                "--out", tmp_path], check=False)
    assert proc.returncode == 2 and "--python-version X.Y, not 312" in proc.stderr
    assert not list(tmp_path.iterdir())
