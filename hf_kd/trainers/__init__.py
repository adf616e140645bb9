"""Trainers: the shared ``DistillationTrainer`` base and one file per method (loaded on first use: they import
transformers' Trainer)."""

from .._lazy import lazy_getattr

_LAZY = {**dict.fromkeys(["DistillationArguments", "DistillationModel", "DistillationTrainer"], ".base"),
         "FFSDArguments": ".ffsd", "FFSDTrainer": ".ffsd",
         **dict.fromkeys(["KDArguments", "KDTrainer", "SupervisedTrainer"], ".kd"),
         "MixSKDArguments": ".mixskd", "MixSKDTrainer": ".mixskd",
         "ProjectorKDArguments": ".projector_kd", "ProjectorKDTrainer": ".projector_kd",
         "SelfKDArguments": ".self_kd", "SelfKDTrainer": ".self_kd"}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["DistillationArguments", "DistillationModel", "DistillationTrainer", "FFSDArguments", "FFSDTrainer",
           "KDArguments", "KDTrainer", "MixSKDArguments", "MixSKDTrainer", "ProjectorKDArguments",
           "ProjectorKDTrainer", "SelfKDArguments", "SelfKDTrainer", "SupervisedTrainer"]
