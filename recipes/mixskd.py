"""MixSKD: self-knowledge distillation from mixup (Yang et al., ECCV 2022); no teacher.

    accelerate launch recipes/mixskd.py                 # offline digits, a few CPU minutes
    # the official CIFAR-100 run (MixSKD_CIFAR_ResNet18, 205 epochs):
    accelerate launch recipes/mixskd.py --config recipes/configs/mixskd_cifar100_resnet18.yaml
    # options: --discriminator fixed|adversarial|off, --mixup_ce false (the released CIFAR objective)
"""

from hf_kd.recipes import run
from hf_kd.trainers.mixskd import MixSKDTrainer

if __name__ == "__main__":
    # quick default: the MixSKD CIFAR ResNet-18 layout (no stem ReLU, 4 stages -> 3 auxiliary branches) at a quarter
    # of the width and one block per stage, so that 5 epochs of digits take a few CPU minutes (about 2 CPU-minutes
    # of compute, about 92% top-1); lr 0.05 because lr 0.1 is unstable on this tiny run
    # (quick=: only for the no-config digits run; any other run trains the architecture and schedule it is given)
    run(MixSKDTrainer, defaults=dict(student="cifar_resnet18", output_dir="outputs/mixskd"),
        quick=dict(model_args='{"stem_act": false, "channels": [16, 16, 32, 64, 128], "blocks": [1, 1, 1, 1]}',
                   learning_rate=0.05, warmup_epochs=1, lr_milestones=[3, 4]))
