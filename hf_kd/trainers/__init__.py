"""Trainers: the shared ``DistillationTrainer`` base and one file per method."""

from .base import DistillationArguments, DistillationModel, DistillationTrainer
from .kd import KDArguments, KDTrainer, SupervisedTrainer
from .projector_kd import ProjectorKDArguments, ProjectorKDTrainer

__all__ = ["DistillationArguments", "DistillationModel", "DistillationTrainer", "KDArguments", "KDTrainer",
           "ProjectorKDArguments", "ProjectorKDTrainer", "SupervisedTrainer"]
