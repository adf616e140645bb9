"""``FFSDTrainer``: online distillation with feature fusion and self-distillation (Li et al., "Distilling a Powerful
Student Model via Online Knowledge Distillation", IEEE TNNLS 2022, arXiv 2103.14473; official code SJLeo/FFSD).

No pre-trained teacher. M common students (default 2) and one separate **leader** of the same architecture train
together (METHODS.md section 1):

- the common students learn from the labels and from each other (DML); student m >= 1 also gets the diversity loss
  against student m-1's attention and a self-distillation term through decoder m fed with student m-1's shifted map;
- a fusion module fuses the students' detached last maps and learns from the labels and the students' ensemble;
- the leader (the model passed in, the one exported) learns from the labels, from the fusion module's logits (KD) and
  maps (attention), through its trans-fusion branch from the fusion module's input, and from its own decoder fed with
  the fused map;
- the decoders learn to reconstruct their network's shallow stages from its deepest map (their own objective, Adam).

Every cross-network target is detached, so one backward through the sum of all objectives gives each module the
gradient the official sequential scheme gives it (METHODS 1.4). The per-module optimizer settings are kept by a
``CompositeOptimizer``: SGD (Nesterov) over the networks (weight decay 1e-4, fusion module 1e-5) and Adam over the
decoders, all driven by the Trainer's one learning-rate schedule.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.training_args import OptimizerNames

from ..losses.ffsd import diversity_target, ffsd_losses, lambda_warmup
from ..metrics import ClassificationMetrics
from ..models import TimmStudent
from ..models.student import MissingStagesError
from ..modules.ffsd import FusionModule, SelfDistillationDecoder, TransFusionModule
from .base import DistillationArguments, DistillationModel, DistillationTrainer

__all__ = ["FFSDArguments", "FFSDModel", "FFSDTrainer", "FFSDMetrics", "CompositeOptimizer"]


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
                "same schedule as the networks."})
    decoder_weight_decay: Optional[float] = field(default=None, metadata={
        "help": "Adam (L2) weight decay of the decoders; default: weight_decay, as the official code."})
    # FFSD's optimizer for the networks (official: SGD lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4)
    learning_rate: float = field(default=0.1, metadata={"help": "SGD learning rate of the students, leader and "
                                                                "fusion module."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay of the students, leader and its "
                                                                "trans-fusion branch."})
    optim: Union[OptimizerNames, str] = field(default="sgd", metadata={"help": "Optimizer of the networks."})
    optim_args: Optional[str] = field(default="momentum=0.9,nesterov=True", metadata={"help": "Its arguments."})


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module):
    """Run ``modules`` in eval mode (BN running statistics) and restore their modes afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class FFSDModel(DistillationModel):
    """The leader (``student``, exported) and ``aux``: ``students`` (M common students), ``trans_fusion`` (the
    leader's branch), ``fusion`` (fusion module), ``decoders`` (M-1, for students 1..M-1) and ``leader_decoder``.

    Feature maps are the last 3 stages of ``forward_kd(...).stages``: for cifar_resnet* layer1/2/3, for cifar_wrn_*
    block1, block2 and relu(bn(block3)) -- the maps the official code hooks.
    """

    def __init__(self, student: TimmStudent, students: Sequence[TimmStudent], trans_fusion: TransFusionModule,
                 fusion: FusionModule, decoders: Sequence[SelfDistillationDecoder],
                 leader_decoder: SelfDistillationDecoder):
        super().__init__(student, students=nn.ModuleList(students), trans_fusion=trans_fusion, fusion=fusion,
                         decoders=nn.ModuleList(decoders), leader_decoder=leader_decoder)
        if len(students) < 2 or len(decoders) != len(students) - 1:
            raise ValueError(f"FFSD needs >= 2 common students and one decoder for each but the first, got "
                             f"{len(students)} students and {len(decoders)} decoders")

    @classmethod
    def build(cls, leader: TimmStudent, num_students: int = 2) -> "FFSDModel":
        """Common students are fresh ``TimmStudent``s of the leader's config (each with timm's own init); module
        shapes come from the leader's last 3 stages (channels C_1..C_3, spatial S_1..S_3)."""
        if num_students < 2:
            raise ValueError(f"FFSD needs num_students >= 2, got {num_students}")
        shapes = leader.require_stages(3, "FFSD")
        (c1, h1, w1), (c2, h2, w2), (c3, h3, w3) = shapes
        if (h2, w2) != (2 * h3, 2 * w3) or (h1, w1) != (2 * h2, 2 * w2):
            raise MissingStagesError(
                f"FFSD's self-distillation decoders double the spatial size at each step, so the last 3 stages must "
                f"halve it (S, S/2, S/4); architecture '{leader.architecture}' gives {shapes}. Use a backbone with "
                "stride-2 stages such as cifar_resnet32 or cifar_wrn_16_2.")
        if h3 * w3 < 3:
            raise MissingStagesError(f"FFSD's diversity loss needs a last stage of at least 3 positions; "
                                     f"'{leader.architecture}' gives {h3}x{w3} at this input size.")
        students = [TimmStudent(copy.deepcopy(leader.config)) for _ in range(num_students)]
        return cls(leader, students, TransFusionModule(c3, num_students),
                   FusionModule(c3, leader.config.num_labels, num_students),
                   [SelfDistillationDecoder((c3, c2, c1)) for _ in range(num_students - 1)],
                   SelfDistillationDecoder((c3, c2, c1)))

    @property
    def num_students(self) -> int:
        return len(self.aux["students"])

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """Training: every tensor the FFSD objectives need (``hf_kd.losses.ffsd.ffsd_losses``). Evaluation:
        ``{"logits": (B, M + 3, K)}`` = leader, students 0..M-1, fusion module, students' ensemble (mean logits)."""
        leader = self.student.forward_kd(pixel_values)
        leader_maps = leader.stages[-3:]
        outs = [s.forward_kd(pixel_values) for s in self.aux["students"]]
        logits, maps = [o.logits for o in outs], [o.stages[-3:] for o in outs]
        fusion_input = torch.cat([m[-1].detach() for m in maps], dim=1)  # students get nothing from the fusion side
        fusion_logits, fused = self.aux["fusion"](fusion_input)
        if not self.training:
            heads = [leader.logits, *logits, fusion_logits, torch.stack(logits).mean(0)]
            return {"logits": torch.stack(heads, dim=1)}
        trans = self.aux["trans_fusion"](leader_maps[-1])
        decoders, leader_decoder = self.aux["decoders"], self.aux["leader_decoder"]
        m_range = range(1, len(maps))
        # decoders in eval mode give the self-distillation targets, before their own train-mode pass (METHODS 1.4)
        with torch.no_grad(), _eval_mode(*decoders, leader_decoder):
            sd_targets = [None] + [decoders[m - 1](diversity_target(maps[m - 1][-1])) for m in m_range]
            leader_sd_target = leader_decoder(fused.detach())
        # their own objective: reconstruct their network's shallow stages from its (detached) deepest map
        decoded = [None] + [decoders[m - 1](maps[m][-1].detach()) for m in m_range]
        return dict(leader_logits=leader.logits, leader_maps=leader_maps, trans_fusion=trans, student_logits=logits,
                    student_maps=maps, fusion_input=fusion_input, fusion_logits=fusion_logits, fused=fused,
                    student_sd_targets=sd_targets, leader_sd_target=leader_sd_target, student_decoded=decoded,
                    leader_decoded=leader_decoder(leader_maps[-1].detach()))


class CompositeOptimizer(torch.optim.Optimizer):
    """Several torch optimizers (e.g. SGD over some parameter groups, Adam over others) acting as one.

    ``param_groups`` is the live concatenation of the inner optimizers' groups, so the Trainer's learning-rate scheduler
    scales every group from its own initial lr; ``step`` / ``zero_grad`` call each inner optimizer; ``state_dict`` /
    ``load_state_dict`` keep every inner state (exact resume). Like Accelerate's ``AcceleratedOptimizer`` it subclasses
    ``torch.optim.Optimizer`` for ``isinstance`` checks without calling its ``__init__``: groups and state are the inner
    optimizers'.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]):
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        seen = set()
        for opt in self.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) in seen:
                        raise ValueError("a parameter appears in two of the CompositeOptimizer's optimizers")
                    seen.add(id(p))
        # hook registries of torch.optim.Optimizer, so its hook API does not fail (no hooks run on the composite)
        for name in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                     "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                     "_optimizer_load_state_dict_post_hooks"):
            setattr(self, name, OrderedDict())

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @param_groups.setter
    def param_groups(self, groups: list[dict]):
        groups, start = list(groups), 0
        if len(groups) != sum(len(opt.param_groups) for opt in self.optimizers):
            raise ValueError("CompositeOptimizer.param_groups can only be replaced group for group")
        for opt in self.optimizers:
            n = len(opt.param_groups)
            opt.param_groups = groups[start:start + n]
            start += n

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    @property
    def defaults(self) -> dict:
        return self.optimizers[0].defaults

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        states = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if states is None or len(states) != len(self.optimizers):
            raise ValueError(f"This optimizer state does not come from a CompositeOptimizer of {len(self.optimizers)} "
                             "optimizers; resume with the same method and arguments as the run that saved it.")
        for opt, s in zip(self.optimizers, states):
            opt.load_state_dict(s)

    def add_param_group(self, param_group: dict) -> None:
        raise NotImplementedError("Add the group to one of CompositeOptimizer.optimizers instead.")

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(opt).replace("\n", "\n  ") for opt in self.optimizers)
        return f"{type(self).__name__}(\n{inner}\n)"


class FFSDMetrics(ClassificationMetrics):
    """Top-1/top-5 of every head (leader first, students 0..M-1, fusion module, ``ensemble`` = the students' mean
    logits) and the two student summaries of the official test log:

    - ``students_average_top{k}``: the mean of the common students' accuracies (official "Average Acc");
    - ``students_oracle_top{k}``: a sample counts when *any* common student ranks its label in its top k. The official
      ``utils.ensemble_accuracy`` (printed as "Ensemble Acc") adds the students' boolean hit masks, which is this
      logical OR; it is an upper bound, not an ensemble prediction, hence the separate name.
    """

    def __init__(self, head_names: Sequence[str], num_students: int):
        super().__init__(head_names)
        self.num_students = num_students

    def __call__(self, eval_pred) -> dict:
        out = super().__call__(eval_pred)
        preds = eval_pred.predictions[0] if isinstance(eval_pred.predictions, (tuple, list)) else \
            eval_pred.predictions
        ranked, labels = np.asarray(preds)[:, 1:1 + self.num_students], np.asarray(eval_pred.label_ids)
        for k in (1, 5):
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

    def __init__(self, model=None, args: FFSDArguments = None, teacher: Optional[TimmStudent] = None, **kwargs):
        if teacher is not None:
            raise ValueError("FFSD is online distillation: the students, the fusion module and the leader teach each "
                             "other, there is no pre-trained teacher. Drop teacher=...")
        if isinstance(model, DistillationModel) and not isinstance(model, FFSDModel):
            raise TypeError(f"FFSDTrainer needs a TimmStudent (the leader) or an FFSDModel, got {type(model).__name__}")
        self._num_students = model.num_students if isinstance(model, FFSDModel) else getattr(args, "num_students", 2)
        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = FFSDMetrics(self.eval_head_names, self._num_students)
        super().__init__(model=model, args=args, **kwargs)
        if self.accelerator.unwrap_model(self.model).num_students != self.args.num_students:
            raise ValueError(f"The FFSDModel has {self._num_students} common students but num_students is "
                             f"{self.args.num_students}")

    @property
    def eval_head_names(self) -> list[str]:
        return ["leader", *(f"student{m}" for m in range(self._num_students)), "fusion", "ensemble"]

    def build_model(self, student: TimmStudent, args: FFSDArguments) -> FFSDModel:
        return FFSDModel.build(student, args.num_students)

    @property
    def ffsd_model(self) -> FFSDModel:
        return self.accelerator.unwrap_model(self.model)

    def used_hyperparameters(self) -> dict:
        a = self.args
        return {**super().used_hyperparameters(),
                "decoder_weight_decay": a.weight_decay if a.decoder_weight_decay is None else a.decoder_weight_decay}

    # --- optimizer: SGD over the networks, Adam over the decoders, one schedule ---------------------------------------
    def _groups(self, model: nn.Module, prefixes: Sequence[str], weight_decay: float, **extra) -> list[dict]:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith(tuple(prefixes))]
        if self.args.decay_all_parameters:
            return [{"params": [p for _, p in named], "weight_decay": weight_decay, **extra}]
        decay = set(self.get_decay_parameter_names(model))
        return [g for g in ({"params": [p for n, p in named if n in decay], "weight_decay": weight_decay, **extra},
                            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0, **extra})
                if g["params"]]

    def create_optimizer(self, model=None):
        """Official per-module optimizers as one ``CompositeOptimizer``: ``optim`` (SGD Nesterov) over the leader, its
        trans-fusion branch and the students (``weight_decay``) and over the fusion module (``fusion_weight_decay``);
        Adam over the decoders (``decoder_learning_rate``, ``decoder_weight_decay``)."""
        if self.optimizer is None:
            m = self.accelerator.unwrap_model(self.model if model is None else model)
            a = self.args
            cls, kwargs = self.get_optimizer_cls_and_kwargs(a, m)
            kwargs.pop("params", None)
            networks = self._groups(m, ["student.", "aux.students.", "aux.trans_fusion."], a.weight_decay) + \
                self._groups(m, ["aux.fusion."], a.fusion_weight_decay)
            dec_wd = a.weight_decay if a.decoder_weight_decay is None else a.decoder_weight_decay
            decoders = self._groups(m, ["aux.decoders.", "aux.leader_decoder."], dec_wd, lr=a.decoder_learning_rate)
            covered = sum(len(g["params"]) for g in networks + decoders)
            if covered != sum(1 for p in m.parameters() if p.requires_grad):
                raise RuntimeError("FFSDTrainer.create_optimizer: some trainable parameters are in no group")
            self.optimizer = CompositeOptimizer([cls(networks, **kwargs),
                                                 torch.optim.Adam(decoders, lr=a.decoder_learning_rate)])
        return self.optimizer

    # --- loss ---------------------------------------------------------------------------------------------------------
    def lambdas(self, epoch: int) -> dict[str, float]:
        """The warmed-up lambdas for the 1-based ``epoch``."""
        a = self.args
        return {k: lambda_warmup(getattr(a, k), epoch, a.lambda_warmup_epochs) for k in _LAMBDAS}

    def _lambda_epoch(self) -> int:
        return int(self.state.epoch or 0) + 1  # 1-based epoch at the epoch start, as the official lambda_warmup

    def fast_step_inputs(self, batch_size: int) -> dict:
        """The warmed-up lambdas as a device tensor (a per-epoch value: a Python float would recompile the step)."""
        lam = self.lambdas(self._lambda_epoch())
        return {"lambdas": torch.tensor([lam[k] for k in _LAMBDAS], dtype=torch.float32).to(
            self.args.device, non_blocking=True)}

    def fast_objective(self, model, pixel_values, labels, lambdas=None):
        out = model(pixel_values=pixel_values)
        loss, terms = ffsd_losses(out, labels, self.args.temperature, **dict(zip(_LAMBDAS, lambdas.unbind())))
        self.log_terms(terms)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        out = model(pixel_values=x)
        if "logits" in out:  # evaluation: report the leader's CE as eval_loss, every head's logits for the metrics
            loss = F.cross_entropy(out["logits"][:, 0], y)
            return (loss, {"logits": out["logits"]}) if return_outputs else loss
        loss, terms = ffsd_losses(out, y, self.args.temperature, **self.lambdas(self._lambda_epoch()))
        self.log_terms(terms)
        if return_outputs:
            z = out["student_logits"]
            heads = [out["leader_logits"], *z, out["fusion_logits"], torch.stack(z).mean(0)]
            return loss, {"logits": torch.stack(heads, dim=1)}
        return loss
