"""Training objective of the discrete refinement NAT (Lee et al. 2018, eq. 6-8).

    J = sum_{l=0}^{K-1} [ alpha * J_LVM^l + (1 - alpha) * J_DAE^l ] + lambda_len * J_len

Each J^l is a mean over target tokens and J_len a mean over sentences, as in the reference
code (lambda_len = 1 there). fairseq divides the summed loss of all workers (and of all
``--update-freq`` steps) by their summed ``sample_size`` (target tokens), so a term may only be
a sum over the batch times a constant, or the objective would change with how a batch is
split: the length loss enters as lambda_len * L * sum_s CE_s, where L is a constant, the mean
target length of the training data (of the evaluated split when no training split is loaded),
so that it weighs about lambda_len per sentence against per-token means. The mix is sampled per sentence and pass (with probability alpha
a pass reads the model's own previous output, else a corrupted reference). Corruption rate
decays linearly from ``--corruption-rate-start`` (pass 1) to ``--corruption-rate-end`` (last
pass).

Validation (the model in eval mode) runs only the chain the decoder runs: alpha = 1, no
corruption, argmax outputs. A DAE input is the reference in disguise: with the training mix,
half the validation sentences read a corrupted reference in passes 1..K-1 and the logged NLL
falls below anything decoding can reach (fertility toy of tests/test_refine_nat.py, 200
updates, bits per token, passes 0-3: 1.60 1.55 1.32 1.07 with the mix, 1.60 1.62 1.65 1.68
for the chain the decoder runs). So ``loss`` in validation, what fairseq selects checkpoints
on, and ``nll_pass_l`` are those of the pure chain.
"""

from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from nar_refine.criterions.token_loss import stat, log_accuracy, log_terms, masked_token_loss
from nar_refine.errors import NARConfigError
from nar_refine.models.refine_nat import RefinePlan
from nar_refine.modules.corruption import corrupt, parse_corruptions


@dataclass
class RefineNATLossConfig(FairseqDataclass):
    refine_passes: int = field(
        default=4, metadata={"help": "K: decoder passes in training (decoder 1 + K-1 refinements), K >= 2"}
    )
    lvm_alpha: float = field(
        default=0.5,
        metadata={"help": "alpha: probability that a refinement pass reads the model's own "
                  "previous output (latent-variable loss) instead of a corrupted reference (DAE)"},
    )
    corruption: str = field(
        default="swap,replace,repeat",
        metadata={"help": "comma-separated DAE corruptions: swap, replace, repeat"},
    )
    corruption_rate_start: float = field(
        default=0.6, metadata={"help": "corruption probability per token at the first refinement pass"}
    )
    corruption_count: ChoiceEnum(["exact", "independent"]) = field(
        default="exact",
        metadata={"help": "exact: corrupt exactly max(floor(rate*T), 1) positions of a T-token "
                  "reference, the operations applied one after another in random order (as the "
                  "reference code: no denoising input is clean, repeats form runs); independent: "
                  "each position with probability rate, from one snapshot (nar_refine < 0.3)"},
    )
    corruption_rate_end: float = field(
        default=0.1, metadata={"help": "corruption probability per token at the last refinement pass"}
    )
    latent_approximation: ChoiceEnum(["deterministic", "stochastic"]) = field(
        default="deterministic",
        metadata={"help": "pass outputs fed forward as argmax (deterministic) or samples (stochastic)"},
    )
    length_loss_factor: float = field(
        default=1.0,
        metadata={"help": "lambda_len: weight of the length loss (mean over sentences) against "
                  "the token losses (each a mean over tokens); 1 as the reference code, 0 "
                  "trains no length predictor"},
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing on token losses"})
    refine_mask_repeats: bool = field(
        default=False,
        metadata={"help": "every refinement pass (training and the validation chain) reads a "
                  "token equal to the one before it without that token (the previous hidden "
                  "state alone), as --refine-repeats mask decoding does, so that decoder 2 "
                  "learns to fill such positions from the context"},
    )


@register_criterion("refine_nat_loss", dataclass=RefineNATLossConfig)
class RefineNATLoss(FairseqCriterion):
    def __init__(self, task, refine_passes, lvm_alpha, corruption, corruption_rate_start,
                 corruption_rate_end, latent_approximation, length_loss_factor, label_smoothing,
                 corruption_count="exact", refine_mask_repeats=False):
        super().__init__(task)
        if refine_passes < 2:
            # one pass trains only the first decoder: the refinement decoder gets no gradient and
            # DDP (find_unused_parameters=False) fails on the next step
            raise NARConfigError(
                f"--refine-passes must be >= 2, got {refine_passes}: with one pass the refinement "
                "decoder is never used, so it is not trained and multi-GPU (DDP) training fails; "
                "use --refine-passes 2 or more (default 4)")
        if not 0.0 <= lvm_alpha <= 1.0:
            raise NARConfigError(f"--lvm-alpha must lie in [0, 1], got {lvm_alpha}")
        self.passes = refine_passes
        self.alpha = lvm_alpha
        self.ops = parse_corruptions(corruption)
        self.count = corruption_count
        self._tokens_per_sentence = None
        self.rate_start, self.rate_end = corruption_rate_start, corruption_rate_end
        self.stochastic = latent_approximation == "stochastic"
        self.mask_repeats = refine_mask_repeats
        self.length_factor = length_loss_factor
        self.eps = label_smoothing
        d = task.target_dictionary
        self.vocab_low, self.vocab_high = d.nspecial, len(d)

    def corruption_rate(self, k):
        """Linear decay over refinement passes 1..K-1."""
        if self.passes <= 2:
            return self.rate_start
        frac = (k - 1) / (self.passes - 2)
        return self.rate_start + frac * (self.rate_end - self.rate_start)

    def _corrupt(self, tokens, padding_mask, k):
        return corrupt(tokens, padding_mask, self.corruption_rate(k), self.ops,
                       self.vocab_low, self.vocab_high, count=self.count)

    def tokens_per_sentence(self):
        """L: the mean target length (tokens without </s>) of the training split, else of the
        first loaded split; a constant, so the length term stays a sum over sentences."""
        if self._tokens_per_sentence is None:
            datasets = getattr(self.task, "datasets", {}) or {}
            split = "train" if "train" in datasets else next(iter(sorted(datasets)), None)
            sizes = getattr(datasets.get(split), "tgt_sizes", None) if split else None
            if sizes is None or len(sizes) == 0:
                return 1.0  # no data known (a bare criterion in a test): one token per sentence
            self._tokens_per_sentence = max(float(sizes.mean()) - 1.0, 1.0)
        return self._tokens_per_sentence

    def plan(self, training=True):
        """The training mix; in validation the decoder's own chain (alpha 1, no DAE, argmax)."""
        if not training:
            return RefinePlan(passes=self.passes, lvm_alpha=1.0, corrupt=None, stochastic=False,
                              mask_repeats=self.mask_repeats)
        return RefinePlan(passes=self.passes, lvm_alpha=self.alpha, corrupt=self._corrupt,
                          stochastic=self.stochastic, mask_repeats=self.mask_repeats)

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        outputs = model(net["src_tokens"], net["src_lengths"], net.get("prev_output_tokens"),
                        tgt_tokens=sample["target"], plan=self.plan(model.training))
        length = outputs.pop("length")
        length_loss = F.cross_entropy(length["out"].float(), length["tgt"], reduction="sum")  # fp16-safe
        length_correct = (length["out"].argmax(-1) == length["tgt"]).sum()
        ntokens = outputs["pass_0"]["mask"].sum()  # a tensor: no host sync
        nsentences = sample["target"].size(0)

        # token terms are summed over tokens and fairseq divides by sample_size = ntokens; the
        # summed length loss is scaled by a constant (split-invariant), about a sentence mean
        loss = self.length_factor * self.tokens_per_sentence() * length_loss
        log = {}
        for name, out in outputs.items():
            term, nll = masked_token_loss(out["out"], out["tgt"], out["mask"], self.eps)
            loss = loss + term
            log[f"nll_{name}"] = stat(nll)
        last = f"nll_pass_{len(outputs) - 1}"
        log.update(
            loss=stat(loss),
            nll_loss=log[last],
            length_loss=stat(length_loss),
            length_acc=stat(length_correct),
            ntokens=ntokens,
            nsentences=nsentences,
            sample_size=ntokens,
        )
        return loss, ntokens, log

    @staticmethod
    def reduce_metrics(logging_outputs):
        keys = {k for log in logging_outputs for k in log if k.startswith("nll_pass_")}
        log_terms(logging_outputs, ["loss", "nll_loss"] + sorted(keys))
        log_terms(logging_outputs, ["length_loss"], "nsentences")
        log_accuracy(logging_outputs, "length_acc")
        metrics.log_derived("ppl", lambda m: 2 ** m["nll_loss"].avg)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
