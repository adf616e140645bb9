"""PEFD: feature distillation through a projector ensemble (Chen et al., NeurIPS 2022) from a frozen teacher.

    accelerate launch recipes/projector_kd.py                        # offline digits; trains a small teacher first
    accelerate launch recipes/projector_kd.py --teacher outputs/teacher
    # the paper's CIFAR-100 pair (CRD protocol); train the teacher first with
    #   accelerate launch recipes/train_teacher.py --config recipes/configs/teacher_cifar100_resnet32x4.yaml
    accelerate launch recipes/projector_kd.py --config recipes/configs/projector_kd_cifar100_resnet32x4_resnet8x4.yaml
"""

from hf_kd.recipes import run
from hf_kd.trainers.projector_kd import ProjectorKDTrainer

if __name__ == "__main__":
    run(ProjectorKDTrainer, defaults=dict(student="cifar_resnet20", output_dir="outputs/projector_kd"))
