"""Decoding over exported passes: every generator, its networks run by ONNX Runtime.

``scripts/export_onnx.py`` writes a model's passes (``nar_refine.export.onnx_passes``: the
encoder, length predictor, decoders, LaNMT prior/posterior/decoder, score network) to a
folder; ``--onnx-dir DIR`` (task nar_translation; fairseq-generate, fairseq-interactive, the
Python API) decodes with them. The generators are the PyTorch path's own: they are handed a
``CompiledModel`` instead of the model, an object that answers

* the exported methods (``encode``, ``length_logits``, ``initial_step``, ``refine_step``,
  ``prior``, ``posterior``, ``decode_logits``, ``score``) with an ONNX Runtime session;
* every other method of the model's class (``decode``, ``delta_step``, ``predict_lengths``,
  ``log_prior``, ``score_step``, ``decode_at``, ...) with the class's own code, bound to the
  ``CompiledModel``, so that the exported passes are what it calls;
* anything else (the length predictor's ``predict``, ``pad``, ``parameters()``) from the model.

What stays in PyTorch: the glue between passes (argmax, length choice, candidate bookkeeping),
the teacher of ``--teacher-path`` and the energy network's gradient. The passes compute in fp32.
Providers (``--onnx-provider``): ``cpu``, or ``cuda`` (ONNX Runtime's CUDA provider, from the
``onnxruntime-gpu`` package); ``auto`` takes CUDA when the model is on a GPU and the provider
is there. Tensors cross between PyTorch and ONNX Runtime through host memory (numpy).
"""

import inspect
import json
import logging
import os
import types
import weakref

import torch

from nar_refine.errors import NARConfigError
from nar_refine.models.inference_network import parameter_fingerprint
from nar_refine.models.refine_nat import SourceEncoding

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_SESSIONS = {}  # (folder, provider, manifest mtime, threads) -> sessions
_COMPILED = weakref.WeakKeyDictionary()  # model -> {(folder, provider): CompiledModel}


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise NARConfigError("--onnx-dir needs ONNX Runtime: pip install onnxruntime (CPU) or "
                             "onnxruntime-gpu (CUDA); scripts/setup.sh installs the CPU one") from None
    return ort


class OnnxPass:
    """One exported method: called with the method's own arguments, returns what it returns."""

    def __init__(self, session, spec, enc_keys, method):
        self.session, self.spec, self.enc_keys, self.method = session, spec, enc_keys, method
        self.feeds = [i.name for i in session.get_inputs()]  # the export drops unused inputs
        self.device = torch.device("cpu")

    def run_flat(self, flat):
        """Flat input tensors (in the manifest's order) -> list of output tensors."""
        given = dict(zip(self.spec["inputs"], flat))
        # a Python number (a decoding option such as the score step size) is a 0-d input
        feed = {name: torch.as_tensor(given[name]).detach().cpu().contiguous().numpy()
                for name in self.feeds}
        outs = self.session.run(None, feed)
        return [torch.from_numpy(o).to(self.device) for o in outs]

    def __call__(self, *args):
        flat = []
        for name, value in zip(self.spec["args"], args):
            if name == "enc":
                flat.extend(value[k] for k in self.enc_keys)
            else:
                flat.append(value)
        outs = self.run_flat(flat)
        if self.method == "encode":
            enc = SourceEncoding(zip(self.enc_keys, outs))
            if "start" in enc and bool(enc["start"].any()):
                raise NARConfigError("the exported passes assume right-padded sources (the "
                                     "task's default); drop --left-pad-source True")
            return enc
        return outs[0] if len(outs) == 1 else tuple(outs)


def read_manifest(folder):
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise NARConfigError(f"--onnx-dir {folder}: no manifest.json; export the checkpoint first "
                             f"(python scripts/export_onnx.py --path CKPT --data-bin DATA --out {folder})")
    with open(path) as f:
        return json.load(f)


def resolve_provider(provider, device):
    ort = onnxruntime()
    have = ort.get_available_providers()
    if provider == "auto":
        provider = "cuda" if device.type == "cuda" and "CUDAExecutionProvider" in have else "cpu"
    if provider == "cuda" and "CUDAExecutionProvider" not in have:
        raise NARConfigError(f"--onnx-provider cuda: this ONNX Runtime has no CUDA provider "
                             f"(it has {', '.join(have)}); install onnxruntime-gpu instead of "
                             f"onnxruntime, or use --onnx-provider cpu")
    return provider


def load_sessions(folder, manifest, provider):
    """ONNX Runtime sessions of every pass in ``manifest`` ({"passes", "lanmt"}), cached."""
    ort = onnxruntime()
    threads = torch.get_num_threads()
    key = (os.path.abspath(folder), provider, os.path.getmtime(os.path.join(folder, "manifest.json"))
           if os.path.isfile(os.path.join(folder, "manifest.json")) else None, threads)
    if key[2] is not None and key in _SESSIONS:
        return _SESSIONS[key]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as PyTorch's (the benchmark's --threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3

    def build(entry):
        out = {"passes": {}}
        for method, spec in entry["passes"].items():
            path = os.path.join(folder, spec["file"])
            if not os.path.isfile(path):
                raise NARConfigError(f"--onnx-dir {folder}: {spec['file']} is missing; export again")
            session = ort.InferenceSession(path, options, providers=PROVIDERS[provider])
            out["passes"][method] = OnnxPass(session, spec, entry["enc_keys"], method)
        if "lanmt" in entry:
            out["lanmt"] = build(entry["lanmt"])
        return out

    sessions = build(manifest)
    if key[2] is not None:
        _SESSIONS[key] = sessions
    return sessions


class CompiledModel:
    """The model as the generators see it, its exported methods run by ONNX Runtime."""

    def __init__(self, model, sessions, device):
        self.__dict__["_model"] = model
        self.__dict__["_passes"] = sessions["passes"]
        for p in sessions["passes"].values():
            p.device = device
        if "lanmt" in sessions:  # score/energy networks: their LaNMT's passes too
            self.__dict__["lanmt"] = CompiledModel(model.lanmt, sessions["lanmt"], device)

    def __getattr__(self, name):  # only for names not set on the instance
        passes = self.__dict__["_passes"]
        if name in passes:
            return passes[name]
        model = self.__dict__["_model"]
        own = inspect.getattr_static(type(model), name, None)
        if inspect.isfunction(own) and own.__module__.startswith("nar_refine."):
            return types.MethodType(own, self)  # the model's own code, over the exported passes
        return getattr(model, name)

    def eval(self):
        """The passes have no training mode (and the model is in eval mode already): nothing
        to switch, which saves the generators' per-batch walk over every submodule."""
        return self

    @property
    def exported(self):
        """Names of the methods that ONNX Runtime answers (``lanmt.``: its LaNMT's)."""
        inner = self.__dict__.get("lanmt")
        return sorted(self.__dict__["_passes"]) + (
            [f"lanmt.{name}" for name in inner.exported] if inner is not None else [])


def compiled_model(model, folder, provider="auto"):
    """``model`` with its exported passes from ``folder``; refuses passes exported from other
    parameters (another checkpoint, or the same one trained further)."""
    device = next(model.parameters()).device
    provider = resolve_provider(provider, device)
    cache = _COMPILED.setdefault(model, {})
    if (folder, provider) in cache:
        return cache[(folder, provider)]
    if next(model.parameters()).dtype != torch.float32:
        raise NARConfigError("--onnx-dir: the exported passes compute in fp32; decode without "
                             "--fp16/--bf16")
    manifest = read_manifest(folder)
    fingerprint = bytes(parameter_fingerprint(model).tolist()).hex()
    if manifest.get("fingerprint") != fingerprint:
        raise NARConfigError(
            f"--onnx-dir {folder} was exported from other parameters than this checkpoint's "
            f"({manifest.get('family')} {str(manifest.get('fingerprint'))[:12]}..., checkpoint "
            f"{fingerprint[:12]}...); export this checkpoint again with scripts/export_onnx.py")
    compiled = CompiledModel(model, load_sessions(folder, manifest, provider), device)
    logger.info("decoding with the ONNX passes of %s (%s; provider %s)", folder,
                ", ".join(compiled.exported), provider)
    cache[(folder, provider)] = compiled
    return compiled


class CompiledGenerator:
    """A generator that decodes with the exported passes instead of the PyTorch model; every
    other attribute is the wrapped generator's."""

    def __init__(self, generator, compiled):
        self.__dict__["generator"], self.__dict__["compiled"] = generator, compiled

    def generate(self, models, sample, **kwargs):
        return self.generator.generate([self.compiled], sample, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["generator"], name)

    def __setattr__(self, name, value):
        setattr(self.generator, name, value)


def with_exported_passes(task, models, generator):
    """``generator`` itself, or with ``--onnx-dir`` one that decodes over the exported passes."""
    folder = getattr(task.cfg, "onnx_dir", None)
    if not folder:
        return generator
    if getattr(task.cfg, "left_pad_source", False):
        raise NARConfigError("--onnx-dir: the exported passes assume right-padded sources (the "
                             "task's default); drop --left-pad-source True")
    compiled = compiled_model(models[0], folder, getattr(task.cfg, "onnx_provider", "auto"))
    return CompiledGenerator(generator, compiled)
