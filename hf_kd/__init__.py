"""hf_kd: knowledge distillation for image classification, native to the HuggingFace stack."""

from .data import BatchAugment, ImageCollator, ImageData, load_image_data
from .losses import kd_kl_div
from .models import CIFAR_ARCHITECTURES, TimmStudent, TransformersTeacher, create_student, load_student, load_teacher
from .trainers import (DistillationArguments, DistillationModel, DistillationTrainer, FFSDArguments, FFSDTrainer,
                       KDArguments, KDTrainer, MixSKDArguments, MixSKDTrainer, ProjectorKDArguments,
                       ProjectorKDTrainer, SelfKDArguments, SelfKDTrainer, SupervisedTrainer)

__version__ = "0.1.0"
__all__ = ["BatchAugment", "CIFAR_ARCHITECTURES", "DistillationArguments", "DistillationModel", "DistillationTrainer",
           "FFSDArguments", "FFSDTrainer", "ImageCollator", "ImageData", "KDArguments", "KDTrainer", "MixSKDArguments",
           "MixSKDTrainer", "ProjectorKDArguments", "ProjectorKDTrainer", "SelfKDArguments", "SelfKDTrainer",
           "SupervisedTrainer", "TimmStudent", "TransformersTeacher",
           "create_student", "kd_kl_div", "load_image_data", "load_student", "load_teacher"]
