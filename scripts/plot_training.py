#!/usr/bin/env python
"""Validation curves of every model of a pipeline run, from the fairseq-train logs.

    python scripts/plot_training.py [--work examples/multi30k/work] [--out DIR]

OUT is --out, by default WORK/benchmark beside the benchmark's results; the committed curves
change only when asked for, with --out examples/multi30k/results.

Reads WORK/logs/NAME.log (fairseq's "valid on 'valid' subset" lines, one per validation) for
NAME in teacher, cmlm, refine_nat, lanmt, score_net, energy_net and writes

  * OUT/training_curves.png: (a) validation BLEU against updates for every model that logs it
    (the nar_refine models with --eval-bleu: decoded with their own generator, sacreBLEU cased
    13a on the real valid references); (b) validation loss against updates for every model
    (teacher and fairseq's CMLM log no BLEU: translation_lev never decodes in validation);
    (c) LaNMT's z-usage and KL (nats per token), the signal that the decoder reads z;
  * OUT/training_curves.json: every parsed point;
  * OUT/training_curves.md: per model the last and the best validation BLEU/loss, the update
    it was reached at and the slope over the last quarter of the run (is it still rising?).

A log that spans resumed runs (fairseq appends) is read in order; a validation repeated at
the same update (a resume validates again) keeps the last value.
"""

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["teacher", "cmlm", "refine_nat", "lanmt", "score_net", "energy_net"]
VALID = re.compile(r"\| valid on 'valid' subset \| (.*)$")
FIELD = re.compile(r"([a-z_0-9]+) (-?[0-9.]+(?:e-?[0-9]+)?)")


def parse_log(path):
    """-> {update: {metric: value}} of every validation line, in update order."""
    points = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = VALID.search(line)
        if not m:
            continue
        values = {k: float(v) for k, v in FIELD.findall(m.group(1))}
        if "num_updates" in values:
            points[int(values["num_updates"])] = values
    return dict(sorted(points.items()))


def slope(points, key):
    """Change of ``key`` per 1000 updates over the last quarter of the updates (None if < 2 points)."""
    xs = [u for u, v in points.items() if key in v]
    if len(xs) < 2:
        return None
    start = xs[-1] - (xs[-1] - xs[0]) / 4
    tail = [u for u in xs if u >= start] or xs[-2:]
    if len(tail) < 2:
        tail = xs[-2:]
    n = len(tail)
    ys = [points[u][key] for u in tail]
    mx, my = sum(tail) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in tail)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(tail, ys)) / var if var else None


def summarise(curves):
    rows = []
    for name, points in curves.items():
        if not points:
            continue
        last_u = max(points)
        row = {"model": name, "validations": len(points), "last_update": last_u}
        for key, better in (("bleu", max), ("loss", min), ("z_usage", None)):
            us = [u for u in points if key in points[u]]
            if not us:
                continue
            row[f"last_{key}"] = points[us[-1]][key]
            if better:
                best_u = better(us, key=lambda u: points[u][key])
                row[f"best_{key}"], row[f"best_{key}_update"] = points[best_u][key], best_u
            row[f"{key}_slope_per_1k"] = slope(points, key)
        rows.append(row)
    return rows


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def write_markdown(path, rows, command):
    L = ["# Validation curves (from the fairseq-train logs)\n",
         f"Command: `{command}`\n",
         "BLEU: the model's own decoding of the valid set during training (`--eval-bleu`, sacreBLEU "
         "cased 13a on the real references; teacher and CMLM log no BLEU). Loss: each criterion's "
         "validation loss (not comparable across families). Slope: change per 1,000 updates over "
         "the last quarter of the run (> 0 for BLEU: still improving when it stopped).\n",
         "| model | validations | last update | BLEU last | BLEU best (update) | BLEU slope /1k | "
         "loss last | loss best (update) | loss slope /1k | z-usage last |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bleu_best = (f"{r['best_bleu']:.2f} ({r['best_bleu_update']})" if "best_bleu" in r else "–")
        loss_best = (f"{r['best_loss']:.3f} ({r['best_loss_update']})" if "best_loss" in r else "–")
        L.append(f"| {r['model']} | {r['validations']} | {r['last_update']} | {fmt(r.get('last_bleu'))} | "
                 f"{bleu_best} | {fmt(r.get('bleu_slope_per_1k'))} | {fmt(r.get('last_loss'), 3)} | "
                 f"{loss_best} | {fmt(r.get('loss_slope_per_1k'), 3)} | {fmt(r.get('last_z_usage'), 3)} |")
    L.append("\n![validation curves](training_curves.png)\n")
    Path(path).write_text("\n".join(L), encoding="utf-8")


def plot(path, curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = dict(zip(MODELS, ["black", "tab:gray", "tab:blue", "tab:green", "tab:red", "tab:purple"]))
    def per_model(ax, key):
        for name, points in curves.items():
            us = [u for u in points if key in points[u]]
            if us:
                ax.plot(us, [points[u][key] for u in us], "-o", ms=3, color=colors.get(name), label=name)

    ax = axes[0]
    per_model(ax, "bleu")
    ax.set_title("(a) validation BLEU (own decoding)")
    ax.set_xlabel("updates")
    ax.set_ylabel("BLEU (sacreBLEU, cased, 13a)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    per_model(ax, "loss")
    ax.set_title("(b) validation loss (each criterion's own)")
    ax.set_xlabel("updates")
    ax.set_ylabel("loss (symmetric log scale: the score networks' loss is negative)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax = axes[2]
    lanmt = curves.get("lanmt", {})
    for key, style in (("z_usage", "-o"), ("kl", "--s")):
        us = [u for u in lanmt if key in lanmt[u]]
        if us:
            ax.plot(us, [lanmt[u][key] for u in us], style, ms=3, color="tab:green", label=f"LaNMT {key}")
    ax.set_title("(c) LaNMT: z-usage and KL")
    ax.set_xlabel("updates")
    ax.set_ylabel("per target token (z-usage, nats) / per source position (KL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "examples" / "multi30k" / "work"), help="pipeline work dir")
    p.add_argument("--out", help="output dir (default WORK/benchmark; the committed curves: "
                                 "--out examples/multi30k/results)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated log names (WORK/logs/NAME.log)")
    a = p.parse_args(argv)
    a.out = a.out or str(Path(a.work) / "benchmark")
    logs = Path(a.work) / "logs"
    curves = {}
    for name in [m for m in a.models.split(",") if m]:
        f = logs / f"{name}.log"
        if f.is_file():
            curves[name] = parse_log(f)
    if not any(curves.values()):
        raise SystemExit(f"no validation lines in {logs}/<model>.log for {a.models}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(curves)
    command = "python scripts/plot_training.py --work " + str(Path(a.work).relative_to(REPO)
                                                             if Path(a.work).resolve().is_relative_to(REPO)
                                                             else a.work)
    (out / "training_curves.json").write_text(json.dumps(
        {"curves": {k: {str(u): v for u, v in pts.items()} for k, pts in curves.items()}, "summary": rows},
        indent=1), encoding="utf-8")
    write_markdown(out / "training_curves.md", rows, command)
    plot(out / "training_curves.png", curves)
    for r in rows:
        print(json.dumps(r))
    print(f"wrote {out / 'training_curves.png'}, training_curves.md, training_curves.json")


if __name__ == "__main__":
    main()
