"""Classic knowledge distillation (Hinton et al. 2015) from a frozen teacher.

    accelerate launch recipes/kd.py                                  # trains a small teacher first if none given
    accelerate launch recipes/kd.py --teacher outputs/teacher
    accelerate launch recipes/kd.py --config recipes/configs/kd_cifar100_resnet32x4_resnet8x4.yaml --teacher <dir>
"""

from hf_kd.recipes import run
from hf_kd.trainers import KDTrainer

if __name__ == "__main__":
    run(KDTrainer, defaults=dict(student="cifar_resnet20", output_dir="outputs/kd"))
