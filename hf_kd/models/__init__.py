"""timm backbones as PreTrainedModels (on transformers' TimmWrapper) and the CIFAR backbones registered into timm.

The CIFAR backbones are registered on import; the ``TimmStudent`` side (transformers' modeling code) loads on first
use."""

from .._lazy import lazy_getattr
from .cifar import CIFAR_ARCHITECTURES, CifarResNet, CifarWideResNet

_LAZY = {**dict.fromkeys(["KDOutput", "MissingStagesError", "TimmStudent", "create_student", "load_student"],
                         ".student"),
         **dict.fromkeys(["InputSpec", "TeacherInput", "TeacherPreprocess", "TransformersTeacher", "input_spec",
                          "load_teacher"], ".teacher")}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["CIFAR_ARCHITECTURES", "CifarResNet", "CifarWideResNet", "InputSpec", "KDOutput", "MissingStagesError",
           "TeacherInput", "TeacherPreprocess", "TimmStudent", "TransformersTeacher", "create_student", "input_spec",
           "load_student", "load_teacher"]
