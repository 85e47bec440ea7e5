#!/usr/bin/env python
"""What does refinement do to the output, step by step? A diagnostic for refine_nat, LaNMT and
the score/energy networks.

    python scripts/refine_diagnostic.py --path CKPT --data-bin DATA --gen-subset valid \
        --steps 10 --out examples/multi30k/results/diagnostic_refine_nat \
        [--inject-data DISTILLED_DATA --inject-subset valid] [--hyps NAME=FILE ...]

1. Per step (the model's own decoding, ``--decoding`` of fairseq-generate, forced to run
   ``--steps`` steps with the history kept, as ``--iter-decode-force-max-iter
   --retain-iter-history``): BLEU (sacreBLEU, cased, 13a), the share of output words equal to
   the word before them (repeat rate), the share of tokens changed by the step, token repeats
   (y_t == y_{t-1}) removed and created by the step, and how many of step 0's repeats survive
   to the last step.
2. refine_nat, ``--inject-data``: the refinement decoder's repairs at the gold length. Each
   target of that split (e.g. the distilled valid set) gets one injected error per sentence,
   one kind at a time: ``repeat`` (y_p also written at p+1), ``replace`` (a random token at p)
   or ``swap`` (p and p+1 exchanged); decoder 2 reads it with decoder 1's hidden state (the
   input of the first refinement pass in training). Reported: the share of errors fixed (every
   affected position right after one step), of wrong input tokens copied to the output, and of
   clean positions the step changed.
3. LaNMT (and the LaNMT under a score/energy network): on the references of the subset, the KL
   (nats per target token and per source position) and the z-usage, NLL(z = prior mean) -
   NLL(z = posterior mean) in nats per target token.

``--hyps NAME=FILE`` adds the repeat rate (and BLEU, with references) of any detokenised
output file, e.g. another system's hypotheses. Writes OUT.json, OUT.md and OUT.png.
"""

import argparse
import json
import os
import sys
import time
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", help="nar_refine checkpoint (refine_nat, lanmt, score_net, energy_net)")
    p.add_argument("--data-bin", help="binarised data the model was trained with")
    p.add_argument("--gen-subset", default="valid", help="split to decode (default valid)")
    p.add_argument("--ref", help="raw reference file of --gen-subset (default: the binarised "
                   "targets with --remove-bpe undone)")
    p.add_argument("--decoding", default="auto",
                   help="refine, delta, score, energy, or auto (the model's own)")
    p.add_argument("--steps", type=int, default=10, help="refinement steps to run (forced)")
    p.add_argument("--refine-repeats", default="mask", choices=("keep", "mask", "drop"),
                   help="refine decoding: fairseq-generate's --refine-repeats (what decoder 2 "
                   "reads at a repeated token; default mask, as fairseq-generate)")
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="subword scheme to undo (fairseq's --remove-bpe: sentencepiece, "
                   "subword_nmt, ...; none for word-level data)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-sentences", type=int, default=0, help="decode only the first N (0: all)")
    p.add_argument("--inject-data", help="refine_nat: data-bin whose --inject-subset targets get "
                   "injected errors (e.g. the distilled valid set)")
    p.add_argument("--inject-subset", default="valid")
    p.add_argument("--hyps", action="append", default=[], metavar="NAME=FILE",
                   help="detokenised outputs of another system: repeat rate (and BLEU)")
    p.add_argument("--model-overrides", default="{}", help="fairseq --model-overrides")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    return p


# -- measures ---------------------------------------------------------------------------------
def word_repeats(text):
    """(words equal to the word before them, words) of one detokenised line."""
    w = text.split()
    return sum(a == b for a, b in zip(w[1:], w[:-1])), len(w)


def repeat_positions(tokens):
    return {i for i in range(1, len(tokens)) if tokens[i] == tokens[i - 1]}


def changed_positions(prev, cur):
    """Positions where ``cur`` differs from ``prev``. At equal lengths position by position;
    when the length changed (``--refine-repeats drop`` deletes tokens), after aligning the two
    (difflib): the tokens of the longer one outside the matching blocks, so that a deletion
    counts once rather than shifting every later position."""
    if len(prev) == len(cur):
        return sum(1 for a, b in zip(prev, cur) if a != b)
    import difflib

    matched = sum(m.size for m in difflib.SequenceMatcher(None, prev, cur, autojunk=False).get_matching_blocks())
    return max(len(prev), len(cur)) - matched


def repeats_removed_created(prev, cur):
    """(repeats of ``prev`` gone in ``cur``, repeats new in ``cur``): by position at equal
    lengths; when the length changed, the net change of the count (positions have moved)."""
    rp, rc = repeat_positions(prev), repeat_positions(cur)
    if len(prev) == len(cur):
        return len(rp - rc), len(rc - rp)
    return max(len(rp) - len(rc), 0), max(len(rc) - len(rp), 0)


def step_table(histories, texts, refs):
    """Per-step measures over the corpus; ``histories[s]`` = token lists of every step."""
    import sacrebleu

    n_steps = len(histories[0])
    rows = []
    for k in range(n_steps):
        hyp = [t[k] for t in texts]
        rep, words = map(sum, zip(*(word_repeats(h) for h in hyp)))
        toks = [h[k] for h in histories]
        row = {"step": k, "words": words, "repeat_rate": rep / max(words, 1),
               "tokens": sum(map(len, toks)), "mean_length": sum(map(len, toks)) / max(len(toks), 1)}
        row["token_repeats"] = sum(len(repeat_positions(t)) for t in toks)
        if refs is not None:
            # are repeats the filling of a too-long output? (a NAT cannot shorten its length)
            longer = [len(h.split()) > len(r.split()) for h, r in zip(hyp, refs)]
            counts = [word_repeats(h) for h in hyp]
            rl = sum(c[0] for c, l in zip(counts, longer) if l)
            wl = sum(c[1] for c, l in zip(counts, longer) if l)
            row["longer_than_reference"] = sum(longer) / max(len(longer), 1)
            row["repeat_rate_longer"] = rl / max(wl, 1)
            row["repeat_rate_not_longer"] = (rep - rl) / max(words - wl, 1)
            row["repeats_in_longer"] = rl / max(rep, 1)
            row["bleu"] = round(sacrebleu.corpus_bleu(hyp, [refs], tokenize="13a").score, 2)
        if k > 0:
            prev = [h[k - 1] for h in histories]
            row["changed"] = sum(changed_positions(a, b) for a, b in zip(prev, toks)) / max(row["tokens"], 1)
            rem_cre = [repeats_removed_created(a, b) for a, b in zip(prev, toks)]
            row["repeats_removed"] = sum(r for r, _ in rem_cre)
            row["repeats_created"] = sum(c for _, c in rem_cre)
        rows.append(row)
    first = [repeat_positions(h[0]) for h in histories]
    last = [repeat_positions(h[-1]) for h in histories]
    survive = sum(len(a & b) for a, b in zip(first, last)) / max(sum(map(len, first)), 1)
    return rows, survive


# -- decoding with the history --------------------------------------------------------------
def load(a, data_bin, extra_task=None):
    from fairseq import checkpoint_utils

    overrides = {"data": data_bin}
    overrides.update(json.loads(a.model_overrides))
    overrides.update(extra_task or {})
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([a.path], arg_overrides=overrides)
    model = models[0]
    model.eval()
    return model, cfg, task


def iterate(task, subset, max_tokens, max_sentences=0):
    """(dataset, batches) of ``subset`` (loaded if needed), optionally its first N sentences."""
    if subset not in task.datasets:
        task.load_dataset(subset)
    ds = task.dataset(subset)
    if max_sentences and max_sentences < len(ds):
        ds = FirstSentences(ds, max_sentences)
    itr = task.get_batch_iterator(dataset=ds, max_tokens=max_tokens, ignore_invalid_inputs=False,
                                  seed=1, num_workers=0).next_epoch_itr(shuffle=False)
    return ds, itr


class FirstSentences:
    """The first ``n`` sentences of a fairseq dataset (ids kept), for quick runs."""

    def __init__(self, ds, n):
        self.ds, self.n = ds, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.ds[i]

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def ordered_indices(self):
        import numpy as np

        return np.arange(self.n)


def decode_histories(a, model, task, decoding, subset):
    """{id: [token list of step 0..K]} of the forced K-step decoding with history."""
    with open_task_cfg(task) as cfg:
        cfg.decoding = decoding
        cfg.refine_repeats = a.refine_repeats
        gen_args = Namespace(iter_decode_max_iter=a.steps, iter_decode_force_max_iter=True,
                             iter_decode_with_beam=1, retain_iter_history=True)
        gen = task.build_generator([model], gen_args)
    pad, eos = task.target_dictionary.pad(), task.target_dictionary.eos()
    ds, itr = iterate(task, subset, a.max_tokens, a.max_sentences)
    out, refs = {}, {}
    t0 = time.time()
    for sample in itr:
        hypos = task.inference_step(gen, [model], sample)
        for i, sid in enumerate(sample["id"].tolist()):
            hist = [h["tokens"] for h in hypos[i][0].get("history") or [{"tokens": hypos[i][0]["tokens"]}]]
            hist = [[t for t in h.tolist() if t not in (pad, eos)] for h in hist]
            hist += [hist[-1]] * (a.steps + 1 - len(hist))  # a converged chain repeats its end
            out[sid] = hist[: a.steps + 1]
            tgt = sample["target"][i]
            refs[sid] = task.target_dictionary.string(tgt[tgt.ne(pad)], a.remove_bpe)
    print(f"decoded {len(out)} sentences x {a.steps + 1} steps in {time.time() - t0:.0f} s", flush=True)
    return out, refs


class open_task_cfg:
    """Let the diagnostic set task options (e.g. --decoding) on a loaded task's config."""

    def __init__(self, task):
        self.task = task

    def __enter__(self):
        from omegaconf import open_dict

        self._ctx = open_dict(self.task.cfg)
        self._ctx.__enter__()
        return self.task.cfg

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# -- injected errors at the gold length (refine_nat) --------------------------------------------
def inject_errors(a, model, task):
    """One refinement step from the gold canvas with one injected error per sentence. With
    ``--refine-repeats mask`` the step reads repeated tokens as decoding does (without their
    token); ``drop`` changes the length, so it is measured as ``keep`` here."""
    import torch

    from nar_refine.modules.corruption import repeated_positions

    with open_task_cfg(task) as cfg:
        cfg.data = a.inject_data
    task.datasets.pop(a.inject_subset, None)
    _, itr = iterate(task, a.inject_subset, a.max_tokens, a.max_sentences)
    d = task.target_dictionary
    g = torch.Generator().manual_seed(a.seed)
    stats = {op: dict(errors=0, fixed=0, copied=0, clean=0, clean_changed=0)
             for op in ("repeat", "replace", "swap")}
    clean_input = dict(tokens=0, changed=0)
    with torch.inference_mode():
        for sample in itr:
            net = sample["net_input"]
            # the gold canvas: y (and its </s> with shortening); errors go into y's positions
            y, lengths, canvas = model.decoder_target(sample["target"])
            enc = model.encode(net["src_tokens"], net["src_lengths"])
            _, h0 = model.initial_step(enc, canvas)
            mask = y.ne(d.pad())

            def step(inp):
                kw = ({"token_mask": repeated_positions(inp, d.pad())}
                      if a.refine_repeats == "mask" else {})
                return model.refine_step(enc, inp, h0, **kw)[0].argmax(-1)

            out_clean = step(y)
            clean_input["tokens"] += int(mask.sum())
            clean_input["changed"] += int((out_clean.ne(y) & mask).sum())
            bsz, width = y.shape
            rows = torch.arange(bsz)
            for op in stats:
                span = (lengths - 1).clamp(min=1) if op != "replace" else lengths
                p = (torch.rand(bsz, generator=g) * span.float()).long().clamp(max=width - 1)
                nxt = (p + 1).clamp(max=width - 1)
                noisy, aff = y.clone(), torch.zeros_like(mask)
                if op == "replace":
                    tok = torch.randint(d.nspecial, len(d), (bsz,), generator=g)
                    ok = tok.ne(y[rows, p])
                    noisy[rows, p] = torch.where(ok, tok, y[rows, p])
                    aff[rows, p] = ok
                else:
                    ok = (lengths >= 2) & y[rows, p].ne(y[rows, nxt])
                    if op == "repeat":
                        noisy[rows, nxt] = torch.where(ok, y[rows, p], y[rows, nxt])
                        aff[rows, nxt] = ok
                    else:
                        noisy[rows, p] = torch.where(ok, y[rows, nxt], y[rows, p])
                        noisy[rows, nxt] = torch.where(ok, y[rows, p], y[rows, nxt])
                        aff[rows, p] |= ok
                        aff[rows, nxt] |= ok
                out = step(noisy)
                s = stats[op]
                right = (out.eq(y) | ~aff).all(1)
                s["errors"] += int(ok.sum())
                s["fixed"] += int((right & ok).sum())
                wrong_in = aff & noisy.ne(y)
                s["copied"] += int((wrong_in & out.eq(noisy)).any(1).sum())
                clean = mask & ~aff
                s["clean"] += int(clean.sum())
                s["clean_changed"] += int((clean & out.ne(y)).sum())
    result = {op: dict(s, fixed_rate=s["fixed"] / max(s["errors"], 1),
                       copied_rate=s["copied"] / max(s["errors"], 1),
                       clean_changed_rate=s["clean_changed"] / max(s["clean"], 1))
              for op, s in stats.items()}
    result["clean_input_changed_rate"] = clean_input["changed"] / max(clean_input["tokens"], 1)
    return result


# -- LaNMT: KL and z-usage ---------------------------------------------------------------------
def latent_usage(a, lanmt, task, subset):
    import torch

    from nar_refine.criterions.token_loss import masked_token_loss

    _, itr = iterate(task, subset, a.max_tokens, a.max_sentences)
    tot = dict(ntokens=0, src_positions=0, nll_post=0.0, nll_prior=0.0, kl=0.0)
    lanmt.eval()
    with torch.inference_mode():
        for sample in itr:
            net = sample["net_input"]
            out = lanmt(net["src_tokens"], net["src_lengths"], tgt_tokens=sample["target"])
            w, pm = out["word_ins"], out["word_ins_prior_mean"]
            tot["nll_post"] += float(masked_token_loss(w["out"], w["tgt"], w["mask"])[1])
            tot["nll_prior"] += float(masked_token_loss(pm["out"], pm["tgt"], pm["mask"])[1])
            tot["kl"] += float(out["kl"]["out"][out["kl"]["mask"]].sum())
            tot["ntokens"] += int(w["mask"].sum())
            tot["src_positions"] += int(out["kl"]["mask"].sum())
    n = max(tot["ntokens"], 1)
    return {"z_usage": (tot["nll_prior"] - tot["nll_post"]) / n, "kl_per_token": tot["kl"] / n,
            "kl_per_source_position": tot["kl"] / max(tot["src_positions"], 1),
            "nll_posterior_mean": tot["nll_post"] / n, "nll_prior_mean": tot["nll_prior"] / n}


# -- report ------------------------------------------------------------------------------------
def pct(x):
    return f"{100 * x:.1f}%"


def write_report(a, res):
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    file = lambda ext: Path(f"{out}{ext}")
    text = json.dumps(res, indent=1).replace(str(REPO) + os.sep, "")
    file(".json").write_text(text, encoding="utf-8")
    L = [f"# Refinement diagnostic: {res.get('model', 'outputs')}\n",
         "Command:\n", "```\n" + res["command"] + "\n```\n"]
    if "steps" in res:
        modes = {"mask": " with --refine-repeats mask (repeated tokens read without their token)",
                 "keep": " with --refine-repeats keep (repeated tokens read as they are, the "
                 "paper's decoding)",
                 "drop": " with --refine-repeats drop (repeated tokens deleted before each step; "
                 "changed tokens then counted after aligning the steps, removed / created "
                 "repeats as the net change where the length changed)"}
        mode = modes.get(res.get("refine_repeats"), "") if res["decoding"] == "refine" else ""
        L += [f"{res['subset']} set, {res['sentences']} sentences, --decoding {res['decoding']}{mode}, "
              f"{len(res['steps']) - 1} forced steps (step 0: decoder 1 / the prior mean). BLEU: "
              f"sacreBLEU cased 13a. Repeat rate: output words equal to the word before them. "
              f"Changed: tokens that differ from the step before. Removed / created: token "
              f"repeats (y_t = y_t-1) the step removed / created.\n",
              "| step | BLEU | repeat rate | tokens changed | repeats removed | repeats created | mean length |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["steps"]:
            L.append(f"| {r['step']} | {r.get('bleu', float('nan')):.2f} | {pct(r['repeat_rate'])} | "
                     f"{pct(r['changed']) if 'changed' in r else ''} | {r.get('repeats_removed', '')} | "
                     f"{r.get('repeats_created', '')} | {r['mean_length']:.2f} |")
        L += ["", f"Step 0's token repeats that survive to the last step: {pct(res['repeats_surviving'])}."]
        last = res["steps"][-1]
        if "repeats_in_longer" in last:
            L += [f"Last step: {pct(last['longer_than_reference'])} of the outputs have more words than "
                  f"their reference; their repeat rate is {pct(last['repeat_rate_longer'])}, the others' "
                  f"{pct(last['repeat_rate_not_longer'])}; {pct(last['repeats_in_longer'])} of all repeats "
                  f"are in the longer outputs."]
        L.append("")
    if "injected" in res:
        inj = res["injected"]
        L += [f"## Injected errors at the gold length ({res['inject_subset']} of "
              f"`{res['inject_data']}`), one refinement step\n",
              "| error | errors | fixed | wrong input copied | clean positions changed |",
              "|---|---:|---:|---:|---:|"]
        for op in ("repeat", "replace", "swap"):
            s = inj[op]
            L.append(f"| {op} | {s['errors']} | {pct(s['fixed_rate'])} | {pct(s['copied_rate'])} | "
                     f"{pct(s['clean_changed_rate'])} |")
        L += ["", f"With the clean reference as input the step changes "
              f"{pct(inj['clean_input_changed_rate'])} of the tokens.", ""]
    if "latent" in res:
        z = res["latent"]
        L += ["## Latent\n", f"On the references of the {res['subset']} set: z-usage "
              f"{z['z_usage']:.3f} nats/token (NLL at the prior mean {z['nll_prior_mean']:.3f} - at "
              f"the posterior mean {z['nll_posterior_mean']:.3f}); KL(q||p) {z['kl_per_token']:.3f} "
              f"nats/token, {z['kl_per_source_position']:.3f} per source position.", ""]
    if res.get("extra_outputs"):
        L += ["## Other outputs\n", "| output | BLEU | repeat rate |", "|---|---:|---:|"]
        for name, e in res["extra_outputs"].items():
            L.append(f"| {name} | {e['bleu']:.2f} | {pct(e['repeat_rate'])} |" if "bleu" in e
                     else f"| {name} | | {pct(e['repeat_rate'])} |")
        L.append("")
    if "steps" in res:
        L.append(f"![repeat rate and BLEU by step]({out.name}.png)\n")
    file(".md").write_text("\n".join(L).replace(str(REPO) + os.sep, ""), encoding="utf-8")
    if "steps" in res:
        plot(res, file(".png"))


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in res["steps"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [100 * r["repeat_rate"] for r in res["steps"]], marker="o", color="C3",
            label="repeat rate (%)")
    ax.plot(steps[1:], [100 * r["changed"] for r in res["steps"][1:]], marker="s", color="C2",
            label="tokens changed (%)")
    ax.set_xlabel(f"{res['decoding']} step")
    ax.set_ylabel("% of words / tokens")
    ax.grid(alpha=0.3)
    if "bleu" in res["steps"][0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [r["bleu"] for r in res["steps"]], marker="^", color="C0", label="BLEU")
        ax2.set_ylabel("BLEU")
        lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(lines, [l.get_label() for l in lines], fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title(f"{res.get('model', '')}: what each step does", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    a = get_parser().parse_args(argv)
    a.remove_bpe = None if a.remove_bpe in ("none", "") else a.remove_bpe
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import logging

    import torch

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    import nar_refine  # noqa: F401  (registers the plugin)

    res = {"command": "python scripts/refine_diagnostic.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    refs_file = Path(a.ref).read_text(encoding="utf-8").splitlines() if a.ref else None
    if a.path:
        if not a.data_bin:
            sys.exit("--path needs --data-bin")
        model, cfg, task = load(a, a.data_bin)
        arch = getattr(cfg.model, "arch", type(model).__name__)
        decoding = a.decoding if a.decoding != "auto" else model.default_decoding
        shown = os.path.relpath(a.path, REPO) if Path(a.path).resolve().is_relative_to(REPO) else a.path
        res.update(model=f"{arch} ({shown})",
                   decoding=decoding, subset=a.gen_subset, refine_repeats=a.refine_repeats)
        hist, refs = decode_histories(a, model, task, decoding, a.gen_subset)
        ids = sorted(hist)
        d = task.target_dictionary
        texts = [[d.string(torch.tensor(h, dtype=torch.long), a.remove_bpe) for h in hist[i]] for i in ids]
        ref_lines = [refs[i] for i in ids]
        if refs_file is not None:
            ref_lines = [refs_file[i] for i in ids]
        res["sentences"] = len(ids)
        res["steps"], res["repeats_surviving"] = step_table([hist[i] for i in ids], texts, ref_lines)
        if a.inject_data and decoding == "refine":
            res["inject_data"], res["inject_subset"] = a.inject_data, a.inject_subset
            res["injected"] = inject_errors(a, model, task)
        lanmt = getattr(model, "lanmt", model)
        if getattr(lanmt, "nar_family", None) == "lanmt":
            res["latent"] = latent_usage(a, lanmt, task, a.gen_subset)
    extra = {}
    for spec in a.hyps:
        name, _, path = spec.partition("=")
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        rep, words = map(sum, zip(*(word_repeats(h) for h in lines))) if lines else (0, 0)
        e = {"file": path, "repeat_rate": rep / max(words, 1), "words": words}
        if refs_file is not None and len(refs_file) == len(lines):
            import sacrebleu

            e["bleu"] = round(sacrebleu.corpus_bleu(lines, [refs_file], tokenize="13a").score, 2)
        extra[name] = e
    if extra:
        res["extra_outputs"] = extra
    write_report(a, res)
    for r in res.get("steps", []):
        print(f"step {r['step']}: BLEU {r.get('bleu', float('nan')):.2f} repeats {pct(r['repeat_rate'])}"
              + (f" changed {pct(r['changed'])}" if "changed" in r else ""))
    print(f"wrote {a.out}.json, {a.out}.md" + (", .png" if "steps" in res else ""))


if __name__ == "__main__":
    main()
