"""The benchmark's three plots: batch-1 latency vs source length, BLEU vs refinement steps, BLEU
vs batch-1 latency with the CMLM frontier."""

from pathlib import Path

FAMILY_STYLE = {"AR": ("black", "s"), "CTranslate2": ("tab:brown", "v"), "CMLM": ("tab:gray", "D"),
                "refine_nat": ("tab:blue", "o"),
                "LaNMT": ("tab:green", "^"), "score": ("tab:red", "*"), "energy": ("tab:purple", "P")}


def make_plots(out, rows, length_bin):
    """OUT/latency_vs_length.png, bleu_vs_steps.png, bleu_vs_latency.png from the rows that ran;
    -> [(title, file name)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    import numpy as np

    ok = [r for r in rows if r["status"] == "ok"]
    plots = []
    if not ok:
        return plots

    # (1) latency vs source length at batch 1
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    colors = plt.get_cmap("tab10").colors
    for n, r in enumerate([r for r in ok if r["primary"]]):
        lens, lat = np.array(r["src_lengths"]), np.array(r["latencies_ms"])
        bins = (lens // length_bin) * length_bin
        xs = sorted(set(bins.tolist()))
        med = [float(np.median(lat[bins == b])) for b in xs]
        marker = FAMILY_STYLE.get(r["family"], ("tab:orange", "x"))[1]
        ls = "-" if r["family"] in ("AR", "CTranslate2") else "--"
        ax.plot([b + length_bin / 2 for b in xs], med, ls, marker=marker, color=colors[n % len(colors)],
                label=r["name"], ms=5)
    ax.set_xlabel(f"source length (subword tokens; median per bin of {length_bin})")
    ax.set_ylabel("latency at batch 1 (ms per sentence, log scale)")
    ax.set_yscale("log")
    ax.set_title("Latency vs source length: autoregressive (solid) vs non-autoregressive (dashed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(Path(out) / "latency_vs_length.png", dpi=120)
    plt.close(fig)
    plots.append(("latency vs source length", "latency_vs_length.png"))

    # (2) BLEU vs refinement steps (decoder passes)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = {}
    for r in ok:
        if r["series"]:
            series.setdefault(r["series"], []).append(r)
    ticks = set()
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r["passes"])
        color, marker = FAMILY_STYLE.get(rs[0]["family"], ("tab:orange", "x"))
        ax.plot([r["passes"] for r in rs], [r["bleu"] for r in rs], "-", marker=marker, color=color, label=name)
        ticks.update(r["passes"] for r in rs)
    for r in ok:
        if r["family"] == "AR":
            ax.axhline(r["bleu"], ls=":" if r["key"] == "ar.beam5" else "-.", lw=1,
                       color="black" if r["key"] == "ar.beam5" else "gray", label=r["name"])
    ax.set_ylim(0, max(r["bleu"] for r in ok) * 1.05 + 0.5)  # the AR lines too, not only the series
    if ticks:
        ax.set_xscale("log", base=2)
        kept = []
        for t in sorted(ticks):  # no two tick labels closer than 20% (10 and 11 would overlap)
            if not kept or t >= kept[-1] * 1.2:
                kept.append(t)
        ax.set_xticks(kept)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("decoder passes (CMLM iterations; refine_nat / delta: steps + 1; log scale)")
    ax.set_ylabel("BLEU (sacreBLEU, cased, 13a)")
    ax.set_title("BLEU vs refinement steps")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(out) / "bleu_vs_steps.png", dpi=120)
    plt.close(fig)
    plots.append(("BLEU vs refinement steps", "bleu_vs_steps.png"))

    # (3) BLEU vs batch-1 latency, all systems, CMLM frontier
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seen = set()
    for r in ok:
        color, marker = FAMILY_STYLE.get(r["family"], ("tab:orange", "x"))
        ax.scatter(r["latency_ms_median"], r["bleu"], color=color, marker=marker, s=40,
                   label=r["family"] if r["family"] not in seen else None, zorder=3)
        seen.add(r["family"])
        ax.annotate(r["key"], (r["latency_ms_median"], r["bleu"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    cmlm = sorted([r for r in ok if r["family"] == "CMLM"], key=lambda r: r["latency_ms_median"])
    if cmlm:
        xs, ys, best = [], [], -1e9
        for r in cmlm:
            best = max(best, r["bleu"])
            xs.append(r["latency_ms_median"])
            ys.append(best)
        xs.append(max(r["latency_ms_median"] for r in ok) * 1.2)
        ys.append(best)
        ax.step(xs, ys, where="post", ls="--", color="tab:gray", lw=1, label="CMLM frontier")
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1 (ms per sentence, median; log scale)")
    ax.set_ylabel("BLEU (sacreBLEU, cased, 13a)")
    ax.set_title("Quality vs speed, all systems")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(Path(out) / "bleu_vs_latency.png", dpi=120)
    plt.close(fig)
    plots.append(("BLEU vs batch-1 latency", "bleu_vs_latency.png"))
    return plots
