"""Trainers: the shared ``DistillationTrainer`` base and one file per method."""

from .base import DistillationArguments, DistillationModel, DistillationTrainer
from .kd import KDArguments, KDTrainer, SupervisedTrainer

__all__ = ["DistillationArguments", "DistillationModel", "DistillationTrainer", "KDArguments", "KDTrainer",
           "SupervisedTrainer"]
