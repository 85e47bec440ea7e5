"""Decoding over exported passes (scripts/export_onnx.py, then --onnx-dir): the same tokens as
the PyTorch path, through fairseq-generate, fairseq-interactive and the Python API.

Tiny models trained for a few dozen updates on the toy corpus, exported once each (refine_nat,
LaNMT, a score network on that LaNMT); every decoding strategy then runs twice, in PyTorch and
over the ONNX Runtime passes, on padded batches, and the hypotheses must be the same tokens:
two through fairseq-generate, the others through the Python API (one process), and
fairseq-interactive once.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import (LANMT, NAR, OPTIM, REFINE, REPO, USER_DIR, assert_user_error, cli, generate,
                     parse_hypotheses, run, train)

pytest.importorskip("onnxruntime")

EXPORT = str(REPO / "scripts" / "export_onnx.py")


@pytest.fixture(scope="module")
def exported(toy_data, ar_teacher, tmp_path_factory):
    """{family: (checkpoint, export folder)} for refine_nat, lanmt and score_net, and the teacher."""
    root = tmp_path_factory.mktemp("compiled")
    ckpts = {}
    for name, args, updates in (("refine_nat", REFINE, 80), ("lanmt", LANMT, 80)):
        train(toy_data, str(root / name), args, max_update=updates)
        ckpts[name] = str(root / name / "checkpoint_last.pt")
    train(toy_data, str(root / "score_net"),
          [*NAR, "--arch", "score_net_tiny", "--criterion", "score_matching", "--lanmt-path",
           ckpts["lanmt"], *OPTIM], max_update=40)
    ckpts["score_net"] = str(root / "score_net" / "checkpoint_last.pt")
    out = {}
    for name, path in ckpts.items():
        folder = str(root / f"onnx_{name}")
        proc = run([sys.executable, EXPORT, "--path", path, "--data-bin", toy_data, "--out", folder])
        assert f"exported {name} to {folder}" in proc.stdout, proc.stdout[-2000:]
        out[name] = (path, folder)
    out["teacher"] = ar_teacher
    return out


# through fairseq-generate (padded batches of 32); the other strategies through the Python API
GENERATE = {
    "refine_adaptive_beam3_teacher": ("refine_nat", ["--iter-decode-max-iter", "10",
                                                     "--iter-decode-with-beam", "3", "--teacher-path"]),
    "score_search3_teacher": ("score_net", ["--decoding", "score", "--latent-search-size", "3",
                                            "--teacher-path"]),
}
API = {
    "refine_fixed4": ("refine_nat", {"iter_decode_max_iter": 4, "iter_decode_force_max_iter": True}),
    "delta4": ("lanmt", {"decoding": "delta", "iter_decode_max_iter": 4}),
    "prior_search4_teacher": ("lanmt", {"decoding": "prior", "latent_search_size": 4, "teacher_path": None}),
    "score2_line_search": ("score_net", {"decoding": "score", "score_steps": 2,
                                         "score_line_search": "0.5,1,2"}),
}


def hypotheses_and_scores(stdout):
    texts = parse_hypotheses(stdout)
    scores = {}
    for line in stdout.splitlines():
        if line.startswith("H-"):
            key, score, _ = line.split("\t", 2)
            scores[int(key[2:])] = float(score)
    return texts, scores


@pytest.mark.parametrize("setting", sorted(GENERATE))
def test_fairseq_generate_gives_the_pytorch_tokens(exported, toy_data, setting):
    family, args = GENERATE[setting]
    path, folder = exported[family]
    args = args + [exported["teacher"], "--task", "nar_translation", "--seed", "3"]
    eager = generate(toy_data, path, args)
    compiled = generate(toy_data, path, args + ["--onnx-dir", folder])
    assert "decoding with the ONNX passes of" in compiled.stderr + compiled.stdout
    (texts, scores), (texts_c, scores_c) = hypotheses_and_scores(eager.stdout), hypotheses_and_scores(compiled.stdout)
    assert len(texts) == 60 and texts_c == texts
    assert max(abs(scores[i] - scores_c[i]) for i in scores) < 1e-3


def load(path, toy_data):
    from nar_refine.hub import from_pretrained

    ckpt_dir, ckpt_file = path.rsplit("/", 1)
    return from_pretrained(ckpt_dir, ckpt_file, data_name_or_path=toy_data, source_lang="src",
                           target_lang="tgt")


def test_python_api_and_interactive_give_the_pytorch_tokens(exported, toy_data):
    """Every other strategy through the Python API (one process, the test sentences in
    batches of 20), and fairseq-interactive once."""
    from nar_refine.errors import NARConfigError

    sentences = (Path(toy_data).parent / "raw" / "test.src").read_text().splitlines()
    hubs = {}
    for setting, (family, options) in sorted(API.items()):
        path, folder = exported[family]
        nat = hubs.setdefault(family, load(path, toy_data))
        options = {k: (exported["teacher"] if k == "teacher_path" else v) for k, v in options.items()}
        for start in range(0, len(sentences), 20):
            batch = sentences[start:start + 20]
            torch.manual_seed(3)  # latent search draws the same noise
            want = nat.translate(batch, **options)
            torch.manual_seed(3)
            got = nat.translate(batch, onnx_dir=folder, **options)
            assert got == want, setting
        # an option for one call only: the next call decodes in PyTorch again
        assert nat.task.cfg.onnx_dir is None
    with pytest.raises(NARConfigError, match="no manifest.json"):
        hubs["lanmt"].translate(sentences[:2], onnx_dir=str(REPO / "tests"))

    path, folder = exported["lanmt"]
    proc = run([cli("fairseq-interactive"), toy_data, "--user-dir", USER_DIR, "--task", "nar_translation",
                "--source-lang", "src", "--target-lang", "tgt", "--path", path, "--decoding", "delta",
                "--iter-decode-max-iter", "3", "--num-workers", "0", "--onnx-dir", folder],
               input="\n".join(sentences[:3]) + "\n")
    assert list(parse_hypotheses(proc.stdout).values()) == hubs["lanmt"].translate(
        sentences[:3], decoding="delta", iter_decode_max_iter=3)


def test_exports_of_other_parameters_and_missing_runtimes_are_one_line_errors(exported, toy_data):
    path, folder = exported["refine_nat"]
    _, lanmt_folder = exported["lanmt"]
    proc = generate(toy_data, path, ["--task", "nar_translation", "--onnx-dir", lanmt_folder], check=False)
    assert_user_error(proc, "exported from other parameters than this checkpoint",
                      "scripts/export_onnx.py")
    import onnxruntime

    from nar_refine.errors import NARConfigError

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        nat = load(path, toy_data)
        with pytest.raises(NARConfigError, match="--onnx-provider cuda: .*onnxruntime-gpu"):
            nat.translate(["w1 w2"], onnx_dir=folder, onnx_provider="cuda")


class _FrozenLength(nn.Module):
    """A method that reads a length with Python's int() outside nar_refine's code."""

    def positions(self, lengths):
        return torch.arange(int(lengths.max()))[None, :] < lengths[:, None]


def test_a_length_the_trace_would_freeze_is_an_export_error(tmp_path):
    from nar_refine.errors import NARConfigError
    from nar_refine.export.onnx_passes import export_pass

    with pytest.raises(NARConfigError, match="freeze it to the example's value"):
        export_pass(_FrozenLength(), "positions", ["lengths"], [], [torch.tensor([3, 2])],
                    str(tmp_path / "p.onnx"))


def test_ctranslate2_teacher_scores_as_the_pytorch_teacher(exported, toy_data, tmp_path):
    """--teacher-path naming a folder of ct2-fairseq-converter: the same sums of log-probs as
    the fairseq teacher, and so the same latent-search choices, with the passes compiled."""
    pytest.importorskip("ctranslate2")
    from fairseq import tasks

    from nar_refine.errors import NARConfigError
    from nar_refine.inference.teacher import TeacherScorer

    folder = tmp_path / "teacher_ct2"
    run([cli("ct2-fairseq-converter"), "--model_path", exported["teacher"], "--data_dir", toy_data,
         "--source_lang", "src", "--target_lang", "tgt", "--output_dir", folder,
         "--unsafe_deserialization"])
    path, onnx_folder = exported["score_net"]
    nat = load(path, toy_data)
    task = nat.task
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, len(task.source_dictionary), (3, 6), generator=g)
    src[:, -1], src[2, 3:] = task.source_dictionary.eos(), task.source_dictionary.pad()
    src[2, 2] = task.source_dictionary.eos()
    cand = torch.randint(4, len(task.target_dictionary), (6, 5), generator=g)
    cand[1, 2:] = task.target_dictionary.pad()
    rows = torch.tensor([0, 0, 1, 1, 2, 2])
    cand[3] = cand[2]  # equal candidates of one sentence: scored once, both get the score
    cand[4] = cand[0]  # equal to a candidate of another sentence: scored on its own
    fairseq_teacher = TeacherScorer.from_path(exported["teacher"], task)
    ct2_teacher = TeacherScorer.from_path(str(folder), task)
    want = fairseq_teacher(src, None, cand, rows=rows)
    got = ct2_teacher(src, None, cand, rows=rows)
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    for scorer, scores in ((fairseq_teacher, want), (ct2_teacher, got)):  # = every row scored
        every = scorer.score(src, None, cand, rows=rows)
        assert torch.allclose(scores, every, atol=1e-5) and scores[3] == scores[2]
        assert not torch.isclose(scores[4], scores[0]), "another source, another score"

    # latent search over the compiled passes: the same choices as with the fairseq teacher
    # (generators built first: loading a fairseq teacher draws from torch's generator)
    from omegaconf import open_dict

    with open_dict(task.cfg):
        task.cfg.decoding, task.cfg.latent_search_size = "score", 3
        task.cfg.teacher_path = exported["teacher"]
        eager = task.build_generator(nat.models, nat.cfg.generation)
        task.cfg.teacher_path, task.cfg.onnx_dir = str(folder), onnx_folder
        fast = task.build_generator(nat.models, nat.cfg.generation)
    task.load_dataset("test")
    data = task.dataset("test")
    sample = data.collater([data[i] for i in range(20)])
    out = []
    for gen in (eager, fast):
        torch.manual_seed(3)
        out.append([h[0]["tokens"].tolist() for h in task.inference_step(gen, nat.models, sample)])
    assert out[1] == out[0]
    # a conversion made on other dictionaries is refused
    other = tasks.setup_task(task.cfg)
    other.src_dict.add_symbol("extra")
    with pytest.raises(NARConfigError, match="source dictionary sizes differ: teacher 56, task 57"):
        TeacherScorer.from_path(str(folder), other)


# decodings that run from the source to the output in one call (one exported pass)
ONE_CALL = {
    "refine_decoder1": ("refine_nat", {"iter_decode_max_iter": 0}, "first_output"),
    "prior": ("lanmt", {"decoding": "prior"}, "prior_output"),
    "delta1": ("lanmt", {"decoding": "delta", "iter_decode_max_iter": 1}, "delta_output"),
    "score1": ("score_net", {"decoding": "score", "score_steps": 1}, "score_output"),
}


def hypothesis_fields(hypos):
    return [(h[0]["tokens"].tolist(), round(float(h[0]["score"]), 5),
             [round(float(x), 5) for x in h[0]["positional_scores"]]) for h in hypos]


def test_one_call_decodings_are_the_step_path_and_one_onnx_run(exported, toy_data, monkeypatch):
    """Decoder 1 alone, the prior mean, one delta step and one score step decode from the
    source in one call: in PyTorch the same hypotheses (tokens, scores, token scores) as the
    step path they replace; over the export exactly one ONNX Runtime run per batch (the
    whole decoding is one graph), with the PyTorch tokens."""
    from nar_refine.inference import compiled
    from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator
    from nar_refine.inference.latent_refinement import LatentRefinementGenerator

    sentences = (Path(toy_data).parent / "raw" / "test.src").read_text().splitlines()[:24]
    runs = []
    real_run = compiled.OnnxPass.run_flat
    monkeypatch.setattr(compiled.OnnxPass, "run_flat",
                        lambda self, flat: runs.append(self.method) or real_run(self, flat))
    for setting, (family, options, method) in sorted(ONE_CALL.items()):
        path, folder = exported[family]
        nat = load(path, toy_data)
        batch = [nat.encode(s) for s in sentences]
        one_call = hypothesis_fields(nat.generate(batch, **options))
        with monkeypatch.context() as m:  # the step path
            for cls in (AdaptiveRefinementGenerator, LatentRefinementGenerator):
                m.setattr(cls, "direct_output", lambda self, model: None)
            steps = hypothesis_fields(nat.generate(batch, **options))
        assert one_call == steps, setting
        runs.clear()
        got = nat.generate(batch, onnx_dir=folder, **options)
        assert runs == [method], (setting, runs)
        assert [h[0]["tokens"].tolist() for h in got] == [t for t, _, _ in one_call], setting


def test_lean_attention_is_fairseqs_attention_without_shape_arithmetic(tmp_path):
    """The exported attention computes what fairseq's MultiheadAttention computes (self,
    encoder-decoder and plain attention, padded keys), and its ONNX graph reads no shape:
    the heads are split and merged by constant reshapes."""
    import onnx
    from fairseq.modules import MultiheadAttention

    from nar_refine.export.lean_attention import lean_attention

    torch.manual_seed(0)
    kinds = {"self": dict(self_attention=True), "cross": dict(encoder_decoder_attention=True),
             "plain": {}}
    for name, kw in kinds.items():
        mha = MultiheadAttention(16, 4, **kw).eval()
        q, k, v = torch.randn(5, 3, 16), torch.randn(7, 3, 16), torch.randn(7, 3, 16)
        if name == "self":
            k = v = q
        pad = torch.zeros(3, k.size(0), dtype=torch.bool)
        pad[1, -2:] = pad[2, -4:] = True
        with torch.no_grad():
            want = mha(q, k, v, key_padding_mask=pad, need_weights=False)[0]
            with lean_attention(mha) as n:
                got = mha(q, k, v, key_padding_mask=pad, need_weights=False)[0]
        assert n == 1 and torch.allclose(got, want, atol=1e-5), name
        assert "forward" not in mha.__dict__  # restored

        class Wrap(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = mha

            def forward(self, q, k, v, pad):
                return self.attn(q, k, v, key_padding_mask=pad, need_weights=False)[0]

        path = str(tmp_path / f"{name}.onnx")
        axes = {n: {0: f"{n}0", 1: f"{n}1"} for n in ("q", "k", "v", "pad")}
        with torch.no_grad(), lean_attention(mha):
            torch.onnx.export(Wrap(), (q, k, v, pad), path, input_names=list(axes),
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        ops = [node.op_type for node in onnx.load(path).graph.node]
        assert not {"Shape", "Gather", "Concat"} & set(ops), (name, ops)
        assert ops.count("MatMul") <= 6, (name, ops)


@pytest.mark.parametrize("vocab", [8008, 97])  # a chunked argmax, and TopK for a prime size
def test_exported_argmax_is_argmax_with_its_tie_rule(tmp_path, vocab):
    """The argmax the exported passes compute (chunk maxima, then the first chunk and the first
    id in it; TopK when the vocabulary has no divisor to chunk by) returns torch's argmax
    under ONNX Runtime: the lowest id among equal maxima, banned ids never, for other batch
    and length sizes than the traced ones."""
    import onnxruntime as ort

    from nar_refine.modules.token_scores import argmax_log_probs, chunk_size

    assert (chunk_size(vocab) is None) == (vocab == 97)
    banned = torch.tensor([1, 2, 3])

    class Argmax(nn.Module):
        def forward(self, logits):
            return argmax_log_probs(logits.clone(), banned)

    def logits_of(b, t, g):
        x = torch.randn(b, t, vocab, generator=g)
        x[0, 0, [5, vocab - 7]] = 50.0  # a tie across chunks: the lower id wins
        x[0, 1, [40, 41]] = 50.0        # a tie inside a chunk
        x[-1, -1, 2] = 99.0             # a banned id holding the maximum
        return x

    g = torch.Generator().manual_seed(0)
    path = str(tmp_path / "argmax.onnx")
    with torch.no_grad():
        torch.onnx.export(Argmax(), (logits_of(2, 5, g),), path, input_names=["logits"],
                          output_names=["lp", "tokens"], opset_version=17, dynamo=False,
                          dynamic_axes={"logits": {0: "b", 1: "t"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = logits_of(3, 9, g)
    want_lp, want = Argmax()(x)
    got_lp, got = session.run(None, {"logits": x.numpy()})
    assert torch.equal(torch.from_numpy(got), want)
    assert want[0, 0] == 5 and want[0, 1] == 40 and want[-1, -1] != 2
    assert torch.allclose(torch.from_numpy(got_lp), want_lp, atol=1e-5)


def test_int8_export_quantizes_every_pass_and_decodes(exported, toy_data, tmp_path):
    """--precision int8: every pass file holds int8 weights (ONNX Runtime's dynamic
    quantization) after the float32 check, the manifest says so, fairseq-generate decodes over
    it, and a folder of the other precision counts as stale (re-exported, not reused)."""
    import json

    import onnx

    from nar_refine.export.onnx_passes import export_if_stale

    path, _ = exported["lanmt"]
    folder = str(tmp_path / "int8")
    proc = run([sys.executable, EXPORT, "--path", path, "--data-bin", toy_data, "--out", folder,
                "--precision", "int8"])
    assert f"exported lanmt to {folder} (int8)" in proc.stdout, proc.stdout[-2000:]
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    for spec in manifest["passes"].values():
        graph = onnx.load(str(Path(folder) / spec["file"])).graph
        ops = {n.op_type for n in graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, (spec["file"], sorted(ops))
        # no float product with a weight is left (a tied output projection is a Constant node)
        weights = {i.name for i in graph.initializer} | {
            n.output[0] for n in graph.node if n.op_type == "Constant"
            and any(a.name == "value" and len(a.t.dims) == 2 for a in n.attribute)}
        assert not [n.name for n in graph.node if n.op_type == "MatMul" and weights & set(n.input)], spec["file"]
    out = generate(toy_data, path, ["--task", "nar_translation", "--decoding", "delta",
                                    "--iter-decode-max-iter", "1", "--onnx-dir", folder])
    assert len(parse_hypotheses(out.stdout)) == 60
    model = load(path, toy_data).models[0]
    assert export_if_stale(model, folder, precision="int8")["precision"] == "int8"
    stamp = (Path(folder) / "manifest.json").stat().st_mtime_ns
    export_if_stale(model, folder, precision="int8")  # fresh: kept
    assert (Path(folder) / "manifest.json").stat().st_mtime_ns == stamp
    assert export_if_stale(model, folder)["precision"] == "float32"  # stale: re-exported


def test_int8_quantizes_a_weight_the_trace_left_as_a_constant(tmp_path):
    """A tied output projection can reach the graph as a Constant node, which ONNX Runtime's
    quantizer skips (it quantizes initializers only): the export turns large constants into
    initializers first, so that the product gets int8 weights too."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from nar_refine.export.onnx_passes import quantize_passes

    weight = numpy_helper.from_array(np.random.RandomState(0).randn(32, 64).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=weight), helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "p.onnx"))
    quantize_passes(str(tmp_path), {"passes": {"p": {"file": "p.onnx"}}})
    ops = [n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node]
    assert "MatMul" not in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops), ops
