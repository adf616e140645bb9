"""``MixSKDTrainer``: self-knowledge distillation from mixup (Yang et al., ECCV 2022), after winycg/Self-KD-Lib.

Per step (``main_mixskd_imagenet.py`` / ``main_mixskd_cifar.py``; /work/shared/METHODS.md section 4): draw one
lambda ~ Beta(alpha, alpha) and a uniform random permutation pi of the batch (see "Mixup draw" below), build
x_mix = lambda x + (1-lambda) x[pi] (labels y and y[pi]), and run ONE forward of cat([x, x_mix]) through the
``MixSKDModel`` (BN statistics shared by both halves). The model returns, for the N-1 auxiliary branches and the
backbone (last), logits and final-resolution features of both halves, and the self-teacher Psi on the interpolated
features of the originals and on the mixup images' features. The objective, all weights 1:

    L = L_cls + L_mixcls + L_kl + L_fea + L_gan

(``hf_kd.losses.mixskd``). This is the objective of the official ImageNet script; the released CIFAR script computes
L_mixcls but leaves it out of the total, so its self-teacher never trains (METHODS "Decisions"): ``mixup_ce=False``
reproduces that. Discriminators: ``fixed`` (default) = the released behaviour, random heads that are never trained (the
code keeps them in a plain list); ``adversarial`` = a real GAN game; ``off`` = no L_gan.

Mixup draw: the official scripts call ``np.random.beta`` and ``torch.randperm`` on the global RNGs. Here
(lambda, pi) = ``hf_kd.losses.mixskd.draw_mixup(args.seed, state.global_step, k, B, alpha)`` with
k = process_index * gradient_accumulation_steps + i, where i is the index of the micro-batch within the optimizer step
(``MixSKDTrainer.next_mixup``). Same distribution (one Beta(alpha, alpha) scalar per batch, a uniform permutation);
what changes is only where the randomness comes from, so that 1 process with gradient accumulation and N DDP processes
with the same per-device batch draw identical mixups for the same micro-batches, a resumed run repeats the draws of an
uninterrupted one whatever else used the global RNGs, and every process and micro-batch draws a different mixup.

Export: the backbone alone. Branches, self-teacher and discriminators live in the ``DistillationModel`` (checkpoints
only). Evaluation scores every head; the backbone's is reported as top1 (the official script reports the max over
heads and epochs), the branches as ``branch{k}_top1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ..data import BatchAugment
from ..losses.mixskd import (discriminator_bce, draw_mixup, interpolate, mixskd_classification, mixskd_feature_mse,
                             mixskd_kl, mixup_images)
from ..models import TimmStudent
from ..modules.mixskd import Discriminator, SelfTeacher, backbone_stages, build_auxiliary_branches
from .base import DistillationArguments, DistillationModel, DistillationTrainer

__all__ = ["MixSKDArguments", "MixSKDModel", "MixSKDOutput", "MixSKDTrainer"]

DISCRIMINATOR_MODES = ("fixed", "adversarial", "off")


@dataclass
class MixSKDArguments(DistillationArguments):
    """Defaults follow winycg/Self-KD-Lib ``main_mixskd_cifar.py`` (alpha 0.4, kd_T 3)."""

    temperature_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    minimum_values: ClassVar[dict[str, float]] = {"discriminator_hidden": 1}

    mixup_alpha: float = field(default=0.4, metadata={
        "help": "alpha of lambda ~ Beta(alpha, alpha), one lambda per batch (CIFAR 0.4; the ImageNet shell script "
                "0.2). alpha <= 0 gives lambda = 0.5, as the CIFAR script."})
    temperature: float = field(default=3.0, metadata={"help": "T of every KL term (kd_T)."})
    discriminator: str = field(default="fixed", metadata={
        "choices": DISCRIMINATOR_MODES, "help": "fixed: random discriminators that are never trained, the network minimises their BCE (the released "
                "code); adversarial: discriminators trained to separate interpolated from mixup features while the "
                "network learns to fool them (non-saturating GAN loss); off: no discriminator term."})
    mixup_ce: bool = field(default=True, metadata={
        "help": "Add L_mixcls (mixup CE of every head and of the self-teacher) to the total, as the official ImageNet "
                "script (default). False = the released CIFAR script: logged only, the self-teacher stays random."})
    discriminator_hidden: int = field(default=128, metadata={"help": "Hidden width of each discriminator MLP."})


@dataclass
class MixSKDOutput(ModelOutput):
    """Per-head lists are ordered k = 1..H: auxiliary branches first, the backbone LAST (official order).

    logits: eval mode only, every head stacked (B, H, K) with the BACKBONE FIRST (the exported model; what
    evaluation and prediction score); head_logits/features: per head, over all rows of the forward (2B in training);
    interp_features/mixup_features: A_bar_k (B, C, h, w) and A_k(x_mix); ens_logits = Psi(A_bar),
    ens_mix_logits = Psi(A(x_mix)); d_logits: D_k on [A_bar_k; A_k(x_mix)] (2B, 2) as the network sees them;
    d_logits_detached: D_k on detached features (the discriminators' own training term, adversarial only).
    """

    logits: Optional[torch.Tensor] = None
    head_logits: Optional[list] = None
    features: Optional[list] = None
    interp_features: Optional[list] = None
    mixup_features: Optional[list] = None
    ens_logits: Optional[torch.Tensor] = None
    ens_mix_logits: Optional[torch.Tensor] = None
    d_logits: Optional[list] = None
    d_logits_detached: Optional[list] = None


class MixSKDModel(DistillationModel):
    """The backbone (``student``, exported) + ``aux``: ``branches`` (N-1 ``AuxiliaryBranch``), ``self_teacher``
    (``SelfTeacher``) and, unless discriminator="off", ``discriminators`` (N ``Discriminator``; frozen with
    requires_grad=False when "fixed": never optimised, but registered so that checkpoints hold them)."""

    def __init__(self, student: TimmStudent, num_classes: int, discriminator: str = "fixed",
                 discriminator_hidden: int = 128, train_self_teacher: bool = True):
        if discriminator not in DISCRIMINATOR_MODES:
            raise ValueError(f"discriminator must be one of {DISCRIMINATOR_MODES}, got '{discriminator}'")
        stages, _ = backbone_stages(student.timm_model, student.config.architecture)
        n = len(stages)
        student.require_stages(n, "MixSKD")
        branches = build_auxiliary_branches(student)
        channels = student.timm_model.num_features
        aux = dict(branches=branches, self_teacher=SelfTeacher(n, channels, num_classes))
        if discriminator != "off":
            aux["discriminators"] = nn.ModuleList(Discriminator(channels, discriminator_hidden) for _ in range(n))
        super().__init__(student, **aux)
        self.num_stages = n
        self.discriminator = discriminator
        if discriminator == "fixed":  # the released code never registers them: no gradient, no update, no decay
            self.aux["discriminators"].requires_grad_(False)
        if not train_self_teacher:  # released CIFAR objective: Psi gets no gradient at all (SGD skips it)
            self.aux["self_teacher"].requires_grad_(False)
        self._check_shapes()

    @property
    def head_names(self) -> list[str]:
        """Evaluation order: the backbone first (the exported model), then branch 1..N-1."""
        return ["backbone"] + [f"branch{k}" for k in range(1, self.num_stages)]

    @torch.no_grad()
    def _check_shapes(self):
        size = tuple(self.student.config.pretrained_cfg["input_size"])
        was = self.training
        self.eval()
        try:
            p = next(self.student.parameters())
            out = self.forward(torch.zeros(1, *size, device=p.device, dtype=p.dtype))
        finally:
            self.train(was)
        shapes = [tuple(f.shape[1:]) for f in out.features]
        if len(set(shapes)) != 1:
            raise ValueError(f"MixSKD: auxiliary branches of '{self.student.config.architecture}' do not end at the "
                             f"backbone's final feature shape: {shapes}")

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, lam: Optional[float] = None,
                perm: Optional[torch.Tensor] = None, **kwargs) -> MixSKDOutput:
        """Train: ``pixel_values`` = cat([x, x_mix]) (2B rows) with ``lam`` and ``perm``; eval: any batch."""
        out = self.student.forward_kd(pixel_values, stages=True)
        taps = out.stages[-self.num_stages:]
        feats, logits = [], []
        for k, branch in enumerate(self.aux["branches"]):
            f, z = branch(taps[k])
            feats.append(f)
            logits.append(z)
        feats.append(taps[-1])
        logits.append(out.logits)
        if not self.training:
            return MixSKDOutput(logits=torch.stack([logits[-1], *logits[:-1]], dim=1), head_logits=logits,
                                features=feats)
        if lam is None or perm is None:
            raise ValueError("MixSKDModel in training mode needs lam and perm (the mixup of the second half); "
                             "MixSKDTrainer.compute_loss passes them.")
        b = perm.shape[0]
        if pixel_values.shape[0] != 2 * b:
            raise ValueError(f"expected cat([x, x_mix]) with 2*{b} rows, got {pixel_values.shape[0]}")
        interp = [interpolate(f[:b], lam, perm) for f in feats]
        mixed = [f[b:] for f in feats]
        psi = self.aux["self_teacher"]
        result = MixSKDOutput(head_logits=logits, features=feats, interp_features=interp, mixup_features=mixed,
                              ens_logits=psi(interp), ens_mix_logits=psi(mixed))
        if self.discriminator != "off":
            ds = self.aux["discriminators"]
            adversarial = self.discriminator == "adversarial"
            result.d_logits = [d(torch.cat([fi, fm]), detach_params=adversarial)
                               for d, fi, fm in zip(ds, interp, mixed)]
            if adversarial:
                result.d_logits_detached = [d(torch.cat([fi.detach(), fm.detach()])) for d, fi, fm in
                                            zip(ds, interp, mixed)]
        return result


class MixSKDTrainer(DistillationTrainer):
    """MixSKD: self-KD between original images and their mixup, with auxiliary branches and a self-teacher.

    loss = L_cls + L_mixcls + L_kl + L_fea + L_gan (all weights 1; see the module docstring and
    ``hf_kd.losses.mixskd``). No teacher. Logged (unweighted): ``cls``, ``mixcls``, ``kl``, ``fea``, ``gan``
    (+ ``gan_d``, the discriminators' loss, with discriminator="adversarial").
    """

    args_class = MixSKDArguments
    method_name = "mixskd"
    method_title = "MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition (Yang et al., ECCV 2022)"
    citation = """@inproceedings{yang2022mixskd,
  title={MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition},
  author={Yang, Chuanguang and An, Zhulin and Zhou, Helong and Cai, Linhang and Zhi, Xiang and Wu, Jiwen and Xu, Yongjun and Zhang, Qian},
  booktitle={European Conference on Computer Vision},
  year={2022}
}"""

    def __init__(self, model=None, args: MixSKDArguments = None, teacher: Optional[TimmStudent] = None,
                 augmentation: Optional[BatchAugment] = None, **kwargs):
        if teacher is not None:
            raise ValueError("MixSKD is self-distillation and takes no teacher; drop teacher=... (the self-teacher "
                             "is built from the backbone's own features).")
        if isinstance(model, MixSKDModel):
            self._head_names = model.head_names
        super().__init__(model=model, args=args, teacher=None, augmentation=augmentation, **kwargs)

    def build_model(self, student: TimmStudent, args: MixSKDArguments) -> MixSKDModel:
        model = MixSKDModel(student, student.config.num_labels, args.discriminator, args.discriminator_hidden,
                            train_self_teacher=args.mixup_ce)
        self._head_names = model.head_names
        return model

    @property
    def eval_head_names(self) -> list[str]:
        return getattr(self, "_head_names", None) or ["backbone"]

    # --- the mixup draw ---------------------------------------------------------------------------------------------
    _mixup_position: Optional[tuple[int, int]] = None  # (global_step, micro-batch index) of the last training draw
    last_mixup_key: Optional[tuple[int, int, int]] = None  # (seed, global_step, k) of the last training draw

    def train(self, *args, **kwargs):
        self._mixup_position = None  # a new (or resumed) run starts at micro-batch 0 of its first step
        return super().train(*args, **kwargs)

    def mixup_key(self, micro_batch: int) -> tuple[int, int, int]:
        """(seed, step, k) of the draw for micro-batch ``micro_batch`` of the current optimizer step on this process:
        k = process_index * gradient_accumulation_steps + micro_batch."""
        a = self.args
        return a.seed, self.state.global_step, a.process_index * a.gradient_accumulation_steps + micro_batch

    def next_mixup(self, batch_size: int, device=None) -> tuple[float, torch.Tensor]:
        """(lam, perm) for the next training micro-batch (``draw_mixup`` at ``mixup_key``).

        The micro-batch index is the number of training draws already made at the current ``state.global_step``
        (which the Trainer advances after every optimizer step); ``train()`` resets the count, so a resumed run
        restarts at micro-batch 0 of the checkpoint's step, as the uninterrupted run did.
        """
        step, pos = self.state.global_step, self._mixup_position
        micro = pos[1] + 1 if pos is not None and pos[0] == step else 0
        self._mixup_position = (step, micro)
        self.last_mixup_key = self.mixup_key(micro)
        lam, perm = draw_mixup(*self.last_mixup_key, batch_size, self.args.mixup_alpha)
        return lam, perm.to(device, non_blocking=True)  # pageable memory: staged at once, no sync

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        x, y = inputs["pixel_values"], inputs["labels"]
        if not model.training:  # evaluation: every head on the plain images, the backbone first
            out = model(pixel_values=x)
            loss = F.cross_entropy(out.logits[:, 0], y)
            return (loss, {"logits": out.logits}) if return_outputs else loss
        lam, perm = self.next_mixup(x.shape[0], x.device)
        loss, terms, orig = self._train_objective(model, x, y, lam, perm)
        self.log_terms(terms)
        if return_outputs:
            return loss, {"logits": torch.stack([orig[-1], *orig[:-1]], dim=1)}
        return loss

    def _train_objective(self, model, x, y, lam, perm):
        """(loss, terms, per-head logits of the originals) of a training batch mixed with (lam, perm)."""
        a = self.args
        b = x.shape[0]
        x_mix, _, y_b = mixup_images(x, y, lam, perm)
        out = model(pixel_values=torch.cat([x, x_mix]), lam=lam, perm=perm)
        orig = [z[:b] for z in out.head_logits]
        mixed = [z[b:] for z in out.head_logits]
        terms = {}
        terms["cls"], terms["mixcls"] = mixskd_classification(orig, mixed, out.ens_logits, out.ens_mix_logits,
                                                              y, y_b, lam)
        terms["kl"] = mixskd_kl([interpolate(z, lam, perm) for z in orig], mixed, out.ens_logits,
                                out.ens_mix_logits, a.temperature)
        terms["fea"] = mixskd_feature_mse(out.interp_features, out.mixup_features)
        loss = terms["cls"] + terms["kl"] + terms["fea"]
        if a.mixup_ce:
            loss = loss + terms["mixcls"]
        if out.d_logits is not None:
            adversarial = a.discriminator == "adversarial"
            terms["gan"] = discriminator_bce(out.d_logits, fool=adversarial)
            loss = loss + terms["gan"]
            if adversarial:
                terms["gan_d"] = discriminator_bce(out.d_logits_detached)
                loss = loss + terms["gan_d"]
        return loss, terms, orig

    # --- fast path: the host-drawn mixup goes into the compiled step as device tensors ---------------------------------
    def fast_step_inputs(self, batch_size: int) -> dict:
        lam, perm = self.next_mixup(batch_size, self.args.device)
        # float64, like the eager path's Python float: 1 - lam is then rounded the same way
        return {"lam": torch.tensor(lam, dtype=torch.float64).to(self.args.device, non_blocking=True), "perm": perm}

    def fast_objective(self, model, pixel_values, labels, lam=None, perm=None):
        loss, terms, _ = self._train_objective(model, pixel_values, labels, lam, perm)
        self.log_terms(terms)
        return loss
