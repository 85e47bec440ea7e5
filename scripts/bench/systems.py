"""Which systems the benchmark runs: each one a row of the table, given as the fairseq-generate
arguments that build it (task, decoding and its options) and the checkpoints it reads."""

import fnmatch
import os
from dataclasses import dataclass, field
from typing import List, Optional

from bench import ct2

# checkpoint folder names of the Multi30k pipeline (WORK/checkpoints/NAME/checkpoint_best.pt)
CHECKPOINTS = ["teacher", "cmlm", "refine_nat", "lanmt", "score_net", "energy_net"]


@dataclass
class System:
    key: str                       # short id, e.g. "refine_nat.fixed4"
    name: str                      # table label
    family: str                    # AR, CMLM, refine_nat, LaNMT, score, energy
    ckpt: str                      # checkpoint name (CHECKPOINTS)
    args: List[str]                # fairseq-generate arguments (task + generation)
    needs: List[str] = field(default_factory=list)   # other checkpoints it reads (teacher)
    series: Optional[str] = None   # BLEU-vs-steps series
    passes: Optional[int] = None   # decoder passes (max) for that plot
    primary: bool = False          # drawn in the latency-vs-length plot
    engine: str = "fairseq"        # fairseq (task.inference_step) or ctranslate2 (bench/ct2.py)
    beam: int = 1                  # CTranslate2 rows: beam size
    quantization: str = "float32"  # CTranslate2 rows: weight type of the converted model
    ct2_teacher: Optional[str] = None  # --teacher-path is the teacher converted to this weight type
    onnx_precision: Optional[str] = None  # compiled twins: the exported passes' precision


AR_FAMILIES = ("AR", "CTranslate2")  # autoregressive rows: fairseq's beam search, CTranslate2


def build_systems(a, ckpts):
    nar = ["--task", "nar_translation", "--beam", "1"]
    ar_len = []
    if a.ar_max_len_a is not None:
        ar_len += ["--max-len-a", str(a.ar_max_len_a)]
    if a.ar_max_len_b is not None:
        ar_len += ["--max-len-b", str(a.ar_max_len_b)]
    teacher = ckpts["teacher"]
    out = []
    for b in a.ar_beams:
        out.append(System(f"ar.beam{b}", f"AR Transformer, beam {b}", "AR", "teacher",
                          ["--task", "translation", "--beam", str(b)] + ar_len, primary=True))
    for q in a.ct2_quantizations:  # the same teacher as CTranslate2 serves it
        for b in a.ct2_beams:
            out.append(System(f"ct2.{q}.beam{b}", f"AR Transformer, CTranslate2 {q}, beam {b}",
                              "CTranslate2", "teacher", ["--beam", str(b)] + ar_len,
                              primary=b == max(a.ct2_beams), engine="ctranslate2", beam=b,
                              quantization=q))
    for n in a.cmlm_iters:
        lb = f", length beam {a.cmlm_length_beam}" if a.cmlm_length_beam > 1 else ""
        out.append(System(f"cmlm.iter{n}", f"CMLM (fairseq), {n} iteration{'s' * (n > 1)}{lb}", "CMLM", "cmlm",
                          ["--task", "translation_lev", "--iter-decode-max-iter", str(n - 1),
                           "--iter-decode-eos-penalty", "0", "--iter-decode-with-beam", str(a.cmlm_length_beam),
                           "--beam", "1"],
                          series="CMLM (iterations)", passes=n, primary=n == max(a.cmlm_iters)))
    refine = nar + ["--decoding", "refine", "--iter-decode-with-beam", str(a.refine_length_beam)]
    out.append(System(f"refine_nat.adaptive{a.refine_max_iter}",
                      f"refine_nat, adaptive (max {a.refine_max_iter} steps)", "refine_nat", "refine_nat",
                      refine + ["--iter-decode-max-iter", str(a.refine_max_iter)], primary=True))
    # the paper's decoding: decoder 2 reads repeated tokens as they are (the default masks them)
    out.append(System(f"refine_nat.adaptive{a.refine_max_iter}.keep",
                      f"refine_nat, adaptive (max {a.refine_max_iter} steps), repeated tokens kept "
                      f"(the paper's decoding)", "refine_nat", "refine_nat",
                      refine + ["--iter-decode-max-iter", str(a.refine_max_iter),
                                "--refine-repeats", "keep"]))
    for k in a.refine_steps:
        label = "refine_nat, decoder 1 only (0 steps)" if k == 0 else f"refine_nat, {k} step{'s' * (k > 1)} (fixed)"
        out.append(System(f"refine_nat.fixed{k}", label,
                          "refine_nat", "refine_nat",
                          refine + ["--iter-decode-max-iter", str(k), "--iter-decode-force-max-iter"],
                          series="refine_nat (fixed steps)", passes=k + 1))
    for lb in a.refine_rerank_beams:
        beam = nar + ["--decoding", "refine", "--iter-decode-with-beam", str(lb),
                      "--iter-decode-max-iter", str(a.refine_max_iter)]
        out.append(System(f"refine_nat.beam{lb}", f"refine_nat, adaptive, length beam {lb}",
                          "refine_nat", "refine_nat", beam))
        out.append(System(f"refine_nat.beam{lb}.teacher",
                          f"refine_nat, adaptive, length beam {lb} (teacher reranking)",
                          "refine_nat", "refine_nat", beam + ["--teacher-path", teacher],
                          needs=["teacher"]))
    out.append(System("lanmt.prior", "LaNMT, prior mean (no refinement)", "LaNMT", "lanmt",
                      nar + ["--decoding", "prior"], series="LaNMT delta (max steps)", passes=1))
    for ascent in (False, True):  # the paper's plain chain (default), then with the ascent check
        for k in a.delta_steps:
            steps = f"<= {k} step{'s' * (k > 1)}"
            out.append(System(
                f"lanmt.delta{k}" + ".ascent" * ascent,
                f"LaNMT, delta inference with ascent check ({steps})" if ascent
                else f"LaNMT, delta inference ({steps})", "LaNMT", "lanmt",
                nar + ["--decoding", "delta", "--iter-decode-max-iter", str(k)]
                + ["--delta-ascent-check"] * ascent,
                series=f"LaNMT delta{' + ascent check' * ascent} (max steps)", passes=k + 1,
                primary=not ascent and k == max(a.delta_steps)))
    for m in a.search_sizes:
        out.append(System(f"lanmt.search{m}", f"LaNMT, latent search m={m} (delta <= {a.search_delta_steps}, "
                          f"teacher rescoring)", "LaNMT", "lanmt",
                          nar + ["--decoding", "delta", "--iter-decode-max-iter", str(a.search_delta_steps),
                                 "--latent-search-size", str(m), "--latent-search-noise", str(a.search_noise),
                                 "--teacher-path", teacher], needs=["teacher"]))
    score = ["--score-steps", str(a.score_steps), "--score-alpha", str(a.score_alpha)]
    out.append(System(f"score.steps{a.score_steps}", f"score inference ({a.score_steps} step{'s' * (a.score_steps > 1)})",
                      "score", "score_net", nar + ["--decoding", "score"] + score, primary=True))
    for m in a.score_search_sizes:
        out.append(System(f"score.search{m}", f"score inference + latent search m={m} (teacher rescoring)",
                          "score", "score_net",
                          nar + ["--decoding", "score"] + score +
                          ["--latent-search-size", str(m), "--latent-search-noise", str(a.search_noise),
                           "--teacher-path", teacher], needs=["teacher"], primary=m == max(a.score_search_sizes)))
    out.append(System(f"energy.steps{a.score_steps}", f"energy inference ({a.score_steps} step{'s' * (a.score_steps > 1)})",
                      "energy", "energy_net", nar + ["--decoding", "energy"] + score, primary=True))
    return with_compiled_twins(a, out)


def with_compiled_twins(a, systems):
    """After every system that --onnx names, its twin KEY.onnx: the same generator over the
    model's passes exported to ONNX (A.onnx_root/CHECKPOINT, exported by the run if absent or
    from other parameters) and run by ONNX Runtime; after every system that --onnx-int8 names,
    KEY.onnx-int8, the same over passes with int8 weights (A.onnx_root/CHECKPOINT-int8)."""
    twins = [(suffix, precision, [p.strip() for p in (patterns or "").split(",") if p.strip()])
             for suffix, precision, patterns in ((".onnx", "float32", a.onnx),
                                                 (".onnx-int8", "int8", getattr(a, "onnx_int8", "")))]
    out = []
    for s in systems:
        out.append(s)
        if s.engine != "fairseq" or s.args[:2] != ["--task", "nar_translation"]:
            continue
        for suffix, precision, patterns in twins:
            if not any(fnmatch.fnmatch(s.key, p) for p in patterns):
                continue
            args = list(s.args)
            name = f"{s.name}, compiled (ONNX Runtime{', int8 weights' * (precision == 'int8')})"
            ct2_teacher = None
            if "--teacher-path" in args and "float32" in a.ct2_quantizations and ct2.available():
                # the whole path fast: the teacher's scores from its float32 CTranslate2 conversion
                ct2_teacher = "float32"
                args[args.index("--teacher-path") + 1] = os.path.join(a.ct2_dir, "teacher-float32")
                name += " + CTranslate2 teacher"
            folder = os.path.join(a.onnx_root, s.ckpt + ("-int8" if precision == "int8" else ""))
            out.append(System(f"{s.key}{suffix}", name, s.family, s.ckpt,
                              args + ["--onnx-dir", folder], needs=s.needs, passes=s.passes,
                              primary=s.primary, ct2_teacher=ct2_teacher, onnx_precision=precision))
    return out


def select_systems(systems, patterns):
    """The systems whose id matches one of the comma-separated glob patterns (--systems)."""
    patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    # a compiled twin (KEY.onnx, KEY.onnx-int8) comes with its system
    def base(key):
        for suffix in (".onnx", ".onnx-int8"):
            if key.endswith(suffix):
                return key[: -len(suffix)]
        return key

    return [s for s in systems if any(fnmatch.fnmatch(s.key, p) or fnmatch.fnmatch(base(s.key), p)
                                      for p in patterns)]


def missing_checkpoints(system, ckpts):
    """Paths of the checkpoints this system reads that do not exist."""
    return [ckpts[c] for c in [system.ckpt] + system.needs if not os.path.isfile(ckpts[c])]
