"""The benchmark's command line and the default paths of a pipeline work dir."""

import argparse
import shlex
from pathlib import Path

from bench import EXAMPLE_DIR, SCRIPT, relative
from bench.systems import CHECKPOINTS

# options whose value is a path: written relative to the repository in the recorded command
PATH_OPTIONS = {"--work", "--out", "--data-bin", "--ref", "--translate", "--translate-dir", "--notes",
                "--ct2-dir", "--onnx-root",
                *(f"--{name.replace('_', '-')}" for name in CHECKPOINTS)}
# the same as settings (argparse dests) in results.json
PATH_SETTINGS = {"work", "out", "data_bin", "ref", "translate", "translate_dir", "notes", "ct2_dir", "onnx_root",
                 *(f"ckpt_{name}" for name in CHECKPOINTS)}


def int_list(text):
    return [int(x) for x in str(text).split(",") if x.strip()]


def get_parser(description=None):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="smoke test: work dir examples/multi30k/work-smoke, a few sentences, "
                        "AR length cap 1.2*src+10 (as the smoke pipeline)")
    p.add_argument("--work", help="pipeline work dir (default examples/multi30k/work, "
                                  "examples/multi30k/work-smoke with --smoke)")
    p.add_argument("--out", help="output dir (default WORK/benchmark, WORK/benchmark-gpu with --cuda; "
                                 "the committed table: --out examples/multi30k/results)")
    p.add_argument("--data-bin", help="binarised data with the real test references (default WORK/data-bin)")
    p.add_argument("--ref", help="raw reference file (default WORK/raw/test.TGT)")
    p.add_argument("--bpe", choices=["sentencepiece", "fastbpe", "none"],
                   help="subword model to undo (default: WORK/bpe_type, else sentencepiece)")
    p.add_argument("--source-lang", default="en")
    p.add_argument("--target-lang", default="de")
    p.add_argument("--gen-subset", default="test")
    p.add_argument("--checkpoint-name", default="checkpoint_best.pt",
                   help="file name inside WORK/checkpoints/NAME/")
    for name in CHECKPOINTS:
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}", dest=f"ckpt_{name}", metavar="PT",
                       help=f"checkpoint (default WORK/checkpoints/{name}/CHECKPOINT_NAME)")
    # what to measure
    p.add_argument("--test-sentences", type=int, default=None,
                   help="BLEU and throughput on the first K test sentences (default: all)")
    p.add_argument("--latency-sentences", type=int, default=200,
                   help="batch-1 latency over the first N test sentences (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batch-1 sentences first (default 10)")
    p.add_argument("--max-tokens", type=int, default=4096, help="batched throughput: tokens per batch")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--cuda", action="store_true", help="run on CUDA (default: CPU)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--systems", default="*",
                   help="comma-separated glob patterns of system ids to run (default all), e.g. 'ar.*,score.*'")
    p.add_argument("--require-all", action="store_true",
                   help="exit with status 1 when a checkpoint is missing (for the final table)")
    p.add_argument("--translate", action="append", default=[], metavar="FILE",
                   help="also translate this raw source file with every system (repeatable): "
                        "OUT/blind/SET/SYSTEM.TGT, SET = the file name without .SRC")
    p.add_argument("--translate-dir", metavar="DIR",
                   help="also translate every DIR/*.SRC file (e.g. ../shared/data/multi30k-blind)")
    p.add_argument("--translate-lines", type=int, default=None,
                   help="only the first K lines of each extra file (default all; 20 with --smoke)")
    p.add_argument("--translate-only", action="store_true",
                   help="only translate the extra files (no test set, no timing; results.md/json "
                        "untouched): OUT/blind/SET/SYSTEM.TGT and OUT/blind/translations.{json,md}; with "
                        "--systems, the other systems' earlier entries are kept")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the plots and rewrite results.md (with --notes) from "
                        "OUT/results.json of an earlier run")
    p.add_argument("--notes", metavar="MD",
                   help="markdown put into results.md after its header (what changed since the "
                        "last table and why); default OUT/notes.md when it exists")
    # system settings
    p.add_argument("--ar-beams", type=int_list, default=[1, 5])
    p.add_argument("--ar-max-len-a", type=float, default=None, help="fairseq --max-len-a for the AR systems")
    p.add_argument("--ar-max-len-b", type=int, default=None, help="fairseq --max-len-b for the AR systems")
    p.add_argument("--ct2-beams", type=int_list, default=[1, 5],
                   help="the AR teacher served by CTranslate2: beam sizes (empty: no CTranslate2 rows)")
    p.add_argument("--ct2-quantizations", type=lambda t: [x for x in t.split(",") if x.strip()],
                   default=["float32", "int8"],
                   help="CTranslate2 weight types, each a conversion of the teacher (default float32,int8)")
    p.add_argument("--ct2-dir", help="where the converted teachers go (default WORK/ct2)")
    p.add_argument("--onnx", metavar="PATTERNS", default="",
                   help="comma-separated glob patterns of nar_refine system ids that also run compiled: "
                        "a twin row KEY.onnx decodes over the model's passes exported to ONNX (ONNX "
                        "Runtime, --onnx-dir), e.g. 'refine_nat.*,lanmt.prior,score.*' (default none)")
    p.add_argument("--onnx-int8", metavar="PATTERNS", default="",
                   help="as --onnx, with the passes' weights quantized to int8 (twin rows KEY.onnx-int8; "
                        "scripts/export_onnx.py --precision int8), e.g. 'refine_nat.fixed0,score.steps1'")
    p.add_argument("--onnx-root", help="where the exported passes go, one folder per checkpoint "
                                       "(CHECKPOINT-int8 for int8; default WORK/onnx)")
    p.add_argument("--cmlm-iters", type=int_list, default=[1, 4, 10],
                   help="CMLM mask-predict iterations = decoder passes (fairseq --iter-decode-max-iter N-1)")
    p.add_argument("--cmlm-length-beam", type=int, default=1, help="CMLM --iter-decode-with-beam")
    p.add_argument("--refine-max-iter", type=int, default=10, help="refine_nat adaptive: max refinement steps")
    p.add_argument("--refine-steps", type=int_list, default=[0, 1, 2, 4, 10],
                   help="refine_nat fixed refinement steps (--iter-decode-force-max-iter)")
    p.add_argument("--refine-length-beam", type=int, default=1, help="refine_nat --iter-decode-with-beam")
    p.add_argument("--refine-rerank-beams", type=int_list, default=[3],
                   help="refine_nat length beams (adaptive) run without and with teacher reranking")
    p.add_argument("--delta-steps", type=int_list, default=[1, 2, 4], help="LaNMT delta inference, max steps")
    p.add_argument("--search-sizes", type=int_list, default=[5, 10, 20],
                   help="LaNMT latent search: candidates m (rescored by the teacher)")
    p.add_argument("--search-delta-steps", type=int, default=1,
                   help="LaNMT latent search: delta steps per candidate")
    p.add_argument("--search-noise", type=float, default=0.5, help="--latent-search-noise")
    p.add_argument("--score-steps", type=int, default=1, help="score/energy inference steps")
    p.add_argument("--score-alpha", type=float, default=1.0, help="score/energy step size")
    p.add_argument("--score-search-sizes", type=int_list, default=[10],
                   help="score inference + latent search: candidates m (teacher rescoring)")
    p.add_argument("--length-bin", type=int, default=5, help="latency-vs-length plot: bin width (source tokens)")
    return p


def resolve_paths(a):
    """Fill in the default paths from the work dir and the --smoke sizes; -> checkpoint paths."""
    if a.work is None:
        a.work = str(EXAMPLE_DIR / ("work-smoke" if a.smoke else "work"))
    work = Path(a.work)
    if a.out is None:  # never the committed examples/multi30k/results unless asked for
        a.out = str(work / ("benchmark-gpu" if a.cuda else "benchmark"))
    if a.data_bin is None:
        a.data_bin = str(work / "data-bin")
    if a.ct2_dir is None:
        a.ct2_dir = str(work / "ct2")
    if a.onnx_root is None:
        a.onnx_root = str(work / "onnx")
    if a.ref is None:
        a.ref = str(work / "raw" / f"{a.gen_subset}.{a.target_lang}")
    if a.bpe is None:
        bt = work / "bpe_type"
        a.bpe = bt.read_text().strip() if bt.exists() else "sentencepiece"
    if a.smoke:
        if a.test_sentences is None:
            a.test_sentences = 24
        a.latency_sentences = min(a.latency_sentences, 8)
        a.warmup = min(a.warmup, 2)
        if a.translate_lines is None:
            a.translate_lines = 20
        a.max_tokens = min(a.max_tokens, 1024)
        if a.ar_max_len_a is None:
            a.ar_max_len_a, a.ar_max_len_b = 1.2, 10
    ckpts = {}
    for name in CHECKPOINTS:
        ckpts[name] = getattr(a, f"ckpt_{name}") or str(work / "checkpoints" / name / a.checkpoint_name)
    return ckpts


def command_line(argv):
    """The command as run from the repository root: the script and every path option's value
    relative to the repository (no machine's absolute paths in the results)."""
    words, path_next = ["python", relative(SCRIPT)], False
    for word in argv:
        if path_next:
            word = relative(word)
        elif word.split("=", 1)[0] in PATH_OPTIONS and "=" in word:
            flag, value = word.split("=", 1)
            word = f"{flag}={relative(value)}"
        path_next = word in PATH_OPTIONS
        words.append(word)
    return " ".join(shlex.quote(x) for x in words)


def path_settings(a):
    """vars(a) with every path relative to the repository (results.json's "settings")."""
    def rel(key, value):
        if key not in PATH_SETTINGS or value is None:
            return value
        return [relative(v) for v in value] if isinstance(value, list) else relative(value)
    return {k: rel(k, v) for k, v in vars(a).items()}
