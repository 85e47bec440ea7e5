"""Training objective of LaNMT (Shu et al. 2020, eq. 3 with free bits):

    J = sum_t -log p(y_t | z, x)  +  sum_i max(KL_i, b)  +  lambda_len * -log p(T | z, x),
    z ~ q(z | x, y) (one reparameterised sample),  KL_i = KL(q(z_i|x,y) || p(z_i|x)) summed over
    the latent dims of source position i,  b = the KL budget ("free bits") per position.

Scaling. The reference code sums NLL and KL per sentence and averages over sentences. fairseq
divides the summed loss by ``sample_size``; we return the number of target tokens, as
fairseq's ``nat_loss`` does, so the NLL is a per-token average. The KL is summed over all
source positions of the batch and divided by the same number, so J / ntokens = -ELBO / ntokens
(+ length term): the NLL:KL ratio of the ELBO is kept exactly, and only the overall step size
differs from the reference (by batch size / ntokens, which the learning rate absorbs). The
length loss is summed over sentences, so lambda_len = 1 (the default) weighs it once per
sentence, as the reference does. For the same reason ``kl`` (the unclamped KL) and ``kl_loss``
(the clamped term actually optimised) are logged per target token, in bits like ``nll_loss``;
``kl_budget`` logs the current budget b (nats per position). Token losses are label-smoothed
(0.1 by default, as the reference).

Validation (``loss`` is what fairseq selects checkpoints on): the model decodes z = the
posterior mean, and ``loss`` = NLL + unclamped KL + lambda_len * length term, per token, without
label smoothing and without the budget: -ELBO (+ length), at the posterior mean. The clamped
training loss would fall just because the budget falls, and reward the anneal rather than the
model. Validation also logs ``z_usage`` = NLL(z = prior mean) - NLL(z = posterior mean) in nats
per token: how much the decoder reads z. While the budget is held the logged KL says nothing
about use (it can sit at the budget for free); this number does.

Budget schedule, in updates from the start of training (independent of ``--max-update``, so a
short run is not silently annealed and raising ``--max-update`` on resume changes nothing
already applied): b = ``--kl-budget`` for the first ``--kl-budget-hold-updates`` updates, then
falls linearly to 0 over ``--kl-budget-anneal-updates`` updates, then stays 0 (the fine-tune
with budget 0). Anneal only once z-usage is clearly above 0: a decoder that does not read z yet
lets the KL collapse when the budget goes.
"""

import logging
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from nar_refine.criterions.token_loss import stat, log_accuracy, log_terms, masked_token_loss
from nar_refine.errors import NARConfigError

logger = logging.getLogger(__name__)


@dataclass
class LaNMTELBOConfig(FairseqDataclass):
    kl_budget: float = field(
        default=1.0,
        metadata={"help": "free bits: KL budget per source position (nats); each position's KL "
                  "term is max(KL, budget) during the hold phase"},
    )
    kl_budget_hold_updates: int = field(
        default=50000,
        metadata={"help": "updates (from update 0, whatever --max-update is) trained with the full "
                  "KL budget; hold until the logged valid z_usage is clearly above 0. The "
                  "default follows the reference (half of its 100k updates)"},
    )
    kl_budget_anneal_updates: int = field(
        default=50000,
        metadata={"help": "updates over which the budget then falls linearly to 0, after which it "
                  "stays 0; 0: it drops to 0 at once"},
    )
    length_loss_factor: float = field(
        default=1.0,
        metadata={"help": "weight of the length-prediction loss -log p(T|z,x), per sentence "
                  "(1: as the reference)"},
    )
    label_smoothing: float = field(
        default=0.1, metadata={"help": "label smoothing on the training token loss (0.1: as the "
                               "reference; validation reports the plain NLL)"}
    )
    max_update: int = II("optimization.max_update")


def kl_budget_at(update, budget, hold, anneal):
    """Budget b at ``update``: ``budget`` until ``hold``, linear to 0 over ``anneal``, then 0."""
    if update < hold:
        return budget
    if anneal <= 0 or update >= hold + anneal:
        return 0.0
    return budget * (1.0 - (update - hold) / anneal)


@register_criterion("lanmt_elbo", dataclass=LaNMTELBOConfig)
class LaNMTELBO(FairseqCriterion):
    def __init__(self, task, kl_budget, kl_budget_hold_updates, kl_budget_anneal_updates,
                 length_loss_factor, label_smoothing, max_update=0):
        super().__init__(task)
        if kl_budget < 0:
            raise NARConfigError("--kl-budget must be >= 0")
        if kl_budget_hold_updates < 0 or kl_budget_anneal_updates < 0:
            raise NARConfigError("--kl-budget-hold-updates and --kl-budget-anneal-updates are numbers "
                             "of updates (>= 0); the schedule no longer follows --max-update")
        self.budget, self.hold, self.anneal = kl_budget, kl_budget_hold_updates, kl_budget_anneal_updates
        self.length_factor = length_loss_factor
        self.eps = label_smoothing
        self.update_num = 0
        end = self.hold + self.anneal
        logger.info("lanmt_elbo: KL budget %s until update %d, then linearly to 0 at update %d",
                    kl_budget, self.hold, end)
        if kl_budget > 0 and max_update and max_update < end:
            # said, not acted on: the schedule never depends on --max-update
            logger.warning("lanmt_elbo: training stops at --max-update %d, when the KL budget is "
                           "still %.3g; resume with a larger --max-update to anneal it",
                           max_update, kl_budget_at(max_update, kl_budget, self.hold, self.anneal))

    def set_update_num(self, update_num):
        self.update_num = update_num

    def current_budget(self):
        return kl_budget_at(self.update_num, self.budget, self.hold, self.anneal)

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        out = model(net["src_tokens"], net["src_lengths"], net.get("prev_output_tokens"),
                    tgt_tokens=sample["target"])
        word = out["word_ins"]
        budget = self.current_budget()
        kl_pos, kl_mask = out["kl"]["out"], out["kl"]["mask"]
        kl = kl_pos[kl_mask].sum()
        kl_loss = kl_pos[kl_mask].clamp(min=budget).sum()  # free bits: max(KL_i, b)
        length = out["length"]
        length_loss = F.cross_entropy(length["out"].float(), length["tgt"], reduction="sum")  # fp16-safe
        length_correct = (length["out"].argmax(-1) == length["tgt"]).sum()
        ntokens = word["mask"].sum()  # a tensor: no host sync (fairseq accepts it as sample_size)
        nsentences = sample["target"].size(0)
        log = {}
        if "word_ins_prior_mean" in out:
            # validation: -ELBO (+ length) without the budget or smoothing, so checkpoint
            # selection does not reward a falling budget; and z-usage
            _, nll = masked_token_loss(word["out"], word["tgt"], word["mask"])
            loss = nll + kl + self.length_factor * length_loss
            prior = out["word_ins_prior_mean"]
            _, nll_prior = masked_token_loss(prior["out"], prior["tgt"], prior["mask"])
            log["z_usage"] = stat(nll_prior - nll)
        else:
            token_loss, nll = masked_token_loss(word["out"], word["tgt"], word["mask"], self.eps)
            loss = token_loss + kl_loss + self.length_factor * length_loss
        log.update({
            "loss": stat(loss),
            "nll_loss": stat(nll),
            "kl": stat(kl),
            "kl_loss": stat(kl_loss),
            "kl_budget": budget * nsentences,  # summed over workers, divided by nsentences
            "length_loss": stat(length_loss),
            "length_acc": stat(length_correct),
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": ntokens,
        })
        return loss, ntokens, log

    @staticmethod
    def reduce_metrics(logging_outputs):
        log_terms(logging_outputs, ["loss", "nll_loss", "kl", "kl_loss"])
        log_terms(logging_outputs, ["length_loss"], "nsentences")
        log_terms(logging_outputs, ["kl_budget"], "nsentences", base2=False)
        if any("z_usage" in log for log in logging_outputs):
            log_terms(logging_outputs, ["z_usage"], base2=False)  # nats per target token
        log_accuracy(logging_outputs, "length_acc")
        metrics.log_derived("ppl", lambda m: 2 ** m["nll_loss"].avg)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
