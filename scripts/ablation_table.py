#!/usr/bin/env python
"""One table from several refine_diagnostic.py results (an ablation: one row per variant).

    python scripts/ablation_table.py --diag full=work/ablation/full.json \
        --diag old=work/ablation/old.json ... --out examples/multi30k/results/refine_ablation.md

Columns: BLEU after 0 / 1 / 4 / last step and the gains of the last step over steps 0 and 1;
the repeat rate (output words equal to the word before them) at step 0 and at the last step;
tokens changed by the first step and on average by the later ones; the share of step 0's
token repeats that survive to the last step; and, where measured, the share of injected
errors (repeat / replace / swap, gold length, one step) fixed, of wrong input tokens copied
and of the tokens of a clean reference that the step changes, and for latent models the z-usage and the KL.
"""

import argparse
import json
from pathlib import Path


def pct(x):
    return "" if x is None else f"{100 * x:.1f}%"


def row(name, res, note, injected, latent):
    steps = res["steps"]
    by = {r["step"]: r for r in steps}
    last = steps[-1]["step"]
    bleu = lambda k: by[k].get("bleu") if k in by else None
    later = [r["changed"] for r in steps[2:]]
    cells = [name, note]
    cells += [f"{bleu(k):.2f}" if bleu(k) is not None else "" for k in (0, 1, 4, last)]
    cells += [f"{bleu(last) - bleu(0):+.2f}", f"{bleu(last) - bleu(1):+.2f}"]
    cells += [pct(by[0]["repeat_rate"]), pct(by[last]["repeat_rate"]), pct(by[1].get("changed")),
              pct(sum(later) / len(later) if later else None), pct(res["repeats_surviving"])]
    if injected:
        inj = res.get("injected")
        if inj:
            cells += [pct(inj[op]["fixed_rate"]) for op in ("repeat", "replace", "swap")]
            errors = sum(inj[op]["errors"] for op in ("repeat", "replace", "swap"))
            copied = sum(inj[op]["copied_rate"] * inj[op]["errors"] for op in ("repeat", "replace", "swap"))
            cells.append(pct(copied / max(errors, 1)))
            cells.append(pct(inj.get("clean_input_changed_rate")))
        else:
            cells += [""] * 5
    if latent:
        z = res.get("latent") or {}
        cells += [f"{z['z_usage']:.3f}" if z else "", f"{z['kl_per_source_position']:.2f}" if z else ""]
    return "| " + " | ".join(cells) + " |", last


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diag", action="append", required=True, metavar="NAME=JSON[=NOTE]",
                   help="a variant's refine_diagnostic.py JSON (repeatable; table order)")
    p.add_argument("--title", default="Ablation")
    p.add_argument("--intro", default="", help="text under the title (what was run)")
    p.add_argument("--out", required=True, help="markdown file to write")
    a = p.parse_args(argv)
    loaded = []
    for spec in a.diag:
        name, path, *note = spec.split("=", 2)
        loaded.append((name, json.loads(Path(path).read_text(encoding="utf-8")), note[0] if note else ""))
    injected = any("injected" in res for _, res, _ in loaded)
    latent = any("latent" in res for _, res, _ in loaded)
    rows, last = [], None
    for name, res, note in loaded:
        line, last = row(name, res, note, injected, latent)
        rows.append(line)
    cols = ["variant", "what differs", "BLEU step 0", "step 1", "step 4", f"step {last}", "gain vs 0",
            "gain vs 1", "repeats step 0", f"repeats step {last}", "changed by step 1",
            "changed later (mean)", "step-0 repeats surviving"]
    if injected:
        cols += ["injected repeat fixed", "replace fixed", "swap fixed", "wrong input copied",
                 "clean reference changed"]
    if latent:
        cols += ["z-usage (nats/token)", "KL (nats/position)"]
    head = ["| " + " | ".join(cols) + " |", "|---|---|" + "---:|" * (len(cols) - 2)]
    text = [f"# {a.title}\n", a.intro + "\n" if a.intro else "", *head, *rows, ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
