#!/usr/bin/env python
"""Export a nar_refine checkpoint's decoding passes to ONNX, for --onnx-dir.

    python scripts/export_onnx.py --path CKPT --data-bin DATA --out DIR [--lanmt-path LANMT]

Loads the checkpoint as fairseq-generate does (task nar_translation on DATA's dictionaries),
traces each pass of the model (nar_refine/export/onnx_passes.py: refine_nat's encoder, length
predictor, decoder 1 and refinement decoder; LaNMT's encoder, prior, posterior, length
predictor and decoder; the score network with its LaNMT), checks each in ONNX Runtime against
PyTorch on inputs of other sizes, and writes DIR/*.onnx and DIR/manifest.json. Then decode with

    fairseq-generate DATA --user-dir nar_refine --task nar_translation --path CKPT --onnx-dir DIR ...
"""

import argparse
import logging
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True, help="checkpoint of a refine_nat, lanmt, score_net or energy_net model")
    p.add_argument("--data-bin", required=True, help="the data-bin it was trained on (its dictionaries)")
    p.add_argument("--out", required=True, help="folder for the .onnx files and manifest.json")
    p.add_argument("--lanmt-path", help="score/energy networks: their LaNMT checkpoint, if not where "
                                        "the network recorded it")
    p.add_argument("--source-lang", help="source language (default: from the data-bin's file names)")
    p.add_argument("--target-lang", help="target language")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--precision", choices=["float32", "int8"], default="float32",
                   help="float32 (default): the PyTorch path's computation, the same tokens; int8: "
                        "the matrix weights quantized to int8 after the float32 check (ONNX "
                        "Runtime dynamic quantization; faster on a CPU, tokens may differ)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the check of every pass in ONNX Runtime against PyTorch")
    a = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stdout)
    import nar_refine  # noqa: F401  (registers the models; patches torch.load for fairseq checkpoints)
    from fairseq import checkpoint_utils

    from nar_refine.export.onnx_passes import export_model

    overrides = {"data": a.data_bin, "task": "nar_translation"}
    for key in ("lanmt_path", "source_lang", "target_lang"):
        if getattr(a, key):
            overrides[key] = getattr(a, key)
    t0 = time.perf_counter()
    models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([a.path], arg_overrides=overrides)
    manifest = export_model(models[0], a.out, opset=a.opset, verify=not a.no_verify,
                            precision=a.precision)
    diffs = manifest.get("verified_max_abs_diff", {})
    print(f"exported {manifest['family']} to {a.out} ({a.precision}) in "
          f"{time.perf_counter() - t0:.1f} s; largest |ONNX - PyTorch| per pass (float32): "
          + ", ".join(f"{k} {v:.2g}" for k, v in sorted(diffs.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
