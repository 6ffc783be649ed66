"""In-batch contrastive loss plus knowledge distillation from a teacher's scores, on one set of embeddings.

    loss = MultipleNegativesRankingLoss(anchor vs. every passage of the batch)
         + distillation_weight * KL(softmax(teacher / teacher_temperature) || softmax(student / temperature))

The first term is the usual InfoNCE: each anchor against its positive, its own hard negatives and
every other row's passages (in-batch negatives). The second is sentence-transformers'
DistillKLDivLoss over each row's own group (positive + hard negatives), with the student's scores
computed exactly as in the first term (cosine / temperature), so the student distribution it
matches to the teacher is the contrastive softmax restricted to that group.

The columns are embedded once and both terms read the same embeddings.

DistillKLDivLoss multiplies its KL by student_temperature**2 (Hinton's rescaling, meant for
temperatures >= 1). With the contrastive temperature (0.02 by default) that would shrink the term
to nothing, so it is divided back out: the KL is in the same units as the contrastive
cross-entropy, and ``distillation_weight=1`` with ``teacher_temperature=1`` is FlagEmbedding's
``kd_loss_type="kl_div"`` (in-batch cross-entropy + cross-entropy to the teacher's group softmax,
which differs from the KL only by the teacher's entropy, a constant).

Inputs:
    +-------------------------------------------------+------------------------------------------------------------+
    | Inputs                                          | Labels (column ``label``)                                  |
    +=================================================+============================================================+
    | (anchor, positive, negative_1, ..., negative_n) | [teacher(anchor, positive), teacher(anchor, negative_i)...]|
    +-------------------------------------------------+------------------------------------------------------------+

At least one negative column is needed (a softmax over one candidate carries nothing to distill).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim, pairwise_cos_sim
from torch import Tensor, nn


def group_distill_loss(model: nn.Module, scale: float, teacher_temperature: float) -> DistillKLDivLoss:
    """DistillKLDivLoss whose student scores are the contrastive loss's: cosine / (1 / scale)."""
    return DistillKLDivLoss(
        model,
        similarity_fct=pairwise_cos_sim,
        student_temperature=1.0 / scale,
        teacher_temperature=teacher_temperature,
    )


def group_kl(distill: DistillKLDivLoss, embeddings: list[Tensor], labels: Tensor) -> Tensor:
    """KL(teacher || student) over each row's group (batch mean), without the student_temperature**2 factor."""
    kl = distill.compute_loss_from_embeddings(embeddings, labels.float())
    return kl / distill.student_temperature**2


class InBatchDistillLoss(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 50.0,
        distillation_weight: float = 1.0,
        teacher_temperature: float = 1.0,
        gather_across_devices: bool = False,
    ) -> None:
        """
        Args:
            model: the student SentenceTransformer.
            scale: 1 / temperature of the contrastive softmax; the student's group softmax uses the same.
            distillation_weight: weight of the KL term relative to the contrastive cross-entropy.
            teacher_temperature: the teacher's scores are divided by this before their softmax.
            gather_across_devices: the contrastive term's negatives are every DDP rank's passages; the KL
                term reads each row's own group, which is on its rank already.
        """
        super().__init__()
        if not distillation_weight > 0:
            raise ValueError("distillation_weight must be positive")
        self.model = model
        self.distillation_weight = distillation_weight
        self.contrastive = MultipleNegativesRankingLoss(
            model, scale=scale, similarity_fct=cos_sim, gather_across_devices=gather_across_devices
        )
        self.distill = group_distill_loss(model, scale, teacher_temperature)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.compute_loss_from_embeddings(embed_columns(self.model, sentence_features), labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        """embeddings: [anchor, positive, negative_1, ...], each (batch, dim); labels: (batch, 1 + n_negatives)."""
        return self.contrastive_loss(embeddings) + self.distillation_weight * self.distillation_loss(embeddings, labels)

    def contrastive_loss(self, embeddings: list[Tensor]) -> Tensor:
        return self.contrastive.compute_loss_from_embeddings(embeddings, None)

    def distillation_loss(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        return group_kl(self.distill, embeddings, labels)

    @property
    def scale(self) -> float:
        return self.contrastive.scale

    @property
    def temperature(self) -> float:
        return self.contrastive.temperature

    @property
    def teacher_temperature(self) -> float:
        return self.distill.teacher_temperature

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "similarity_fct": "cos_sim",
            "distillation_weight": self.distillation_weight,
            "teacher_temperature": self.teacher_temperature,
        }
