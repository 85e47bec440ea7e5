"""Training objective of LaNMT (Shu et al. 2020, eq. 3 with free bits):

    J = sum_t -log p(y_t | z, x)  +  sum_i max(KL_i, b)  +  lambda_len * -log p(T | z, x),
    z ~ q(z | x, y) (one reparameterised sample),  KL_i = KL(q(z_i|x,y) || p(z_i|x)) summed over
    the latent dims of source position i,  b = the KL budget ("free bits") per position.

Scaling. The reference code sums NLL and KL per sentence and averages over sentences. fairseq
divides the summed loss by ``sample_size``; we return the number of target tokens, as
fairseq's ``nat_loss`` does, so the NLL is a per-token average. The KL is summed over all
source positions of the batch and divided by the same number, so J / ntokens = -ELBO / ntokens
(+ length term): the NLL:KL ratio of the ELBO is kept exactly, and only the overall step size
differs from the reference (by batch size / ntokens, which the learning rate absorbs). For the
same reason ``kl`` (the unclamped KL) and ``kl_loss`` (the clamped term actually optimised)
are logged per target token, in bits like ``nll_loss``; ``loss`` = nll_loss + kl_loss +
factor * length term (per token). ``kl_budget`` logs the current budget b (nats per position).

Budget schedule: b = ``--kl-budget`` for the first ``--kl-budget-hold-updates`` updates, then
falls linearly to 0 over ``--kl-budget-anneal-updates`` updates, then stays 0 (the short
fine-tune with budget 0). Defaults follow the paper: hold for half of ``--max-update``, anneal
over the next 40%, budget 0 for the last 10%.
"""

import logging
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from nar_refine.criterions.token_loss import item, log_accuracy, log_terms, masked_token_loss

logger = logging.getLogger(__name__)


@dataclass
class LaNMTELBOConfig(FairseqDataclass):
    kl_budget: float = field(
        default=1.0,
        metadata={"help": "free bits: KL budget per source position (nats); each position's KL "
                  "term is max(KL, budget) during the hold phase"},
    )
    kl_budget_hold_updates: int = field(
        default=-1,
        metadata={"help": "updates trained with the full KL budget; -1: half of --max-update"},
    )
    kl_budget_anneal_updates: int = field(
        default=-1,
        metadata={"help": "updates over which the budget then falls linearly to 0 (after which "
                  "it stays 0); -1: 40%% of --max-update"},
    )
    length_loss_factor: float = field(
        default=0.1, metadata={"help": "weight of the length-prediction loss -log p(T|z,x)"}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing on token losses"})
    max_update: int = II("optimization.max_update")
    stop_time_hours: float = II("optimization.stop_time_hours")


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
                 length_loss_factor, label_smoothing, max_update=0, stop_time_hours=0):
        super().__init__(task)
        if kl_budget < 0:
            raise ValueError("--kl-budget must be >= 0")
        max_update = max_update or 0
        if max_update <= 0 and (kl_budget_hold_updates < 0 or kl_budget_anneal_updates < 0):
            # no training length to take fractions of: keep the budget until told otherwise
            logger.warning("lanmt_elbo: --max-update not set, so the KL budget schedule needs "
                           "--kl-budget-hold-updates and --kl-budget-anneal-updates; keeping "
                           "budget %s throughout", kl_budget)
            hold, anneal = float("inf"), 0
        else:
            hold = kl_budget_hold_updates if kl_budget_hold_updates >= 0 else max_update // 2
            anneal = (kl_budget_anneal_updates if kl_budget_anneal_updates >= 0
                      else int(0.4 * max_update))
            if (stop_time_hours or 0) > 0 and (kl_budget_hold_updates < 0 or kl_budget_anneal_updates < 0):
                logger.warning("lanmt_elbo: the KL budget schedule is taken from --max-update %d "
                               "(budget %s until update %d, 0 from update %d), but --stop-time-hours "
                               "may end training first; set --kl-budget-hold-updates and "
                               "--kl-budget-anneal-updates to the updates the time allows",
                               max_update, kl_budget, hold, hold + anneal)
        self.budget, self.hold, self.anneal = kl_budget, hold, anneal
        self.length_factor = length_loss_factor
        self.eps = label_smoothing
        self.update_num = 0

    def set_update_num(self, update_num):
        self.update_num = update_num

    def current_budget(self):
        return kl_budget_at(self.update_num, self.budget, self.hold, self.anneal)

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        out = model(net["src_tokens"], net["src_lengths"], net.get("prev_output_tokens"),
                    tgt_tokens=sample["target"])
        word = out["word_ins"]
        token_loss, nll = masked_token_loss(word["out"], word["tgt"], word["mask"], self.eps)
        budget = self.current_budget()
        kl_pos, kl_mask = out["kl"]["out"], out["kl"]["mask"]
        kl = kl_pos[kl_mask].sum()
        kl_loss = kl_pos[kl_mask].clamp(min=budget).sum()  # free bits: max(KL_i, b)
        length = out["length"]
        length_loss = F.cross_entropy(length["out"], length["tgt"], reduction="sum")
        length_correct = (length["out"].argmax(-1) == length["tgt"]).sum()

        loss = token_loss + kl_loss + self.length_factor * length_loss
        ntokens = int(word["mask"].sum())
        nsentences = sample["target"].size(0)
        log = {
            "loss": item(loss),
            "nll_loss": item(nll),
            "kl": item(kl),
            "kl_loss": item(kl_loss),
            "kl_budget": budget * nsentences,  # summed over workers, divided by nsentences
            "length_loss": item(length_loss),
            "length_acc": item(length_correct),
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": ntokens,
        }
        return loss, ntokens, log

    @staticmethod
    def reduce_metrics(logging_outputs):
        log_terms(logging_outputs, ["loss", "nll_loss", "kl", "kl_loss"])
        log_terms(logging_outputs, ["length_loss"], "nsentences")
        log_terms(logging_outputs, ["kl_budget"], "nsentences", base2=False)
        log_accuracy(logging_outputs, "length_acc")
        metrics.log_derived("ppl", lambda m: 2 ** m["nll_loss"].avg)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
