"""``ProjectorKDTrainer``: PEFD, feature distillation through a projector ensemble (Chen et al., NeurIPS 2022).

The student's pooled penultimate feature goes through q = 3 projectors Linear(d_s, d_t) + ReLU whose outputs are
averaged (``hf_kd.modules.projector_kd.ProjectorEnsemble``); the result is pulled towards the frozen teacher's pooled
penultimate feature with 1 - cosine (``hf_kd.losses.projector_kd.projector_cosine_loss``). Total, as chenyd7/PEFD
``helper/loops.py``:

    loss = gamma * CE(z_s, y) + alpha * T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + beta * L_PE

with gamma = ``ce_weight`` = 1, alpha = ``kd_weight`` = 0 and beta = ``feature_weight`` = 25 (``scripts/run_cifar.sh``,
``-a 0 -b 25``), T = 4. The projectors live in the ``DistillationModel`` (trained with the student, in the same
optimizer group, saved in checkpoints) and are never exported; the teacher is frozen, in eval mode, outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..arguments import DistillationArguments
from ..losses.kd import kd_kl_div
from ..losses.projector_kd import projector_cosine_loss
from ..models import TimmStudent
from ..modules.projector_kd import ProjectorEnsemble, ProjectorKDModel, ProjectorKDOutput
from .base import DistillationTrainer

__all__ = ["ProjectorKDArguments", "ProjectorKDModel", "ProjectorKDTrainer"]


@dataclass
class ProjectorKDArguments(DistillationArguments):
    """Defaults follow chenyd7/PEFD ``scripts/run_cifar.sh`` (``--distill ours -a 0 -b 25``, gamma 1, kd_T 4)."""

    temperature_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    loss_weight_fields: ClassVar[tuple[str, ...]] = ("ce_weight", "kd_weight", "feature_weight")
    minimum_values: ClassVar[dict[str, float]] = {"num_projectors": 1}

    num_projectors: int = field(default=3, metadata={
        "help": "Number q of projectors Linear(d_s, d_t)+ReLU in the ensemble, averaged after the ReLU (PEFD: 3)."})
    ce_weight: float = field(default=1.0, metadata={"help": "gamma: weight of the cross-entropy on the labels."})
    kd_weight: float = field(default=0.0, metadata={
        "help": "alpha: weight of the optional logit KD term T^2 * KL(teacher_T || student_T) (PEFD CIFAR: 0)."})
    feature_weight: float = field(default=25.0, metadata={
        "help": "beta: weight of the projector-ensemble loss 1 - cos(projected student, teacher feature)."})
    temperature: float = field(default=4.0, metadata={"help": "Softmax temperature T of the optional KD term."})


class ProjectorKDTrainer(DistillationTrainer):
    """PEFD: the student's pooled feature, through an ensemble of projectors, matches the teacher's (cosine).

    loss = ce_weight * CE + kd_weight * T^2 KL + feature_weight * mean_b(1 - cos(g(f_s)_b, f_t,b)).
    d_s and d_t are measured on the models (dry run), so they may differ or be equal; a teacher is required.
    """

    args_class = ProjectorKDArguments
    method_name = "projector_kd"
    short_name = "PEFD"
    reference_preset = "projector_kd_cifar100_resnet32x4_resnet8x4.yaml"
    method_title = "Improved Feature Distillation via Projector Ensemble (Chen et al., NeurIPS 2022)"
    paper = "https://arxiv.org/abs/2210.15274"
    citation = """@inproceedings{chen2022improved,
  title={Improved Feature Distillation via Projector Ensemble},
  author={Chen, Yudong and Wang, Sen and Liu, Jiajun and Xu, Xuwei and de Hoog, Frank and Huang, Zi},
  booktitle={Advances in Neural Information Processing Systems},
  year={2022}
}"""

    uses_teacher = "required"

    def build_model(self, student: TimmStudent, args: ProjectorKDArguments, teacher=None) -> ProjectorKDModel:
        return ProjectorKDModel.build(student, teacher, args.num_projectors)

    @property
    def projectors(self) -> ProjectorEnsemble:
        return self.accelerator.unwrap_model(self.model).aux["projectors"]

    def method_loss(self, outputs: ProjectorKDOutput, pixel_values, labels, **step):
        z = outputs.logits
        teacher = self.teacher_forward(pixel_values)
        a = self.args
        terms = {"ce": F.cross_entropy(z, labels),
                 "feature": projector_cosine_loss(outputs.projected, teacher.pre_logits)}
        loss = a.ce_weight * terms["ce"] + a.feature_weight * terms["feature"]
        if a.kd_weight:  # the official code computes it always but weights it 0 on CIFAR; skip the dead work
            terms["kd"] = kd_kl_div(z, teacher.logits, a.temperature)
            loss = loss + a.kd_weight * terms["kd"]
        return loss, terms
