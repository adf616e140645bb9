"""``KDTrainer``: classic knowledge distillation from a frozen teacher (Hinton et al. 2015), the baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..losses import kd_kl_div
from .base import DistillationArguments, DistillationTrainer


@dataclass
class KDArguments(DistillationArguments):
    """Defaults follow the KD baseline of CRD/RepDistiller on CIFAR-100 (gamma 0.1, alpha 0.9, T 4)."""

    temperature_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    loss_weight_fields: ClassVar[tuple[str, ...]] = ("ce_weight", "kd_weight")

    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T of the KD term."})
    ce_weight: float = field(default=0.1, metadata={"help": "Weight of the cross-entropy on the labels."})
    kd_weight: float = field(default=0.9, metadata={"help": "Weight of T^2 * KL(teacher_T || student_T)."})


class KDTrainer(DistillationTrainer):
    """Classic knowledge distillation: the student matches the teacher's temperature-softened class probabilities.

    loss = ce_weight * CE(z_s, y) + kd_weight * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)).
    """

    args_class = KDArguments
    method_name = "kd"
    short_name = "KD (Hinton)"
    reference_preset = "kd_cifar100_resnet32x4_resnet8x4.yaml"
    method_title = "classic knowledge distillation (Hinton et al., 2015)"
    paper = "https://arxiv.org/abs/1503.02531"
    citation = """@article{hinton2015distilling,
  title={Distilling the Knowledge in a Neural Network},
  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal={arXiv preprint arXiv:1503.02531},
  year={2015}
}"""
    uses_teacher = "required"

    def method_loss(self, outputs, pixel_values, labels, **step):
        z = outputs.logits
        teacher = self.teacher_forward(pixel_values)
        terms = {"ce": F.cross_entropy(z, labels), "kd": kd_kl_div(z, teacher.logits, self.args.temperature)}
        return self.args.ce_weight * terms["ce"] + self.args.kd_weight * terms["kd"], terms


class SupervisedTrainer(DistillationTrainer):
    """Plain cross-entropy training of one backbone (teachers and no-distillation baselines), with the same data
    path, schedule, metrics and export as the distillation trainers (the base ``method_loss``)."""

    method_name = "supervised"
    short_name = "CE baseline"
    method_title = "supervised training (cross-entropy)"
    uses_teacher = "refused"
    recipe = "train_teacher"
    preset_prefix = "teacher_"
