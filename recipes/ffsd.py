"""FFSD: online distillation with feature fusion and self-distillation (Li et al., IEEE TNNLS 2022). No teacher:
two common students, a fusion module and the leader train together; the leader (the --student architecture) is
exported.

    accelerate launch recipes/ffsd.py                                          # offline digits, a few CPU minutes
    accelerate launch recipes/ffsd.py --config recipes/configs/ffsd_cifar100_resnet32.yaml   # the official setting
    # presets: ffsd_cifar100_{resnet20,resnet32,resnet56,wrn_16_2,wrn_40_2}.yaml
"""

from hf_kd.recipes import run
from hf_kd.trainers.ffsd import FFSDTrainer

if __name__ == "__main__":
    # the quick run keeps FFSD's own optimizer settings (SGD Nesterov, wd 1e-4, no clipping) on a short cosine schedule
    run(FFSDTrainer, defaults=dict(student="cifar_resnet20", output_dir="outputs/ffsd", learning_rate=0.1,
                                   weight_decay=1e-4, max_grad_norm=0.0))
