#!/usr/bin/env python
"""Release trained checkpoints as a folder that translates on a fresh clone: weights only.

    python scripts/release_models.py --work examples/multi30k/work --out examples/multi30k/models \
        --model teacher --model cmlm --model refine_nat --model lanmt --model score_net \
        --model energy_net [--float NAME ...]

For each ``--model NAME[=CHECKPOINT]`` (default ``WORK/checkpoints/NAME/checkpoint_best.pt``) it
writes ``OUT/NAME.pt``: the model's weights (float16 unless ``--float NAME``), its configuration
with machine paths made relative, and the update count; no optimizer state, no meters. fairseq
loads it as any checkpoint (the weights are cast back to float32); training resumes from it with
``--restore-file OUT/NAME.pt --reset-optimizer --reset-lr-scheduler --reset-meters``.

The folder is fairseq-interactive's data directory too: ``dict.SRC.txt``/``dict.TGT.txt`` and
the sentencepiece model (``spm.model``) are copied from WORK. An inference network (score_net,
energy_net) is pointed at the released LaNMT (``--lanmt-path`` still overrides) and its LaNMT
fingerprint is that of the released weights, so released networks load together.

``manifest.json`` and ``README.md`` list per model: file, sha256, parameters, precision,
cumulative updates, training time (fairseq's clock, all resumed runs) and threads, the best
validation score, and the training commands (``WORK/checkpoints/NAME/history.jsonl``, written
by the Multi30k recipes). A model is only replaced when asked, so the repository grows by one
file per improvement.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INFERENCE_NETWORKS = ("score_net", "energy_net")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="the Multi30k work folder (checkpoints/, data-bin/, spm/)")
    p.add_argument("--out", required=True, help="release folder (e.g. examples/multi30k/models)")
    p.add_argument("--model", action="append", required=True, metavar="NAME[=CHECKPOINT]",
                   help="a model to release (repeatable); LaNMT before its inference networks")
    p.add_argument("--data-bin", help="where the dictionaries are (default WORK/data-bin)")
    p.add_argument("--float", action="append", default=[], metavar="NAME",
                   help="keep this model's weights in float32 (default float16)")
    p.add_argument("--note", action="append", default=[], metavar="NAME=TEXT",
                   help="a line for the model's manifest entry (e.g. its test BLEU)")
    return p


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def relative(value):
    """An absolute path inside the repository -> relative to it; other absolute paths -> name."""
    if isinstance(value, str) and os.path.isabs(value):
        p = Path(value)
        try:
            return str(p.resolve().relative_to(REPO))
        except ValueError:
            return p.name
    return value


def strip_paths(cfg):
    """Machine paths in a checkpoint's configuration (nested dicts and Namespaces, as fairseq
    saves it) made relative."""
    if isinstance(cfg, Namespace):
        for k, v in list(vars(cfg).items()):
            setattr(cfg, k, strip_paths(v) if isinstance(v, (dict, Namespace)) else relative(v))
    elif isinstance(cfg, dict):
        for k, v in list(cfg.items()):
            cfg[k] = strip_paths(v) if isinstance(v, (dict, Namespace)) else relative(v)
    return cfg


def slim(state, half, langs=None):
    """The checkpoint with weights only (float16 when ``half``) and no optimizer state; the
    language pair written into its task configuration (``langs``), so that the release folder,
    which holds no binarised data, is a complete data directory."""
    import torch

    model, shared = {}, {}
    for k, v in state["model"].items():
        if half and torch.is_tensor(v) and v.is_floating_point():
            # tied weights (shared embeddings) stay one tensor, so the file holds them once
            key = (v.data_ptr(), v.shape, v.stride())
            if key not in shared:
                shared[key] = v.half()
            v = shared[key]
        model[k] = v
    last = state["optimizer_history"][-1]
    extra = state.get("extra_state") or {}
    out = {
        "args": None,
        "cfg": strip_paths(state["cfg"]),
        "model": model,
        "criterion": None,
        "optimizer_history": [{"criterion_name": last["criterion_name"],
                               "optimizer_name": last["optimizer_name"],
                               "lr_scheduler_state": {}, "num_updates": last["num_updates"]}],
        "task_state": state.get("task_state", {}),
        "extra_state": {k: extra[k] for k in ("train_iterator", "previous_training_time", "val_loss", "best")
                        if k in extra},
        "last_optimizer_state": None,
    }
    task = out["cfg"].get("task") if isinstance(out["cfg"], dict) else None
    if langs and isinstance(task, dict):
        task["source_lang"] = task.get("source_lang") or langs[0]
        task["target_lang"] = task.get("target_lang") or langs[1]
    return out


def model_config(state):
    cfg = state["cfg"]
    return cfg["model"] if "model" in cfg else state.get("args")


def released_lanmt_fingerprint(path, data_dir):
    """The parameter fingerprint of the LaNMT as fairseq will load it from the release."""
    from fairseq import checkpoint_utils

    import nar_refine  # noqa: F401
    from nar_refine.models.inference_network import parameter_fingerprint

    models, _ = checkpoint_utils.load_model_ensemble([str(path)], arg_overrides={"data": str(data_dir)})
    return parameter_fingerprint(models[0])


def run_record(work, name, ckpt, filename):
    """A recipe's record (``filename``) beside the checkpoint, else in WORK/checkpoints/NAME;
    None when neither exists."""
    for folder in ([Path(ckpt).parent] if ckpt is not None else []) + [Path(work) / "checkpoints" / name]:
        if (folder / filename).exists():
            return folder / filename
    return None


def history(work, name, ckpt=None):
    """The training runs recorded by the recipes (history.jsonl)."""
    path = run_record(work, name, ckpt, "history.jsonl")
    if path is None:
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_command(work, name, ckpt=None):
    """The recipe's record of the last training command, when there is no history."""
    path = run_record(work, name, ckpt, "command.txt")
    return [relative_command(path.read_text().strip())] if path is not None else []


def relative_command(cmd):
    return " ".join(relative(w) if w.startswith("/") else w for w in cmd.split())


def main(argv=None):
    a = get_parser().parse_args(argv)
    import torch

    work, out = Path(a.work), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(a.data_bin) if a.data_bin else work / "data-bin"
    from fairseq.data.data_utils import infer_language_pair

    langs = infer_language_pair(str(bin_dir))
    for f in sorted(bin_dir.glob("dict.*.txt")):
        shutil.copy(f, out / f.name)
    spm = work / "spm" / "spm.model"
    if spm.exists():
        shutil.copy(spm, out / "spm.model")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    notes = dict(n.split("=", 1) for n in a.note)
    for spec in a.model:
        name, _, ckpt = spec.partition("=")
        ckpt = Path(ckpt) if ckpt else work / "checkpoints" / name / "checkpoint_best.pt"
        if not ckpt.exists():
            sys.exit(f"no checkpoint {ckpt} for {name}")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        half = name not in a.float
        released = slim(state, half, langs)
        mcfg = model_config(released)
        if name in INFERENCE_NETWORKS:
            lanmt = out / "lanmt.pt"
            if not lanmt.exists():
                sys.exit(f"{name}: release the LaNMT first (--model lanmt before --model {name})")
            mcfg.lanmt_path = str(lanmt.resolve().relative_to(REPO)) if lanmt.resolve().is_relative_to(REPO) else str(lanmt)
            released["model"]["lanmt_fingerprint"] = released_lanmt_fingerprint(lanmt, out)
        target = out / f"{name}.pt"
        torch.save(released, target)
        last = released["optimizer_history"][-1]
        extra = released["extra_state"]
        unique = {(v.data_ptr(), v.shape): v for k, v in released["model"].items()
                  if torch.is_tensor(v) and v.is_floating_point() and k != "lanmt_fingerprint"}
        params = sum(v.numel() for v in unique.values())
        ccfg = released["cfg"].get("checkpoint") if hasattr(released["cfg"], "get") else None
        runs = history(work, name, ckpt)
        threads = sorted({r["threads"] for r in runs if "threads" in r})
        entry = {
            "file": target.name,
            "sha256": sha256(target),
            "bytes": target.stat().st_size,
            "parameters": params,
            "precision": "float16" if half else "float32",
            "arch": getattr(mcfg, "arch", None),
            "updates": last["num_updates"],
            "train_hours": round(extra.get("previous_training_time", 0.0) / 3600, 2),
            "threads": threads,
            "best_valid": {"metric": ccfg.get("best_checkpoint_metric") if ccfg else None,
                           "value": extra.get("best")},
            "source": relative(str(ckpt.resolve())),
            "commands": [relative_command(r["command"]) for r in runs if r.get("command")] or last_command(work, name, ckpt),
            "released": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        if name in notes:
            entry["note"] = notes[name]
        manifest["models"][name] = entry
        print(f"{name}: {target} ({entry['bytes'] / 1e6:.1f} MB, {params} parameters, "
              f"{entry['precision']}, {entry['updates']} updates)")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    write_readme(out, manifest)


def write_readme(out, manifest):
    L = ["# Released Multi30k En->De models\n",
         "Written by `scripts/release_models.py` (weights only; fairseq loads them as any "
         "checkpoint). This folder is also fairseq-interactive's data directory (dictionaries, "
         "`spm.model`). `manifest.json` has every field, including the training commands.\n",
         "| model | file | MB | parameters | precision | updates | training hours | threads | best valid | sha256 |",
         "|---|---|---:|---:|---|---:|---:|---|---|---|"]
    for name, e in manifest["models"].items():
        best = e["best_valid"]
        bv = f"{best['metric']} {best['value']:.2f}" if best.get("value") is not None else ""
        L.append(f"| {name} | `{e['file']}` | {e['bytes'] / 1e6:.1f} | {e['parameters']:,} | "
                 f"{e['precision']} | {e['updates']:,} | {e['train_hours']} | "
                 f"{','.join(map(str, e['threads']))} | {bv} | `{e['sha256'][:12]}` |")
    L.append("")
    for name, e in manifest["models"].items():
        if e.get("note"):
            L.append(f"- {name}: {e['note']}")
    (out / "README.md").write_text("\n".join(L) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
