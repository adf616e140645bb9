"""``FFSDTrainer``: online distillation with feature fusion and self-distillation (Li et al., "Distilling a Powerful
Student Model via Online Knowledge Distillation", IEEE TNNLS 2022, arXiv 2103.14473; official code SJLeo/FFSD).

No pre-trained teacher. M common students (default 2) and one separate **leader** of the same architecture train
together (docs/methods/ffsd.md):

- the common students learn from the labels and from each other (DML); student m >= 1 also gets the diversity loss
  against student m-1's attention and a self-distillation term through decoder m fed with student m-1's shifted map;
- a fusion module fuses the students' detached last maps and learns from the labels and the students' ensemble;
- the leader (the model passed in, the one exported) learns from the labels, from the fusion module's logits (KD) and
  maps (attention), through its trans-fusion branch from the fusion module's input, and from its own decoder fed with
  the fused map;
- the decoders learn to reconstruct their network's shallow stages from its deepest map (their own objective, Adam).

Every cross-network target is detached, so one backward through the sum of all objectives gives each module the
gradient the official sequential scheme gives it (docs/methods/ffsd.md, "One backward"). The per-module optimizer
settings are kept by a ``CompositeOptimizer`` (``hf_kd.optim``): SGD (Nesterov) over the networks (weight decay
1e-4, fusion module 1e-5) and Adam over the decoders, all driven by the Trainer's one learning-rate schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers.training_args import OptimizerNames

from ..arguments import DistillationArguments
from ..losses.ffsd import ffsd_losses, lambda_warmup
from ..metrics import ClassificationMetrics
from ..models import TimmStudent
from ..modules.base import DistillationModel
from ..modules.ffsd import FFSDModel, FFSDOutput
from ..optim import CompositeOptimizer
from .base import DistillationTrainer, own_parameter_groups

__all__ = ["FFSDArguments", "FFSDModel", "FFSDTrainer", "FFSDMetrics"]


@dataclass
class FFSDArguments(DistillationArguments):
    """Defaults follow SJLeo/FFSD ``options/options.py`` and the README command (CIFAR-100)."""

    temperature_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    loss_weight_fields: ClassVar[tuple[str, ...]] = ("lambda_diversity", "lambda_fusion", "lambda_self_distillation")
    unweighted_loss_terms: ClassVar[tuple[str, ...]] = ("cross-entropy of every network",)
    minimum_values: ClassVar[dict[str, float]] = {"num_students": 2, "lambda_warmup_epochs": 0,
                                                  "fusion_weight_decay": 0, "decoder_learning_rate": 0,
                                                  "decoder_weight_decay": 0}

    num_students: int = field(default=2, metadata={
        "help": "M, common students trained beside the leader (official --model_num 2). Needs >= 2 (DML)."})
    temperature: float = field(default=2.0, metadata={"help": "T of the DML and KD terms (official 2)."})
    lambda_diversity: float = field(default=1e-5, metadata={
        "help": "lambda_div: weight of the students' diversity and self-distillation terms (official 1e-5)."})
    lambda_fusion: float = field(default=10.0, metadata={
        "help": "lambda_fusion: weight of the leader's fusion, trans-fusion and self-distillation terms (10)."})
    lambda_self_distillation: float = field(default=1000.0, metadata={
        "help": "lambda_sd: weight of the decoders' reconstruction objective (official 1000)."})
    lambda_warmup_epochs: int = field(default=5, metadata={
        "help": "The three lambdas ramp up as exp(-5 (1 - e/E)^2) over 1-based epochs e <= E (official 5)."})
    fusion_weight_decay: float = field(default=1e-5, metadata={
        "help": "Weight decay of the fusion module's SGD group (official 1e-5)."})
    decoder_learning_rate: float = field(default=1e-3, metadata={
        "help": "Adam learning rate of the self-distillation decoders (official: Adam's default 1e-3); follows the "
                "same schedule as the networks (with imagenet_lr_schedule: its own per-epoch milestones)."})
    decoder_weight_decay: Optional[float] = field(default=None, metadata={
        "help": "Adam (L2) weight decay of the decoders; default: weight_decay, as the official code."})
    imagenet_lr_schedule: bool = field(default=False, metadata={
        "help": "The official ImageNet trainer's schedule (with lr_milestones, warmup_epochs): the networks' lr is "
                "set per step from the 1-based epoch e and batch index i, x lr_gamma per milestone <= e, and x (1 + i "
                "+ e*L) / (warmup_epochs*L) while e < warmup_epochs (L = training examples // global batch); the "
                "decoders keep the per-epoch milestones on the 0-based epoch and no warm-up (their MultiStepLR)."})
    # FFSD's optimizer for the networks (official: SGD lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4)
    learning_rate: float = field(default=0.1, metadata={"help": "SGD learning rate of the students, leader and "
                                                                "fusion module."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of the students, leader and its "
                                                                "trans-fusion branch."})
    optim: Union[OptimizerNames, str] = field(default="sgd", metadata={"help": "Optimizer of the networks."})
    optim_args: Optional[str] = field(default="momentum=0.9,nesterov=True", metadata={"help": "Its arguments."})


class FFSDMetrics(ClassificationMetrics):
    """Top-1/top-5 of every head (leader first, students 0..M-1, fusion module, ``ensemble`` = the students' mean
    logits) and the two student summaries of the official test log:

    - ``students_average_top{k}``: the mean of the common students' accuracies (official "Average Acc");
    - ``students_oracle_top{k}``: a sample counts when *any* common student ranks its label in its top k. The official
      ``utils.ensemble_accuracy`` (printed as "Ensemble Acc") adds the students' boolean hit masks, which is this
      logical OR; it is an upper bound, not an ensemble prediction, hence the separate name.
    """

    def __init__(self, head_names: Sequence[str], num_students: int, num_labels: Optional[int] = None):
        super().__init__(head_names, num_labels)
        self.num_students = num_students

    def __call__(self, eval_pred) -> dict:
        out = super().__call__(eval_pred)
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, (tuple, list)) else \
            eval_pred.predictions
        ranked, labels = np.asarray(preds)[:, 1:1 + self.num_students], np.asarray(eval_pred.label_ids)
        for k in self.ks:
            hits = (ranked[..., :k] == labels[:, None, None]).any(-1)  # (N, M): student m has the label in its top k
            out[f"students_average_top{k}"] = float(hits.mean())
            out[f"students_oracle_top{k}"] = float(hits.any(1).mean())
        return out


_LAMBDAS = ("lambda_diversity", "lambda_fusion", "lambda_self_distillation")


class FFSDTrainer(DistillationTrainer):
    """FFSD: M common students, a fusion module, and a leader (the model passed in, the one exported).

    Evaluation reports the leader as ``top1``/``top5`` and ``student{m}_top1``, ``fusion_top1``, ``ensemble_top1``
    (mean of the common students' logits) beside it, plus the official log's student average and any-student
    ("oracle") accuracies (``FFSDMetrics``). The lambdas warm up per epoch from the 1-based epoch at the start of the
    epoch, as the official ``lambda_warmup``.
    """

    args_class = FFSDArguments
    method_name = "ffsd"
    short_name = "FFSD (leader)"
    reference_preset = "ffsd_cifar100_resnet32.yaml"
    paper = "https://arxiv.org/abs/2103.14473"
    method_title = ("Distilling a Powerful Student Model via Online Knowledge Distillation (FFSD; Li et al., "
                    "IEEE TNNLS 2022)")
    citation = """@article{li2022distilling,
  title={Distilling a Powerful Student Model via Online Knowledge Distillation},
  author={Li, Shaojie and Lin, Mingbao and Wang, Yan and Wu, Yongjian and Tian, Yonghong and Shao, Ling and
          Ji, Rongrong},
  journal={IEEE Transactions on Neural Networks and Learning Systems},
  year={2022},
  doi={10.1109/TNNLS.2022.3152732}
}"""

    uses_teacher = "refused"  # online distillation: the students, the fusion module and the leader teach each other

    def __init__(self, model=None, args: FFSDArguments = None, **kwargs):
        if isinstance(model, DistillationModel) and not isinstance(model, FFSDModel):
            raise TypeError(f"FFSDTrainer needs a TimmStudent (the leader) or an FFSDModel, got {type(model).__name__}")
        super().__init__(model=model, args=args, **kwargs)
        if self.ffsd_model.num_students != self.args.num_students:
            raise ValueError(f"The FFSDModel has {self.ffsd_model.num_students} common students but num_students is "
                             f"{self.args.num_students}")

    def build_model(self, student: TimmStudent, args: FFSDArguments, teacher=None) -> FFSDModel:
        return FFSDModel.build(student, args.num_students)

    def build_metrics(self, model: FFSDModel) -> "FFSDMetrics":
        return FFSDMetrics(model.head_names, model.num_students, model.student.config.num_labels)

    @property
    def ffsd_model(self) -> FFSDModel:
        return self.accelerator.unwrap_model(self.model)

    def used_hyperparameters(self) -> dict:
        a = self.args
        return {**super().used_hyperparameters(),
                "decoder_weight_decay": a.weight_decay if a.decoder_weight_decay is None else a.decoder_weight_decay}

    # --- optimizer: SGD over the networks, Adam over the decoders, one schedule ---------------------------------------
    def create_optimizer(self, model=None):
        """Official per-module optimizers as one ``CompositeOptimizer``: ``optim`` (SGD Nesterov) over the leader, its
        trans-fusion branch and the students (``weight_decay``) and over the fusion module (``fusion_weight_decay``);
        Adam over the decoders (``decoder_learning_rate``, ``decoder_weight_decay``)."""
        if self.optimizer is None:
            m = self.accelerator.unwrap_model(self.model if model is None else model)
            a = self.args
            cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(a, m)
            if not own_parameter_groups(cls, kwargs):
                raise ValueError(f"FFSDTrainer builds the official per-module optimizers (SGD over the networks, Adam "
                                 f"over the decoders); the chosen optimizer ({getattr(cls, '__name__', cls)}) brings "
                                 f"its own parameters or is a factory and cannot be one of them. Choose a "
                                 f"torch.optim class with --optim (e.g. sgd).")
            networks = self.param_groups(m, ("student.", "aux.students.", "aux.trans_fusion.")) + \
                self.param_groups(m, ("aux.fusion.",), a.fusion_weight_decay)
            dec_wd = a.weight_decay if a.decoder_weight_decay is None else a.decoder_weight_decay
            decoders = self.param_groups(m, ("aux.decoders.", "aux.leader_decoder."), dec_wd,
                                         lr=a.decoder_learning_rate)
            covered = sum(len(g["params"]) for g in networks + decoders)
            if covered != sum(1 for p in m.parameters() if p.requires_grad):
                raise RuntimeError("FFSDTrainer.create_optimizer: some trainable parameters are in no group")
            self.optimizer = CompositeOptimizer([cls(networks, **kwargs),
                                                 torch.optim.Adam(decoders, lr=a.decoder_learning_rate)])
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """``imagenet_lr_schedule``: one lr factor for the networks' SGD groups, another for the decoders' Adam
        groups (the official ImageNet trainer sets the first per iteration, steps the second's MultiStepLR per
        epoch); otherwise the Trainer's one schedule for all."""
        a = self.args
        if not a.imagenet_lr_schedule:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            if not a.lr_milestones or a.lr_decay != "step":
                raise ValueError("--imagenet_lr_schedule needs --lr_milestones (the decoders' MultiStepLR epochs)")
            opt = optimizer or self.optimizer
            spe, milestones, gamma, warm = self.steps_per_epoch(), sorted(a.lr_milestones), a.lr_gamma, a.warmup_epochs
            # the official len_epoch: dataset size // batch size, not the loader's (ceil) length
            per_epoch = len(self.train_dataset) // (a.per_device_train_batch_size * max(1, a.world_size) *
                                                   a.gradient_accumulation_steps)

            def networks(step: int) -> float:
                epoch, i = step // spe + 1, step % spe  # 1-based epoch, batch index
                f = gamma ** sum(epoch >= m for m in milestones)
                return f * ((1 + i + epoch * per_epoch) / (warm * per_epoch)) if epoch < warm else f

            def decoders(step: int) -> float:
                return gamma ** sum(step // spe >= m for m in milestones)

            n_networks = len(opt.optimizers[0].param_groups)
            self.lr_scheduler = LambdaLR(opt, [networks] * n_networks +
                                         [decoders] * (len(opt.param_groups) - n_networks))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # --- loss ---------------------------------------------------------------------------------------------------------
    def lambdas(self, epoch: int) -> dict[str, float]:
        """The warmed-up lambdas for the 1-based ``epoch``."""
        a = self.args
        return {k: lambda_warmup(getattr(a, k), epoch, a.lambda_warmup_epochs) for k in _LAMBDAS}

    def _lambda_epoch(self) -> int:
        return int(self.state.epoch or 0) + 1  # 1-based epoch at the epoch start, as the official lambda_warmup

    def step_inputs(self, batch_size: int, device) -> dict:
        """The warmed-up lambdas of this epoch."""
        return {"lambdas": self.lambdas(self._lambda_epoch())}

    def method_loss(self, outputs: FFSDOutput, pixel_values, labels, lambdas=None, **step):
        return ffsd_losses(outputs, labels, self.args.temperature, **lambdas)
