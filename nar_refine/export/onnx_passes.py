"""Export the decoding passes of a nar_refine model to ONNX, once per checkpoint.

Each pass is one of the model's own methods, traced as it is (TorchScript-based
``torch.onnx.export``, opset 17, every dimension dynamic), so a change to the model's code
carries over at the next export:

    refine_nat   encode, length_logits, initial_step (decoder 1), refine_step (decoder 2),
                 initial_read / refine_read (the same with their argmax tokens: what the
                 generator reads), first_output (source -> decoder 1's output: no steps)
    lanmt        encode (+ prior states), prior, posterior, length_logits, decode_logits,
                 prior_output and delta_output (source -> output: the prior mean, one delta step)
    score_net    score, score_output (source -> output, one score step), plus its LaNMT's
                 passes (in lanmt/)
    energy_net   its LaNMT's passes only: the energy's score is an autograd gradient, which
                 ONNX cannot take; the energy network itself runs in PyTorch

What tracing needs, and how it is met:

1. shapes from data: a target length read with ``int(lengths.max())`` would be frozen into the
   graph as the example's value. While tracing, ``int`` in nar_refine's model and module code
   returns the 0-d tensor itself (``symbolic_int``), which PyTorch's ops accept as a dynamic
   size; any other tensor-to-integer conversion is an export error, not a silent constant.
2. branches on data: fairseq's encoder takes a padding branch only when the batch has pads,
   and refine_nat re-aligns left-padded sources. The example batch is right-padded (two
   sentences of different lengths, as nar_translation pads), so the general padded branch is
   recorded; the runtime refuses left-padded sources.
3. every pass is checked after export: ONNX Runtime runs it on a second example of other
   sizes (batch, source and target lengths) and must match PyTorch (``verify``).

``manifest.json`` records, per pass, its file, its inputs (``enc.KEY`` for the fields of the
source encoding) and outputs, and the parameter fingerprint of the model it came from, which
the runtime (``nar_refine.inference.compiled``) checks against the checkpoint it decodes with.
"""

import builtins
import contextlib
import copy
import json
import logging
import math
import os
import sys
import warnings

import torch
import torch.nn as nn

from nar_refine.errors import NARConfigError
from nar_refine.export.lean_attention import lean_attention
from nar_refine.inference.compiled import load_sessions
from nar_refine.models.inference_network import InferenceNetworkModel, parameter_fingerprint
from nar_refine.models.lanmt import LaNMTModel
from nar_refine.models.refine_nat import RefineNATModel, SourceEncoding

logger = logging.getLogger(__name__)

FORMAT = 3  # 2: refine_step takes token_mask (--refine-repeats mask); 3: lean attention,
# the one-call decodings (refine_nat first_output, lanmt prior/delta_output, score_output),
# refine_nat initial_read / refine_read
OPSET = 17
# the passes of each family: method -> its arguments ("enc": the source encoding's fields)
PASSES = {
    "refine_nat": {
        "encode": ["src_tokens", "src_lengths"],
        "length_logits": ["enc"],
        "initial_step": ["enc", "tgt_lengths"],
        "refine_step": ["enc", "prev_tokens", "prev_hidden", "token_mask"],
        "initial_read": ["enc", "tgt_lengths"],
        "refine_read": ["enc", "prev_tokens", "prev_hidden", "token_mask", "tgt_lengths"],
        "first_output": ["src_tokens", "src_lengths", "max_len"],
    },
    "lanmt": {
        "encode": ["src_tokens", "src_lengths"],
        "prior": ["enc"],
        "posterior": ["enc", "y"],
        "length_logits": ["enc", "z"],
        "decode_logits": ["enc", "z", "tgt_lengths"],
        "prior_output": ["src_tokens", "src_lengths"],
        "delta_output": ["src_tokens", "src_lengths"],
    },
    "score_net": {"score": ["enc", "z"], "score_output": ["src_tokens", "src_lengths", "alpha"]},
    "energy_net": {},
}
# (batch, source tokens with </s>, target tokens) of the traced example and of the check
TRACE_SIZES = (2, 7, 6)
VERIFY_SIZES = (3, 11, 9)
TOLERANCE = 1e-3  # largest |onnx - torch| accepted by the check (fp32 kernels differ)


def family(model):
    if isinstance(model, InferenceNetworkModel):
        return "energy_net" if model.energy else "score_net"
    if isinstance(model, LaNMTModel):
        return "lanmt"
    if isinstance(model, RefineNATModel):
        return "refine_nat"
    raise NARConfigError(f"{type(model).__name__} has no ONNX export; nar_refine exports "
                         f"refine_nat, lanmt and score_net/energy_net models")


class _Pass(nn.Module):
    """One method of the model as a module over flat tensors (what the tracer wants)."""

    def __init__(self, model, method, args, enc_keys):
        super().__init__()
        self.model, self.method, self.args, self.enc_keys = model, method, args, enc_keys

    def forward(self, *flat):
        values, i = [], 0
        for arg in self.args:
            if arg == "enc":
                values.append(SourceEncoding(zip(self.enc_keys, flat[i:i + len(self.enc_keys)])))
                i += len(self.enc_keys)
            else:
                values.append(flat[i])
                i += 1
        out = getattr(self.model, self.method)(*values)
        if isinstance(out, dict):
            return tuple(out[k] for k in self.enc_keys)
        return tuple(out) if isinstance(out, (tuple, list)) else out


def _int(value):
    """``int`` for nar_refine's code while tracing: a tensor stays a (dynamic) tensor."""
    return value if torch.is_tensor(value) else builtins.int(value)


@contextlib.contextmanager
def symbolic_int():
    """Shadow ``int`` in nar_refine's model and module code for the time of a trace."""
    mods = [m for name, m in list(sys.modules.items())
            if m is not None and name.startswith(("nar_refine.models", "nar_refine.modules"))]
    for m in mods:
        m.__dict__["int"] = _int
    try:
        yield
    finally:
        for m in mods:
            m.__dict__.pop("int", None)


def example_sources(model, sizes, generator):
    """A right-padded batch: ``bsz`` rows of real tokens + </s>, row i shorter by i tokens."""
    bsz, src_len, _ = sizes
    d = model_dictionary(model)
    low = d.nspecial
    tokens = torch.randint(low, len(d), (bsz, src_len), generator=generator)
    lengths = torch.tensor([max(2, src_len - i) for i in range(bsz)])
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n - 1] = d.eos()
        tokens[i, n:] = d.pad()
    return tokens, lengths


def model_dictionary(model):
    model = getattr(model, "lanmt", model)
    if isinstance(model, LaNMTModel):
        return model.encoder.dictionary
    return model.decoder.dictionary


def example_inputs(model, fam, sizes, seed):
    """Inputs for every pass of ``fam``, made by running the model eagerly on an example
    batch: {method: [values in the order of PASSES]}, and the encoding's field names."""
    g = torch.Generator().manual_seed(seed)
    src, src_lengths = example_sources(model, sizes, g)
    bsz, _, tgt_len = sizes
    tgt_lengths = torch.tensor([max(1, tgt_len - 2 * i) for i in range(bsz)])
    pad = model.pad if not isinstance(model, InferenceNetworkModel) else model.lanmt.pad
    mask = torch.arange(tgt_len)[None, :] >= tgt_lengths[:, None]
    d = model_dictionary(model)
    tokens = torch.randint(d.nspecial, len(d), (bsz, tgt_len), generator=g).masked_fill(mask, pad)
    enc = model.encode(src, src_lengths)
    values = {"src_tokens": src, "src_lengths": src_lengths, "enc": enc, "tgt_lengths": tgt_lengths,
              "y": tokens, "prev_tokens": tokens, "max_len": torch.tensor(256), "alpha": torch.tensor(1.0)}
    if fam == "refine_nat":
        values["prev_hidden"] = model.initial_step(enc, tgt_lengths)[1]
        values["token_mask"] = (torch.rand(tokens.shape, generator=g) < 0.3) & ~mask
    else:
        mu, sigma = model.prior(enc)
        values["z"] = mu + 0.5 * sigma * torch.randn(mu.shape, generator=g)
    return {m: [values[a] for a in args] for m, args in PASSES[fam].items()}, list(enc.keys())


def flatten(values):
    out = []
    for v in values:
        out.extend(v.values() if isinstance(v, dict) else [v])
    return tuple(out)


def input_names(args, enc_keys):
    names = []
    for a in args:
        names.extend([f"enc.{k}" for k in enc_keys] if a == "enc" else [a])
    return names


def export_pass(model, method, args, enc_keys, example, path, opset=OPSET):
    """Trace one method into ``path``; -> (input names, output names) of the graph."""
    module = _Pass(model, method, args, enc_keys)
    module.eval()
    flat = flatten(example)
    with torch.no_grad():
        out = module(*flat)
    n_out = len(out) if isinstance(out, tuple) else 1
    outputs = ([f"enc.{k}" for k in enc_keys] if method == "encode"
               else [f"out{i}" for i in range(n_out)])
    inputs = input_names(args, enc_keys)
    dynamic = {name: {i: f"{name}_{i}" for i in range(t.dim())} for name, t in zip(inputs, flat)}
    dynamic.update({name: {i: f"{name}_{i}" for i in range((t if n_out > 1 else out).dim())}
                    for name, t in zip(outputs, out if n_out > 1 else (out,))})
    with warnings.catch_warnings(record=True) as caught, symbolic_int(), torch.no_grad(), \
            lean_attention(model):
        warnings.simplefilter("always")
        torch.onnx.export(module, flat, path, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    frozen = [str(w.message).split("\n")[0] for w in caught
              if "Python integer" in str(w.message) or "Python index" in str(w.message)]
    if frozen:
        raise NARConfigError(f"{type(model).__name__}.{method} reads a tensor as a Python "
                             f"number that is not nar_refine's own int(); the export would "
                             f"freeze it to the example's value: {frozen[0]}")
    return inputs, outputs


PRECISIONS = ("float32", "int8")


def export_model(model, out_dir, seed=1, opset=OPSET, verify=True, precision="float32"):
    """Export every pass of ``model`` (in eval mode, on the CPU in fp32: a copy when it is
    elsewhere) into ``out_dir``; -> manifest.

    ``precision`` int8: after the float32 passes are checked, their matrix weights are
    quantized to int8 (ONNX Runtime's dynamic quantization: int8 weights, activations
    quantized per call), as CTranslate2's int8 does for an autoregressive model; faster on a
    CPU, and no longer the PyTorch path's computation: tokens may differ (measure BLEU)."""
    if precision not in PRECISIONS:
        raise NARConfigError(f"export precision must be one of {PRECISIONS}, got {precision!r}")
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    model.eval()  # (fairseq's make_generation_fast_ makes train() return None)
    os.makedirs(out_dir, exist_ok=True)
    manifest = _export(model, out_dir, "", seed, opset)
    manifest.update({"format": FORMAT, "torch": torch.__version__,
                     "fingerprint": bytes(parameter_fingerprint(model).tolist()).hex()})
    if verify:
        verify_export(model, out_dir, manifest, seed + 1)
    manifest["precision"] = precision
    if precision == "int8":
        quantize_passes(out_dir, manifest)
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _export(model, out_dir, prefix, seed, opset):
    fam = family(model)
    entry = {"family": fam, "passes": {}}
    if fam in ("score_net", "energy_net"):
        entry["lanmt"] = _export(model.lanmt, out_dir, prefix + "lanmt.", seed, opset)
        entry["enc_keys"] = entry["lanmt"]["enc_keys"]
    examples, enc_keys = example_inputs(model, fam, TRACE_SIZES, seed)
    entry["enc_keys"] = enc_keys
    for method, args in PASSES[fam].items():
        name = f"{prefix}{method}.onnx"
        logger.info("exporting %s.%s -> %s", type(model).__name__, method, name)
        inputs, outputs = export_pass(model, method, args, enc_keys, examples[method],
                                      os.path.join(out_dir, name), opset)
        entry["passes"][method] = {"file": name, "args": args, "inputs": inputs, "outputs": outputs}
    return entry


def verify_export(model, out_dir, manifest, seed):
    """Run every exported pass in ONNX Runtime on an example of other sizes than the traced
    one and compare with PyTorch: a frozen shape or branch shows here, not in a translation."""
    worst = {}

    def check(m, entry, sessions):
        if "lanmt" in entry:
            check(m.lanmt, entry["lanmt"], sessions["lanmt"])
        examples, _ = example_inputs(m, entry["family"], VERIFY_SIZES, seed)
        for method, spec in entry["passes"].items():
            with torch.no_grad():
                expected = _Pass(m, method, spec["args"], entry["enc_keys"])(*flatten(examples[method]))
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = sessions["passes"][method].run_flat(flatten(examples[method]))
            diff = max(float((g.double() - e.double()).abs().max()) if g.numel() else 0.0
                       for g, e in zip(got, expected))
            shapes = [tuple(g.shape) for g in got] == [tuple(e.shape) for e in expected]
            worst[spec["file"][: -len(".onnx")]] = diff
            if not shapes or diff > TOLERANCE:
                raise RuntimeError(
                    f"ONNX export of {type(m).__name__}.{method} does not reproduce PyTorch on "
                    f"an example of other sizes (shapes equal: {shapes}, largest difference "
                    f"{diff:.3g}); this model's code does something the trace froze")

    check(model, manifest, load_sessions(out_dir, manifest, "cpu"))
    manifest["verified_max_abs_diff"] = worst


def quantize_passes(out_dir, manifest):
    """Every pass file of ``manifest`` (and its LaNMT's) rewritten with int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def files(entry):
        yield from (spec["file"] for spec in entry["passes"].values())
        if "lanmt" in entry:
            yield from files(entry["lanmt"])

    for name in files(manifest):
        path = os.path.join(out_dir, name)
        constants_to_initializers(path)
        quantize_dynamic(path, path + ".int8", weight_type=QuantType.QInt8)
        os.replace(path + ".int8", path)


def constants_to_initializers(path, min_elements=1024):
    """Large Constant nodes of the graph at ``path`` become initializers: the quantizer only
    quantizes weights that are initializers, and the trace leaves some (LaNMT's tied output
    projection) as Constant nodes."""
    import onnx

    model = onnx.load(path)
    keep = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and math.prod(value.dims) >= min_elements:
            value.name = node.output[0]
            model.graph.initializer.append(value)
        else:
            keep.append(node)
    if len(keep) < len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)
        onnx.save(model, path)


def export_if_stale(model, out_dir, precision="float32"):
    """Export ``model`` into ``out_dir`` unless it holds this model's passes already (at
    ``precision``)."""
    path = os.path.join(out_dir, "manifest.json")
    fingerprint = bytes(parameter_fingerprint(model).tolist()).hex()
    if os.path.isfile(path):
        with open(path) as f:
            manifest = json.load(f)
        if (manifest.get("fingerprint") == fingerprint and manifest.get("format") == FORMAT
                and manifest.get("precision", "float32") == precision):
            return manifest
    return export_model(model, out_dir, precision=precision)
