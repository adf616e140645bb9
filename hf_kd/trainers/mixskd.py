"""``MixSKDTrainer``: self-knowledge distillation from mixup (Yang et al., ECCV 2022), after winycg/Self-KD-Lib.

Per step (``main_mixskd_imagenet.py`` / ``main_mixskd_cifar.py``; docs/methods/mixskd.md): draw one
lambda ~ Beta(alpha, alpha) and a uniform random permutation pi of the batch (see "Mixup draw" below), build
x_mix = lambda x + (1-lambda) x[pi] (labels y and y[pi]), and run ONE forward of cat([x, x_mix]) through the
``MixSKDModel`` (BN statistics shared by both halves). The model returns, for the N-1 auxiliary branches and the
backbone (last), logits and final-resolution features of both halves, and the self-teacher Psi on the interpolated
features of the originals and on the mixup images' features. The objective, all weights 1:

    L = L_cls + L_mixcls + L_kl + L_fea + L_gan

(``hf_kd.losses.mixskd``). This is the objective of the official ImageNet script; the released CIFAR script computes
L_mixcls but leaves it out of the total, so its self-teacher never trains (docs/methods/mixskd.md, "Decisions"):
``mixup_ce=False`` reproduces that. Discriminators: ``fixed`` (default) = the released behaviour, random heads that are never trained (the
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

from ..arguments import DistillationArguments
from ..losses.mixskd import (discriminator_bce, draw_mixup, interpolate, mixskd_classification, mixskd_feature_mse,
                             mixskd_kl)
from ..models import TimmStudent
from ..modules.mixskd import DISCRIMINATOR_MODES, MixSKDModel, MixSKDOutput
from .base import DistillationTrainer

__all__ = ["MixSKDArguments", "MixSKDModel", "MixSKDOutput", "MixSKDTrainer"]


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


class MixSKDTrainer(DistillationTrainer):
    """MixSKD: self-KD between original images and their mixup, with auxiliary branches and a self-teacher.

    loss = L_cls + L_mixcls + L_kl + L_fea + L_gan (all weights 1; see the module docstring and
    ``hf_kd.losses.mixskd``). No teacher. Logged (unweighted): ``cls``, ``mixcls``, ``kl``, ``fea``, ``gan``
    (+ ``gan_d``, the discriminators' loss, with discriminator="adversarial").
    """

    args_class = MixSKDArguments
    method_name = "mixskd"
    short_name = "MixSKD"
    reference_preset = "mixskd_cifar100_resnet18.yaml"
    paper = "https://arxiv.org/abs/2208.05768"
    method_title = "MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition (Yang et al., ECCV 2022)"
    citation = """@inproceedings{yang2022mixskd,
  title={MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition},
  author={Yang, Chuanguang and An, Zhulin and Zhou, Helong and Cai, Linhang and Zhi, Xiang and Wu, Jiwen and Xu, Yongjun and Zhang, Qian},
  booktitle={European Conference on Computer Vision},
  year={2022}
}"""

    uses_teacher = "refused"  # the self-teacher is built from the backbone's own features

    def build_model(self, student: TimmStudent, args: MixSKDArguments, teacher=None) -> MixSKDModel:
        return MixSKDModel(student, student.config.num_labels, args.discriminator, args.discriminator_hidden,
                           train_self_teacher=args.mixup_ce)

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

    def step_inputs(self, batch_size: int, device) -> dict:
        """The mixup draw of this micro-batch (``next_mixup``)."""
        lam, perm = self.next_mixup(batch_size, device)
        return {"lam": lam, "perm": perm}

    def method_loss(self, outputs: MixSKDOutput, pixel_values, labels, lam=None, perm=None, **step):
        """L_cls + L_mixcls (unless ``mixup_ce`` is off) + L_kl + L_fea + L_gan of a batch mixed with (lam, perm)."""
        a = self.args
        b = labels.shape[0]
        y_b = labels[perm]
        orig = [z[:b] for z in outputs.head_logits]
        mixed = [z[b:] for z in outputs.head_logits]
        terms = {}
        terms["cls"], terms["mixcls"] = mixskd_classification(orig, mixed, outputs.ens_logits, outputs.ens_mix_logits,
                                                              labels, y_b, lam)
        terms["kl"] = mixskd_kl([interpolate(z, lam, perm) for z in orig], mixed, outputs.ens_logits,
                                outputs.ens_mix_logits, a.temperature)
        terms["fea"] = mixskd_feature_mse(outputs.interp_features, outputs.mixup_features)
        loss = terms["cls"] + terms["kl"] + terms["fea"]
        if a.mixup_ce:
            loss = loss + terms["mixcls"]
        if outputs.d_logits is not None:
            adversarial = a.discriminator == "adversarial"
            terms["gan"] = discriminator_bce(outputs.d_logits, fool=adversarial)
            loss = loss + terms["gan"]
            if adversarial:
                terms["gan_d"] = discriminator_bce(outputs.d_logits_detached)
                loss = loss + terms["gan_d"]
        return loss, terms
