"""timm backbones as PreTrainedModels (on transformers' TimmWrapper) and the CIFAR backbones registered into timm."""

from .cifar import CIFAR_ARCHITECTURES, CifarResNet, CifarWideResNet
from .student import KDOutput, MissingStagesError, TimmStudent, create_student, load_student
from .teacher import TeacherPreprocess, TransformersTeacher, load_teacher

__all__ = ["CIFAR_ARCHITECTURES", "CifarResNet", "CifarWideResNet", "KDOutput", "MissingStagesError",
           "TeacherPreprocess", "TimmStudent", "TransformersTeacher", "create_student", "load_student",
           "load_teacher"]
