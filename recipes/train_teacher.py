"""Plain cross-entropy training of any backbone: teachers for the KD methods, and no-distillation baselines.

    accelerate launch recipes/train_teacher.py                       # offline digits data, a few CPU minutes
    accelerate launch recipes/train_teacher.py --config recipes/configs/teacher_cifar100_resnet32x4.yaml
"""

from hf_kd.recipes import run
from hf_kd.trainers import SupervisedTrainer

if __name__ == "__main__":
    run(SupervisedTrainer, defaults=dict(student="cifar_resnet56", output_dir="outputs/teacher"))
