#!/usr/bin/env python
"""The latent space of one sentence, position by position (the talk's "Gradient and latent space
visualization"): where the posterior mean, the prior mean, delta inference and score inference
put each latent, what each decodes to, and the score network's field S(z;x) around them.

    python scripts/latent_space.py --data-bin examples/multi30k/work/data-bin --gen-subset test \
        --lanmt examples/multi30k/models/lanmt.pt --score-net examples/multi30k/models/score_net.pt \
        --out examples/multi30k/results

Per sentence, four latents z (S x d: LaNMT's latents live on the S source positions, </s>
included, d = latent dimension): the posterior mean E_q(z|x,y) of the reference y (or of
``--targets``) (square), the prior mean (star), the result of ``--delta-steps`` delta steps
(cross) and of ``--score-steps`` steps of the score or energy network (dot). One panel per
source position i; each marker is labelled with the target tokens that position i's latent
feeds most: the target positions t whose largest length-transform weight w_{t,i} is i's,
under that latent's own decode at its predicted length (what the method outputs). The 2-D
plane is a PCA over all 4 x S latents of the sentence (one projection for every panel; each
panel zoomed to its own points). Arrows: S(z;x) at position i projected onto the plane, with
position i's latent moved within the plane and every other position at its prior mean (the
point where score inference starts); for an energy network, contours of E(z;x) on the same
slice as well (arrows = -dE/dz).

Sentences: ``--num`` (default 3) of the split, chosen by a stated rule unless ``--ids`` names
them: among sentences of at most ``--max-source-len`` source tokens, those where the outputs
of the prior mean, delta inference and score inference differ most (the sum of their three
pairwise token edit distances), ties by id. Writes OUT/latent_space_N.png (N = 1, 2, ...),
OUT/latent_space.md (captions, the rule, the command) and OUT/latent_space.json (coordinates,
labels, the PCA).
"""

import argparse
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import (add_common_args, batches, command_line, detok, load, references,  # noqa: E402
                     relative, remove_bpe_arg, setup, sources, to_device, token_list, write_json)

OUT_NAME = "latent_space"
# method -> (legend, marker, colour), in drawing order
STYLE = {"posterior": ("posterior mean", "s", "C2"), "prior": ("prior mean", "*", "C1"),
         "delta": ("delta inference", "X", "C3"), "score": ("score inference", "o", "C0")}
LABEL_OFFSET = {"posterior": (-6, -11), "prior": (6, 7), "delta": (6, -11), "score": (-6, 7)}


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "test")
    p.add_argument("--lanmt", help="LaNMT checkpoint, passed as the network's --lanmt-path "
                   "(default: the LaNMT the network records)")
    p.add_argument("--score-net", help="score_net checkpoint (its field is drawn)")
    p.add_argument("--energy-net", help="energy_net checkpoint instead (contours of E)")
    p.add_argument("--delta-steps", type=int, default=4, help="delta-inference steps (cross)")
    p.add_argument("--score-steps", type=int, default=1, help="score-inference steps (dot)")
    p.add_argument("--score-alpha", type=float, default=1.0, help="score step size alpha")
    p.add_argument("--num", type=int, default=3, help="sentences to draw (by the rule)")
    p.add_argument("--ids", help="comma-separated sentence ids to draw instead of the rule")
    p.add_argument("--max-source-len", type=int, default=16,
                   help="the rule considers sentences of at most this many source tokens "
                   "(subwords and </s>; one panel each)")
    p.add_argument("--targets", help="file of subword-tokenised targets, one per sentence of the "
                   "split, whose posterior mean is the square (default: the references)")
    p.add_argument("--grid", type=int, default=11, help="arrows per panel side")
    return p


def decode_all(model, lanmt, enc, y_post, a):
    """{method: (z, tokens, lengths)} of the four latents (batched over sentences)."""
    from figures.latent import chain

    out = {"posterior": lanmt.posterior(enc, y_post)[0]}
    out["prior"] = lanmt.prior(enc)[0]
    for method, net, steps in (("delta", lanmt, a.delta_steps), ("score", model, a.score_steps)):
        for _, z, *_ in chain(net, enc, method, steps, a.score_alpha):
            out[method] = z  # the last one stays
    return {m: (z, *lanmt.decode(enc, z)[0::2]) for m, z in out.items()}


def target_batch(sample, targets, d, pad):
    """The posterior's targets y (B x T, no </s>): the references, or lines of --targets."""
    import torch

    from nar_refine.models.refine_nat import target_without_eos

    if targets is None:
        return target_without_eos(sample["target"], pad, d.eos())[0]
    rows = [d.encode_line(targets[i], add_if_not_exist=False, append_eos=False).long()
            for i in sample["id"].tolist()]
    y = torch.full((len(rows), max(1, max(len(r) for r in rows))), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        y[i, : len(r)] = r
    return y.to(sample["target"].device)


def disagreement(toks):
    """The rule's value: pairwise token edit distances of prior, delta and score outputs."""
    from figures.text import word_edits

    p, dl, s = toks["prior"], toks["delta"], toks["score"]
    return word_edits(p, dl) + word_edits(p, s) + word_edits(dl, s)


def choose(a, model, lanmt, task, targets):
    """Sentence ids to draw, and the rule's value of every sentence considered."""
    import torch

    d = task.target_dictionary
    values = {}
    for sample in batches(task, a.gen_subset, a.max_tokens, a.max_sentences):
        sample = to_device(sample, a.cuda)
        net = sample["net_input"]
        with torch.no_grad():
            enc = lanmt.encode(net["src_tokens"], net["src_lengths"])
            dec = decode_all(model, lanmt, enc, target_batch(sample, targets, d, lanmt.pad), a)
        toks = {m: v[1].cpu() for m, v in dec.items()}
        for i, sid in enumerate(sample["id"].tolist()):
            if int(net["src_lengths"][i]) <= a.max_source_len:
                values[sid] = disagreement({m: token_list(t[i], d) for m, t in toks.items()})
    if a.ids:
        return [int(i) for i in a.ids.split(",") if i.strip()], values
    ranked = sorted(values, key=lambda i: (-values[i], i))
    return ranked[: a.num], values


def one_sentence(a, model, lanmt, task, sid, targets, rb):
    """Everything one figure needs, as plain lists (also what the json holds)."""
    import torch

    from figures.latent import pca, project
    from nar_refine.models.lanmt import length_transform

    ds = task.dataset(a.gen_subset)
    sample = to_device(ds.collater([ds[sid]]), a.cuda)
    net = sample["net_input"]
    d, sd = task.target_dictionary, task.source_dictionary
    with torch.no_grad():
        enc = lanmt.encode(net["src_tokens"], net["src_lengths"])
        dec = decode_all(model, lanmt, enc, target_batch(sample, targets, d, lanmt.pad), a)
        real = ~enc["padding_mask"][0]
        lat = {m: v[0][0][real].float().cpu() for m, v in dec.items()}  # S x d each
        mean, comps, ratio = pca(torch.cat(list(lat.values())))
        src = [sd[t] for t in net["src_tokens"][0][real].tolist()]
        feeds = {}
        for m, (z, tokens, lengths) in dec.items():
            _, w = length_transform(z.new_zeros(z.shape[:2] + (1,)), enc["padding_mask"], lengths,
                                    lanmt.transform_width)
            owner = w[0, : int(lengths[0])][:, real].argmax(-1).tolist()  # source position of each t
            toks = [d[t] for t in tokens[0, : int(lengths[0])].tolist()]
            feeds[m] = [" ".join(tok for tok, o in zip(toks, owner) if o == i) for i in range(len(src))]
        field = slice_field(model, enc, dec["prior"][0][0], real, mean, comps, lat, a.grid, a.score_alpha)
    texts = {m: detok(d, token_list(v[1][0].cpu(), d), rb) for m, v in dec.items()}
    return {"id": sid, "source_tokens": src, "outputs": texts, "labels": feeds,
            "points": {m: project(z, mean, comps).tolist() for m, z in lat.items()},
            "pca": {"mean": mean.tolist(), "components": comps.tolist(),
                    "explained": [round(float(r), 4) for r in ratio]},
            "field": field}


def slice_field(model, enc, z0, real, mean, comps, lat, grid, alpha):
    """Per source position: its panel's view (x0, x1, y0, y1), grid coordinates, S(z;x) there
    projected onto the plane (and E(z;x) for an energy network)."""
    import torch

    from figures.latent import project

    positions = real.nonzero().squeeze(1).tolist()
    pts = torch.stack([project(z, mean, comps) for z in lat.values()])  # 4 x S x 2
    comps_d = comps.to(z0)
    step0 = alpha * model.score(enc, z0[None])[0].float()  # one score step from the prior mean
    panels = []
    for j, i in enumerate(positions):
        lo, hi = pts[:, j].min(0).values, pts[:, j].max(0).values
        spread = float((pts.amax((0, 1)) - pts.amin((0, 1))).max())  # of the whole sentence
        half = max(float((hi - lo).max()) / 2 * 1.35, 0.05 * spread, 1e-3)
        c = (lo + hi) / 2
        view = [float(c[0]) - half, float(c[0]) + half, float(c[1]) - half, float(c[1]) + half]
        gx, gy = torch.meshgrid(torch.linspace(view[0], view[1], grid),
                                torch.linspace(view[2], view[3], grid), indexing="xy")
        g = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(z0)  # G^2 x 2
        base = z0[i]
        here = project(base.float().cpu()[None], mean, comps)[0].to(z0)
        z = z0.unsqueeze(0).repeat(g.size(0), 1, 1)
        z[:, i] = base + (g - here) @ comps_d  # moved within the plane, off-plane part kept
        e = enc.index(torch.zeros(g.size(0), dtype=torch.long, device=z.device))
        s = model.score(e, z)[:, i].float()
        panel = {"view": view, "grid": g.cpu().tolist(), "arrows": (s @ comps_d.T).cpu().tolist(),
                 "step_at_prior": (step0[i] @ comps_d.T).cpu().tolist()}
        if getattr(model, "energy", False):
            panel["energy"] = model.energy_value(e, z).float().cpu().tolist()
        panels.append(panel)
    return panels


def draw(path, fig_data, a, caption, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(fig_data["source_tokens"])
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    width = 3.4 * cols
    title = "\n".join(textwrap.fill(line, int(width * 14), subsequent_indent="    ")
                      for line in title.split("\n"))  # about 14 characters per inch at 8 pt
    head_in, foot_in = 0.17 * (title.count("\n") + 1) + 0.45, 0.75  # inches for the text
    height = 3.0 * rows + head_in + foot_in
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - head_in / height, bottom=foot_in / height,
                        hspace=0.4, wspace=0.3)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        panel = fig_data["field"][i]
        g, arr = np.array(panel["grid"]), np.array(panel["arrows"])
        if "energy" in panel:
            side = a.grid
            ax.contour(g[:, 0].reshape(side, side), g[:, 1].reshape(side, side),
                       np.array(panel["energy"]).reshape(side, side), levels=8, cmap="Greys", linewidths=0.6)
        ax.quiver(g[:, 0], g[:, 1], arr[:, 0], arr[:, 1], color="0.6", width=0.004, angles="xy")
        (x, y), (dx, dy) = fig_data["points"]["prior"][i], panel["step_at_prior"]
        ax.annotate("", (x + dx, y + dy), (x, y), zorder=2,  # one step from the prior mean, true length
                    arrowprops=dict(arrowstyle="->", color="C0", lw=1.2, alpha=0.8))
        labels = {m: fig_data["labels"][m][i] for m in STYLE}
        for m, (legend, marker, colour) in STYLE.items():
            legend = f"{a.net_kind} inference" if m == "score" else legend
            x, y = fig_data["points"][m][i]
            ax.scatter([x], [y], marker=marker, s=90 if marker == "*" else 45, color=colour,
                       edgecolor="k", linewidth=0.5, zorder=3, label=legend)
            ax.annotate(short_label(labels[m]), (x, y), xytext=LABEL_OFFSET[m], textcoords="offset points",
                        fontsize=7, color=colour, ha="right" if LABEL_OFFSET[m][0] < 0 else "left")
        differ = len(set(labels.values())) > 1
        ax.set_title(f"source position {i}: {fig_data['source_tokens'][i]}", fontsize=8,
                     color="C3" if differ else "k")
        v = panel["view"]
        ax.set_xlim(v[0], v[1])
        ax.set_ylim(v[2], v[3])
        ax.tick_params(labelsize=6)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", fontsize=8, ncol=4)
    fig.text(0.01, 1 - 0.1 / height, title, fontsize=8, ha="left", va="top")
    fig.text(0.01, 0.05 / height, caption, fontsize=6.5, ha="left", va="bottom", wrap=True)
    fig.savefig(path, dpi=110, metadata={"Description": a.command})
    plt.close(fig)


def short_label(tokens, most=3):
    """A marker's label: its tokens, at most ``most`` of them (then an ellipsis); a dash for none."""
    words = tokens.split()
    return " ".join(words[:most]) + (" …" if len(words) > most else "") if words else "–"


def caption_text(a, fd, net_kind):
    ex = fd["pca"]["explained"]
    field = ("Contours of the energy E(z;x) and grey arrows -dE/dz" if net_kind == "energy"
             else "Grey arrows: the score network's S(z;x)")
    return (f"LaNMT's latents live on the source positions, so there is one panel per source position "
            f"(</s> included); each marker is labelled with the target tokens that position's latent "
            f"feeds most (largest length-transform weight; at most three shown), under that latent's "
            f"own decode at its "
            f"predicted length; a panel's title is red where the labels differ. 2-D: PCA over all "
            f"{4 * len(fd['source_tokens'])} latents of this sentence (explains {100 * ex[0]:.0f}% + "
            f"{100 * ex[1]:.0f}% of their variance), each panel zoomed to its points. {field} "
            f"projected onto the plane (lengths scaled to the grid), with this position's latent moved "
            f"within the plane and every other position at its prior mean; the blue arrow from the "
            f"prior mean is one step alpha S(z;x) there at its true length. Delta inference: "
            f"{a.delta_steps} steps; "
            f"{net_kind} inference: {a.score_steps} step(s) of size {a.score_alpha}.")


def main(argv=None):
    from figures.text import md_escape

    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    a.command = command_line("latent_space.py", argv)
    if bool(a.score_net) == bool(a.energy_net):
        sys.exit("give one of --score-net or --energy-net (the field to draw)")
    setup(a.threads)
    t0 = time.time()
    net_kind = a.net_kind = "score" if a.score_net else "energy"
    model, task = load(a.score_net or a.energy_net, a.data_bin, lanmt_path=a.lanmt)
    if not hasattr(model, "lanmt"):
        sys.exit("--score-net/--energy-net must name a score_net or energy_net checkpoint")
    if a.cuda:
        model.cuda()
    lanmt = model.lanmt
    rb = remove_bpe_arg(a.remove_bpe)
    task.load_dataset(a.gen_subset)
    targets = Path(a.targets).read_text(encoding="utf-8").splitlines() if a.targets else None
    ids, values = choose(a, model, lanmt, task, targets)
    if not ids:
        sys.exit(f"no sentence of at most {a.max_source_len} source tokens in {a.gen_subset}")
    refs = references(task, a.gen_subset, a.ref, rb)
    srcs = sources(task, a.gen_subset, rb)
    rule = (f"the sentences given by --ids" if a.ids else
            f"the {a.num} sentences of the {a.gen_subset} set (of the {len(values)} with at most "
            f"{a.max_source_len} source tokens) whose prior-mean, delta and {net_kind} outputs differ "
            f"most: largest sum of the three pairwise token edit distances, ties by id")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    L = ["# The latent space, position by position\n", f"Sentences: {rule}. Command:\n",
         "```\n" + a.command + "\n```\n"]
    for n, sid in enumerate(ids, 1):
        fd = one_sentence(a, model, lanmt, task, sid, targets, rb)
        fd.update(source=srcs[sid], reference=refs[sid], rule_value=values.get(sid))
        names = {"posterior": "posterior mean" + (" (of --targets)" if targets else " (of the reference)"),
                 "prior": "prior mean", "delta": f"delta ({a.delta_steps} steps)",
                 "score": f"{net_kind} ({a.score_steps} step{'s' * (a.score_steps != 1)})"}
        title = "\n".join([f"{a.gen_subset} sentence {sid}", f"source: {fd['source']}",
                           f"reference: {fd['reference']}"]
                          + [f"{names[m]}: {fd['outputs'][m]}" for m in STYLE])
        caption = caption_text(a, fd, net_kind)
        png = out / f"{OUT_NAME}_{n}.png"
        draw(png, fd, a, caption, title)
        fd.update(figure=png.name, caption=caption)
        figures.append(fd)
        L += [f"## {n}. {a.gen_subset} sentence {sid} (rule value {fd['rule_value']})\n",
              "| | |", "|---|---|", f"| source | {md_escape(fd['source'])} |",
              f"| reference | {md_escape(fd['reference'])} |"]
        L += [f"| {names[m]} | {md_escape(fd['outputs'][m])} |" for m in STYLE]
        L += ["", f"![latent space of sentence {sid}]({png.name})", "", caption.replace("</s>", "`</s>`"), ""]
    models = {"lanmt": relative(a.lanmt) if a.lanmt else "recorded by the network",
              net_kind + "_net": relative(a.score_net or a.energy_net)}
    write_json(out / f"{OUT_NAME}.json", {"command": a.command, "rule": rule, "models": models,
                                          "gen_subset": a.gen_subset, "figures": figures})
    (out / f"{OUT_NAME}.md").write_text("\n".join(L), encoding="utf-8")
    print(f"wrote {', '.join(f['figure'] for f in figures)}, {OUT_NAME}.md/.json in {out} "
          f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
