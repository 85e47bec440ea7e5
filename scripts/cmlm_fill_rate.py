#!/usr/bin/env python
"""How often fairseq's CMLM fills one masked target word from its context: the reference point
for refine_diagnostic.py's "injected repeat fixed" rate.

    python scripts/cmlm_fill_rate.py --path CMLM_CKPT --data-bin DISTILLED_DATA [--subset valid]

For every target of the subset (the distilled valid set, as the diagnostic's injected errors),
one position is drawn as the diagnostic draws an injected repeat's (the word after a random
content position, where the two words differ), replaced by CMLM's mask, and the decoder reads
the gold target around it at the gold length: the share of masked words it predicts right is
printed. A repeat "fixed" by refine_nat's refinement step (with ``--refine-repeats mask``) is
the same task for its refinement decoder.
"""

import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True, help="a fairseq cmlm_transformer checkpoint")
    p.add_argument("--data-bin", required=True, help="its data (e.g. the distilled valid set)")
    p.add_argument("--subset", default="valid")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=4096)
    a = p.parse_args(argv)
    import torch

    import nar_refine  # noqa: F401  (patches torch.load for fairseq checkpoints)
    from fairseq import checkpoint_utils

    torch.set_num_threads(1)
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([a.path], arg_overrides={"data": a.data_bin})
    model = models[0].float().eval()
    task.load_dataset(a.subset)
    itr = task.get_batch_iterator(task.dataset(a.subset), max_tokens=a.max_tokens,
                                  ignore_invalid_inputs=True).next_epoch_itr(shuffle=False)
    d = task.target_dictionary
    g = torch.Generator().manual_seed(a.seed)
    n = right = 0
    with torch.inference_mode():
        for sample in itr:
            tgt = sample["target"]
            content = tgt.ne(d.pad()) & tgt.ne(d.eos()) & tgt.ne(d.bos())
            lengths = content.sum(1)
            first = int(bool((tgt[:, 0] == d.bos()).all()))  # translation_lev prepends <s>
            rows = torch.arange(tgt.size(0))
            pos = first + (torch.rand(tgt.size(0), generator=g) * (lengths - 1).clamp(min=1).float()).long()
            nxt = (pos + 1).clamp(max=tgt.size(1) - 1)
            ok = (lengths >= 2) & tgt[rows, pos].ne(tgt[rows, nxt])
            prev = tgt.clone()
            prev[rows, nxt] = d.unk()  # CMLM's mask
            net = sample["net_input"]
            enc = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
            out = model.decoder(normalize=False, prev_output_tokens=prev, encoder_out=enc)
            n += int(ok.sum())
            right += int(((out[rows, nxt].argmax(-1) == tgt[rows, nxt]) & ok).sum())
    print(f"CMLM fills {right} of {n} masked words from their context ({100 * right / max(n, 1):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
