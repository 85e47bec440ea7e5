"""Training objective of the discrete refinement NAT (Lee et al. 2018, eq. 6-8).

    J = sum_{l=0}^{K-1} [ alpha * J_LVM^l + (1 - alpha) * J_DAE^l ] + lambda_len * J_len

Each J^l is a mean over target tokens and J_len a mean over sentences, as in the reference
code (lambda_len = 1 there). The mix is sampled per sentence and pass (with probability alpha
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


@register_criterion("refine_nat_loss", dataclass=RefineNATLossConfig)
class RefineNATLoss(FairseqCriterion):
    def __init__(self, task, refine_passes, lvm_alpha, corruption, corruption_rate_start,
                 corruption_rate_end, latent_approximation, length_loss_factor, label_smoothing):
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
        self.rate_start, self.rate_end = corruption_rate_start, corruption_rate_end
        self.stochastic = latent_approximation == "stochastic"
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
                       self.vocab_low, self.vocab_high)

    def plan(self, training=True):
        """The training mix; in validation the decoder's own chain (alpha 1, no DAE, argmax)."""
        if not training:
            return RefinePlan(passes=self.passes, lvm_alpha=1.0, corrupt=None, stochastic=False)
        return RefinePlan(passes=self.passes, lvm_alpha=self.alpha, corrupt=self._corrupt,
                          stochastic=self.stochastic)

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        outputs = model(net["src_tokens"], net["src_lengths"], net.get("prev_output_tokens"),
                        tgt_tokens=sample["target"], plan=self.plan(model.training))
        length = outputs.pop("length")
        length_loss = F.cross_entropy(length["out"].float(), length["tgt"], reduction="sum")  # fp16-safe
        length_correct = (length["out"].argmax(-1) == length["tgt"]).sum()
        ntokens = outputs["pass_0"]["mask"].sum()  # a tensor: no host sync
        nsentences = sample["target"].size(0)

        # token terms are summed over tokens and fairseq divides by sample_size = ntokens;
        # scale the summed length loss so that it enters as a mean over sentences
        loss = self.length_factor * length_loss * (ntokens.float() / max(nsentences, 1))
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
