"""The AR teacher served by CTranslate2, as users deploy an autoregressive model on a CPU.

The teacher checkpoint is converted once per quantization (ctranslate2's FairseqConverter, the
code of ``ct2-fairseq-converter``) into WORK/ct2/teacher-QUANT/, again when the checkpoint
changes. Timed as every other row: the same test sentences (their source token ids, read from
the data-bin through fairseq's translation task, as subword strings), the same threads
(``intra_threads``), batch 1 for latency and the same --max-tokens batches for throughput; the
clock covers ``translate_batch`` only, as it covers ``task.inference_step`` for fairseq.
Length limit as fairseq's --max-len-a/--max-len-b (default 200 tokens).

``ctranslate2`` is an optional dependency (scripts/setup.sh installs it when it can): without it
these rows say "skipped" and the run goes on.
"""

import json
import logging
import os
import time
from pathlib import Path

from bench import USER_DIR
from bench.runner import timing_fields

logger = logging.getLogger("benchmark")

VERSION = "4.8.5"  # the version scripts/setup.sh installs
SKIPPED = (f"skipped: ctranslate2 is not installed (pip install ctranslate2=={VERSION}; "
           f"scripts/setup.sh installs it)")


def available():
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def converted_model(a, ckpt, quantization):
    """WORK/ct2/teacher-QUANT for this checkpoint, converted now if absent or stale."""
    import ctranslate2

    out = Path(a.ct2_dir) / f"teacher-{quantization}"
    st = os.stat(ckpt)
    stamp = {"checkpoint": os.path.abspath(ckpt), "size": st.st_size, "mtime": st.st_mtime,
             "quantization": quantization, "ctranslate2": ctranslate2.__version__}
    stamp_file = out / "nar_refine_source.json"
    if (out / "model.bin").is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return str(out)
    logger.info("converting %s to CTranslate2 (%s) in %s", ckpt, quantization, out)
    converter = ctranslate2.converters.FairseqConverter(
        ckpt, a.data_bin, source_lang=a.source_lang, target_lang=a.target_lang, user_dir=USER_DIR,
        unsafe_deserialization=True)  # fairseq checkpoints pickle their arguments; ours are trusted
    converter.convert(str(out), quantization=quantization, force=True)
    stamp_file.write_text(json.dumps(stamp))
    return str(out)


def max_length(a, src_len, max_positions):
    """fairseq's SequenceGenerator limit: min(a * source length + b, positions - 1)."""
    len_a = a.ar_max_len_a if a.ar_max_len_a is not None else 0.0
    len_b = a.ar_max_len_b if a.ar_max_len_b is not None else 200
    return max(1, min(int(len_a * src_len + len_b), max_positions - 1))


def run(bench, system, reference):
    """Batch-1 latency and batched throughput of the converted teacher; ``reference`` is the
    fairseq teacher system whose task reads the test set. -> (timings, hypotheses, None)."""
    import ctranslate2

    a = bench.a
    t_setup = time.perf_counter()
    built = bench.setup(reference)
    task, models, dataset = built.task, built.models, built.dataset
    src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
    model_dir = converted_model(a, bench.ckpts[system.ckpt], system.quantization)
    translator = ctranslate2.Translator(model_dir, device="cuda" if a.cuda else "cpu",
                                        intra_threads=a.threads, inter_threads=1)
    setup_s = time.perf_counter() - t_setup
    n_test = min(len(dataset), a.test_sentences or len(dataset))
    max_pos = min(models[0].max_positions()) if isinstance(models[0].max_positions(), tuple) \
        else models[0].max_positions()
    special = {src_dict.pad(), src_dict.eos(), src_dict.bos()}

    def tokens(i):  # the source as subword strings, without </s> (the converter adds it)
        return [src_dict[t] for t in dataset[i]["source"].tolist() if t not in special]

    def translate(batch):
        limit = max_length(a, max(len(t) for t in batch) + 1, max_pos)
        return translator.translate_batch(batch, beam_size=system.beam, max_decoding_length=limit)

    n_lat = min(a.latency_sentences, n_test)
    lat_inputs = [[tokens(i)] for i in range(n_lat)]
    for batch in lat_inputs[: a.warmup] if a.warmup else []:
        translate(batch)
    latencies = []
    for batch in lat_inputs:
        t0 = time.perf_counter()
        translate(batch)
        latencies.append((time.perf_counter() - t0) * 1000.0)

    indices = dataset.ordered_indices()
    indices = indices[indices < n_test]
    batches = dataset.batch_by_size(indices, max_tokens=a.max_tokens, max_sentences=None)
    inputs = [(list(b), [tokens(i) for i in b]) for b in batches]
    hyps, total = {}, 0.0
    for ids, batch in inputs:
        t0 = time.perf_counter()
        out = translate(batch)
        total += time.perf_counter() - t0
        for sid, result in zip(ids, out):
            # the text fairseq-generate prints for these tokens (special symbols dropped)
            ids_ = [tgt_dict.index(t) for t in result.hypotheses[0]]
            hyps[int(sid)] = tgt_dict.string(ids_, extra_symbols_to_ignore={tgt_dict.bos()})
    timings = {
        **timing_fields(latencies, [len(t[0]) for t in lat_inputs], n_test, total, len(inputs)),
        "mean_steps": None,
        "params": sum(p.numel() for p in models[0].parameters()),
        "setup_seconds": round(setup_s, 2),
        "engine": f"ctranslate2 {ctranslate2.__version__}, {system.quantization}",
    }
    return timings, [hyps[i] for i in range(n_test)], None
