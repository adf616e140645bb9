"""LightSKD self-knowledge distillation (DRG + DSR; arXiv 2305.09183): no teacher, a layer-2 adapter teaches the
final head (DRG) and the sorted logits of consecutive batches are kept alike (DSR).

    accelerate launch recipes/self_kd.py                      # offline digits, cifar_resnet20, a few CPU minutes
    accelerate launch recipes/self_kd.py --no_use_dsr         # DRG only (or --no_use_drg: DSR only)
    # the official CIFAR-100 setting (ResNet-18, 200 epochs, batch 128, SGD 0.1, lr x0.1 at 60/120/160):
    accelerate launch recipes/self_kd.py --config recipes/configs/self_kd_cifar100_resnet18.yaml
"""

from hf_kd.recipes import run
from hf_kd.trainers.self_kd import SelfKDTrainer

if __name__ == "__main__":
    run(SelfKDTrainer, defaults=dict(student="cifar_resnet20", output_dir="outputs/self_kd"))
