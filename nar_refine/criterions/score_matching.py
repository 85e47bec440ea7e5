"""Training objective of the score and energy inference networks (Lee, Shu & Cho 2020).

For start points z drawn around the prior of a frozen LaNMT, z = mu(x) + u * s * sigma(x) * eps
with u ~ U(0, 1) drawn once per batch (the reference, zomux/lanmt-ebm: the network also sees
starts at and near the prior mean, where inference starts), and the delta-inference target
delta = z_k - z (k steps z -> argmax y -> E_q[z|x,y]; k = 4 as in the reference),

    L = sum_i ( ||S_i||^2 - 2 <S_i, delta_i> ) / N      = sum_i ||S_i - delta_i||^2 / N - const

over the N real latent (source) positions i of the batch, S_i = S(z; x)_i in R^d. The loss is
normalised per latent position (``sample_size`` = N), not per target token: the network
regresses one d-vector per source position. The logged ``loss`` sums the d dimensions; the
backpropagated one is their mean (the same Adam updates, 1/d of the gradient: headroom for
fp16 loss scaling). The equivalent squared error
``mse`` = ||S - delta||^2 and the cosine similarity of S and delta (mean over positions) are
logged beside it, as is ||delta||^2 (the constant the two losses differ by) and, in training,
``start_scale`` (u * s of the batch).

Validation starts every sentence at the prior mean (u = 0, as the reference validates): the
valid ``cosine`` is cos(S, delta) where inference starts, and checkpoints are selected there.

The recipe of nar_refine 0.1: ``--noise-scale-draw fixed --delta-steps 1``.
For ``energy_net`` S = -dE/dz, built with ``create_graph`` so the loss reaches E's weights.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from nar_refine.criterions.token_loss import stat
from nar_refine.errors import NARConfigError
from nar_refine.models.inference_network import SCALE_DRAWS, ScorePlan


@dataclass
class ScoreMatchingConfig(FairseqDataclass):
    noise_scale: float = field(
        default=1.0,
        metadata={"help": "s: training start points z = mu + u * s * sigma * eps under the LaNMT "
                  "prior (0: the prior mean only, where inference starts)"},
    )
    noise_scale_draw: ChoiceEnum(list(SCALE_DRAWS)) = field(
        default="uniform",
        metadata={"help": "u of the start points: uniform = u ~ U(0, 1) drawn once per batch (the "
                  "reference; starts at and near the prior mean); fixed = u = 1 (every start "
                  "about sqrt(d) * s * sigma from the mean; nar_refine 0.1's recipe)"},
    )
    delta_steps: int = field(
        default=4,
        metadata={"help": "k: steps of delta inference from z that define the target delta = z_k - z "
                  "(4 in the reference runs; 1 in nar_refine 0.1)"},
    )


@register_criterion("score_matching", dataclass=ScoreMatchingConfig)
class ScoreMatchingCriterion(FairseqCriterion):
    def __init__(self, task, noise_scale, noise_scale_draw, delta_steps):
        super().__init__(task)
        if not noise_scale >= 0:  # also refuses nan
            raise NARConfigError(f"--noise-scale must be >= 0, got {noise_scale}")
        if delta_steps < 1:
            raise NARConfigError(f"--delta-steps must be >= 1, got {delta_steps}")
        self.plan = ScorePlan(noise_scale=noise_scale, scale_draw=str(noise_scale_draw),
                              delta_steps=delta_steps)
        # validation: every start at the prior mean, where inference starts
        self.valid_plan = ScorePlan(noise_scale=0.0, scale_draw="fixed", delta_steps=delta_steps)

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        plan = self.plan if model.training else self.valid_plan
        out = model(net["src_tokens"], net["src_lengths"], plan=plan)["score"]
        mask = out["mask"]
        score, delta = out["out"][mask].float(), out["tgt"][mask].float()  # N x d
        loss = (score.pow(2).sum(-1) - 2 * (score * delta).sum(-1)).sum()
        npos = mask.sum()  # a tensor: no host sync
        with torch.no_grad():
            delta_sq = delta.pow(2).sum(-1)
            log = {
                "loss": stat(loss),
                "mse": stat((score - delta).pow(2).sum()),
                "delta_sq": stat(delta_sq.sum()),
                # a zero target (delta inference already at its fixed point) has no direction
                "cosine": stat(F.cosine_similarity(score, delta, dim=-1, eps=1e-8).sum()),
                "ntokens": npos,
                "nsentences": net["src_tokens"].size(0),
                "sample_size": npos,
            }
            if model.training:
                log["start_scale"] = out["start_scale"] * npos  # u * s of this batch
        # backpropagated: the mean over the d latent dimensions (the logged loss stays the sum).
        # fp16 training scales this summed loss; summed over dimensions its gradient on the output
        # layer was ~17x a Transformer's (score network) and 5x (energy), which capped fairseq's
        # loss scale; per dimension it is ~2x and <1x. Adam's updates do not change with it.
        return loss / score.size(-1), npos, log

    @staticmethod
    def reduce_metrics(logging_outputs):
        npos = sum(log.get("sample_size", 0) for log in logging_outputs)
        for key in ("loss", "mse", "delta_sq", "cosine", "start_scale"):
            if key == "start_scale" and not any(key in log for log in logging_outputs):
                continue  # validation: no drawn scale
            total = sum(log.get(key, 0) for log in logging_outputs)
            metrics.log_scalar(key, total / max(npos, 1), npos, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
