"""The GradCache twin of InBatchDistillLoss, for ``cached_loss=True``: same value, same gradients.

sentence-transformers' CachedMultipleNegativesRankingLoss embeds the batch in mini-batches without
gradients, computes the loss on the cached embeddings and back-propagates it to them, then replays
each mini-batch with the cached gradients. This subclass adds the distillation term at the middle
step: it is computed on the same cached embeddings (one (batch, group) score matrix, small) and
its gradient is accumulated onto theirs before the replay.

Inputs and labels: as InBatchDistillLoss, (anchor, positive, negative_1, ..., negative_n) with
``label`` = [teacher(anchor, positive), teacher(anchor, negative_i)...].
"""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from app.training.losses.in_batch_distill import group_distill_loss, group_kl


class CachedInBatchDistillLoss(CachedMultipleNegativesRankingLoss):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 50.0,
        mini_batch_size: int = 32,
        distillation_weight: float = 1.0,
        teacher_temperature: float = 1.0,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(
            model,
            scale=scale,
            similarity_fct=cos_sim,
            mini_batch_size=mini_batch_size,
            gather_across_devices=gather_across_devices,
        )
        if not distillation_weight > 0:
            raise ValueError("distillation_weight must be positive")
        self.distillation_weight = distillation_weight
        self.distill = group_distill_loss(model, scale, teacher_temperature)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs the teacher scores as labels")
        contrastive = super().calculate_loss(reps, labels, with_backward=with_backward)
        embeddings = [torch.cat(column) for column in reps]
        distillation = self.distillation_weight * group_kl(self.distill, embeddings, labels)
        if with_backward:
            distillation.backward()  # adds to the cached embeddings' gradients
            distillation = distillation.detach()
        return contrastive + distillation

    @property
    def teacher_temperature(self) -> float:
        return self.distill.teacher_temperature

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "distillation_weight": self.distillation_weight,
            "teacher_temperature": self.teacher_temperature,
        }
