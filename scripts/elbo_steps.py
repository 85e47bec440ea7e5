#!/usr/bin/env python
"""Do more inference steps give higher BLEU and ELBO? (the talk's "Delta inference gives higher
BLEU and ELBO"), for delta inference and for score (or energy) inference on a LaNMT.

    python scripts/elbo_steps.py --data-bin examples/multi30k/work/data-bin --gen-subset valid \
        --ref examples/multi30k/work/raw/valid.de --lanmt examples/multi30k/models/lanmt.pt \
        --score-net examples/multi30k/models/score_net.pt --out examples/multi30k/results

For every sentence of the split and every step count k of ``--steps`` (default 0,1,2,4,8):
the output y_k after k delta steps from the prior mean (the LaNMT's ``delta_step``, as
``fairseq-generate --decoding delta --iter-decode-max-iter k --iter-decode-force-max-iter``)
and after k score steps z <- z + alpha S(z;x) (``--decoding score --score-steps k``); then

  * BLEU of the y_k (sacreBLEU, cased, 13a);
  * the ELBO of y_k at its delta posterior mu = E_q(z|x,y_k)[z] and its parts:
    log p(y|mu,x) (token log-probs), log p(T|mu,x) (length), KL(q(z|x,y) || p(z|x)), and
    log p(mu|x) with J = log p(y|mu,x) + log p(T|mu,x) + log p(mu|x), the talk's proxy bound
    (means per sentence, nats; ``scripts/figures/latent.py`` defines them);
  * the objective the chain itself climbs, log p(y_k|z_k,x) + log p(z_k|x) at the latent z_k
    that decoded y_k (what fairseq-generate reports as ``objective``).

Writes OUT/elbo_steps.json (every number and the command), OUT/elbo_steps.md (the table) and
OUT/elbo_steps.png (BLEU, ELBO and two of its parts against the steps). ``--save-hyps`` adds
OUT/elbo_steps_hyps.json, the outputs per method and step in id order.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import (add_common_args, batches, command_line, corpus_bleu, detok,  # noqa: E402
                     load, references, relative, remove_bpe_arg, setup, to_device, token_list,
                     write_json)

OUT_NAME = "elbo_steps"
PARTS = ("elbo", "lp_y", "lp_length", "kl", "log_prior", "proxy", "objective")
PART_HEAD = {
    "elbo": "ELBO", "lp_y": "log p(y\\|μ,x)", "lp_length": "log p(T\\|μ,x)", "kl": "KL(q‖p)",
    "log_prior": "log p(μ\\|x)", "proxy": "J (proxy)", "objective": "log p(y\\|z,x) + log p(z\\|x) at z_k",
}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "valid")
    p.add_argument("--lanmt", help="LaNMT checkpoint (with --score-net/--energy-net: the LaNMT "
                   "they refine, passed as their --lanmt-path; default the one they record)")
    p.add_argument("--score-net", help="score_net checkpoint: score-inference steps too")
    p.add_argument("--energy-net", help="energy_net checkpoint: energy-inference steps too")
    p.add_argument("--steps", default="0,1,2,4,8", help="comma-separated step counts")
    p.add_argument("--score-alpha", type=float, default=1.0,
                   help="step size alpha of score/energy inference (as --score-alpha)")
    p.add_argument("--save-hyps", action="store_true",
                   help="also write OUT/elbo_steps_hyps.json (outputs per method and step)")
    return p


def parse_steps(text):
    try:
        steps = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        steps = []
    if not steps or steps[0] < 0:
        sys.exit(f"--steps: give non-negative step counts, e.g. 0,1,2,4,8; got {text!r}")
    return steps


def load_models(a):
    """[(method, model)] and the LaNMT they share."""
    if not (a.lanmt or a.score_net or a.energy_net):
        sys.exit("give --lanmt, and/or --score-net / --energy-net")
    methods, lanmt = [], None
    for method, path in (("score", a.score_net), ("energy", a.energy_net)):
        if path:
            net, task = load(path, a.data_bin, lanmt_path=a.lanmt)
            methods.append((method, net))
            lanmt = lanmt or net.lanmt
    if lanmt is None:
        lanmt, task = load(a.lanmt, a.data_bin)
        if not hasattr(lanmt, "delta_step") or hasattr(lanmt, "lanmt"):
            sys.exit(f"{a.lanmt} is not a LaNMT checkpoint (--lanmt)")
    return [("delta", lanmt)] + methods, lanmt, task


def measure(a, methods, lanmt, task, steps):
    """{method: {k: {part: [values by id]}}} and {method: {k: {id: text}}}."""
    import torch

    from figures.latent import chain, elbo_parts

    d = task.target_dictionary
    rb = remove_bpe_arg(a.remove_bpe)
    kmax = steps[-1]
    sums = {m: {k: {p: {} for p in PARTS} for k in steps} for m, _ in methods}
    hyps = {m: {k: {} for k in steps} for m, _ in methods}
    if a.cuda:
        for _, model in methods:
            model.cuda()
    for sample in batches(task, a.gen_subset, a.max_tokens, a.max_sentences):
        sample = to_device(sample, a.cuda)
        net = sample["net_input"]
        ids = sample["id"].tolist()
        with torch.no_grad():
            enc = lanmt.encode(net["src_tokens"], net["src_lengths"])
            for method, model in methods:
                for k, z, tokens, lprobs, lengths in chain(model, enc, method, kmax, a.score_alpha):
                    if k not in sums[method]:
                        continue
                    parts = elbo_parts(lanmt, enc, tokens, lengths)
                    parts["objective"] = lprobs.float().sum(-1) + lanmt.log_prior(enc, z)
                    host = {p: v.float().cpu().tolist() for p, v in parts.items()}
                    toks = tokens.cpu()
                    for i, sid in enumerate(ids):
                        for p in PARTS:
                            sums[method][k][p][sid] = host[p][i]
                        hyps[method][k][sid] = detok(d, token_list(toks[i], d), rb)
    return sums, hyps


def summarise(a, sums, hyps, refs, steps):
    rows = []
    for method in sums:
        base = hyps[method][steps[0]]
        for k in steps:
            ids = sorted(hyps[method][k])
            row = {"method": method, "steps": k, "sentences": len(ids),
                   "bleu": corpus_bleu([hyps[method][k][i] for i in ids], [refs[i] for i in ids]),
                   "changed_vs_first": sum(hyps[method][k][i] != base[i] for i in ids) / max(len(ids), 1)}
            for p in PARTS:
                vals = sums[method][k][p]
                row[p] = sum(vals[i] for i in ids) / max(len(ids), 1)
            rows.append(row)
    return rows


def write_markdown(path, res):
    L = ["# BLEU and ELBO against inference steps\n",
         f"{res['gen_subset']} set, {res['sentences']} sentences; {res['models']}. Step 0 is the "
         f"prior mean's output for every method. BLEU: sacreBLEU cased 13a. Means per sentence, "
         f"in nats, of the output's ELBO at its delta posterior mu = E_q(z|x,y)[z] and its parts: "
         f"ELBO = log p(y|μ,x) + log p(T|μ,x) - KL(q‖p); J (proxy) = log p(y|μ,x) + log p(T|μ,x) "
         f"+ log p(μ|x), the talk's proxy lower bound; the last column is the objective the chain "
         f"climbs, at the latent z_k that decoded y_k. Changed: outputs that differ from step "
         f"{res['steps'][0]}'s. Score/energy step size alpha = {res['score_alpha']}. Command:\n",
         "```\n" + res["command"] + "\n```\n",
         "| method | steps | BLEU | " + " | ".join(PART_HEAD[p] for p in PARTS) + " | changed |",
         "|---|---:|---:|" + "---:|" * len(PARTS) + "---:|"]
    for r in res["rows"]:
        L.append(f"| {r['method']} | {r['steps']} | {r['bleu']:.2f} | "
                 + " | ".join(f"{r[p]:.2f}" for p in PARTS) + f" | {100 * r['changed_vs_first']:.1f}% |")
    L += ["", f"![BLEU and ELBO against steps]({OUT_NAME}.png)", ""]
    Path(path).write_text("\n".join(L), encoding="utf-8")


def plot(path, res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("bleu", "BLEU (sacreBLEU 13a)"), ("elbo", "ELBO at the delta posterior (nats/sent.)"),
              ("lp_y", "log p(y|μ,x) (nats/sent.)"), ("kl", "KL(q(z|x,y) ‖ p(z|x)) (nats/sent.)")]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for ax, (key, label) in zip(axes.flat, panels):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in res["rows"])):
            pts = [(r["steps"], r[key]) for r in res["rows"] if r["method"] == method]
            ax.plot(*zip(*pts), marker="osD"[i % 3], color=f"C{i}", label=f"{method} inference")
        ax.set_xlabel("inference steps")
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks(res["steps"])
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{res['gen_subset']} set, {res['sentences']} sentences: BLEU and ELBO against "
                 f"inference steps", fontsize=10)
    fig.text(0.5, 0.005, res["command"], ha="center", fontsize=5, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(path, dpi=110, metadata={"Description": res["command"]})
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    steps = parse_steps(a.steps)
    setup(a.threads)
    t0 = time.time()
    methods, lanmt, task = load_models(a)
    refs = references(task, a.gen_subset, a.ref, remove_bpe_arg(a.remove_bpe), a.max_sentences)
    sums, hyps = measure(a, methods, lanmt, task, steps)
    n = len(hyps["delta"][steps[0]])
    if n != len(refs):
        sys.exit(f"{n} sentences decoded but {len(refs)} references (--ref {a.ref})")
    models = ", ".join(f"{m} `{relative(p)}`" for m, p in (
        ("LaNMT", a.lanmt or "the score net's recorded LaNMT"), ("score net", a.score_net),
        ("energy net", a.energy_net)) if p)
    res = {"command": command_line("elbo_steps.py", argv), "gen_subset": a.gen_subset,
           "sentences": n, "steps": steps, "score_alpha": a.score_alpha, "models": models,
           "bleu": "sacreBLEU cased 13a", "units": "nats per sentence (means)",
           "rows": summarise(a, sums, hyps, refs, steps)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{OUT_NAME}.json", res)
    write_markdown(out / f"{OUT_NAME}.md", res)
    plot(out / f"{OUT_NAME}.png", res)
    if a.save_hyps:
        write_json(out / f"{OUT_NAME}_hyps.json",
                   {m: {str(k): [h[i] for i in sorted(h)] for k, h in by.items()} for m, by in hyps.items()})
    for r in res["rows"]:
        print(f"{r['method']:6s} {r['steps']:2d} steps: BLEU {r['bleu']:6.2f}  ELBO {r['elbo']:9.2f}  "
              f"log p(y|mu,x) {r['lp_y']:9.2f}  KL {r['kl']:7.2f}")
    print(f"wrote {out / OUT_NAME}.json/.md/.png ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
