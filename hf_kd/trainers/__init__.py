"""Trainers: the shared ``DistillationTrainer`` base and one file per method."""

from .base import DistillationArguments, DistillationModel, DistillationTrainer
from .ffsd import FFSDArguments, FFSDTrainer
from .kd import KDArguments, KDTrainer, SupervisedTrainer
from .mixskd import MixSKDArguments, MixSKDTrainer
from .projector_kd import ProjectorKDArguments, ProjectorKDTrainer
from .self_kd import SelfKDArguments, SelfKDTrainer

__all__ = ["DistillationArguments", "DistillationModel", "DistillationTrainer", "FFSDArguments", "FFSDTrainer",
           "KDArguments", "KDTrainer", "MixSKDArguments", "MixSKDTrainer", "ProjectorKDArguments",
           "ProjectorKDTrainer", "SelfKDArguments", "SelfKDTrainer", "SupervisedTrainer"]
