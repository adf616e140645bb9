"""MixSKD: self-knowledge distillation from mixup (Yang et al., ECCV 2022); no teacher.

    accelerate launch recipes/mixskd.py                 # offline digits, a few CPU minutes
    # the official CIFAR-100 run (MixSKD_CIFAR_ResNet18, 205 epochs):
    accelerate launch recipes/mixskd.py --config recipes/configs/mixskd_cifar100_resnet18.yaml
    # options: --discriminator fixed|adversarial|off, --mixup_ce false (the released CIFAR objective)
"""

from hf_kd.recipes import run
from hf_kd.trainers.mixskd import MixSKDTrainer

if __name__ == "__main__":
    # quick default: the MixSKD CIFAR ResNet-18 layout (no stem ReLU) at reduced width so that it runs on a CPU
    run(MixSKDTrainer, defaults=dict(student="cifar_resnet18", output_dir="outputs/mixskd",
                                     model_args='{"stem_act": false, "channels": [16, 16, 32, 64, 128]}',
                                     learning_rate=0.1, warmup_epochs=1, lr_milestones=[3, 4]))
