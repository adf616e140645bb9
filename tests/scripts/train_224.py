"""Train every method with an ImageNet setting (KD, PEFD, FFSD, MixSKD) in turn at 224 px on an imagefolder of JPEG photographs, with their ImageNet
architectures at tiny widths (ResNet-34 teacher, ResNet-18 student); evaluate and export each, under whatever
launcher started this script (one process, or `accelerate launch --multi_gpu --num_processes 2`).

Used by tests/test_imagenet_size.py: ``python train_224.py FOLDER OUT``. The main process writes, per method, the
eval batch (normalised) and the trained student's logits on it, so that the test can reload the export and compare.
"""

import json
import os
import sys

import torch

import hf_kd
import hf_kd.trainers
from hf_kd.data import load_image_data
from hf_kd.methods import methods

# every registered method (hf_kd.methods), by trainer class name, but these:
NOT_AT_224 = {"self_kd": "LightSKD has no ImageNet setting (no ImageNet preset: the paper and its code are CIFAR)",
              "supervised": "plain cross-entropy, trained here by every other method's code path already"}
METHODS = tuple(cls.__name__ for name, cls in methods().items() if name not in NOT_AT_224)
# timm's ResNets at a few channels per stage: the ImageNet stem (7x7 stride-2 conv + max-pool) and 4 stages, at
# 224 px, in seconds on a CPU
TINY = {"model_args": {"channels": [8, 16, 24, 32], "stem_width": 8}}


def train_all(folder: str, out: str, methods=METHODS) -> dict:
    """method -> its trainer after training, evaluation and export to ``out/<method>``."""
    data = load_image_data(folder, image_size=224)
    trainers = {}
    for name in methods:
        cls = getattr(hf_kd.trainers, name)
        torch.manual_seed(0)
        student = hf_kd.create_student("resnet18", data.num_labels, data.label_names, **data.preprocessing, **TINY)
        teacher = None
        if cls.uses_teacher == "required":
            teacher = hf_kd.create_student("resnet34", data.num_labels, data.label_names, **data.preprocessing,
                                           **TINY)
        args = cls.args_class(output_dir=os.path.join(out, name), max_steps=2, per_device_train_batch_size=4,
                              per_device_eval_batch_size=4, report_to=[], save_strategy="no", logging_steps=1,
                              seed=0, dataloader_drop_last=True, use_cpu=True, disable_tqdm=True)
        trainer = cls(model=student, teacher=teacher, args=args, train_dataset=data.train, eval_dataset=data.eval,
                      augmentation=data.batch_augment())
        trainer.train()
        metrics = trainer.evaluate()
        trainer.save_model()
        if trainer.is_world_process_zero():
            batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
            model = trainer.student.eval()
            with torch.no_grad():
                logits = model(pixel_values=batch["pixel_values"]).logits
            torch.save({"pixel_values": batch["pixel_values"].cpu(), "logits": logits.cpu()},
                       os.path.join(out, f"{name}_eval.pt"))
            with open(os.path.join(out, f"{name}_info.json"), "w") as f:
                json.dump({"world_size": trainer.args.world_size, "steps": trainer.state.global_step,
                           "metrics": sorted(metrics)}, f)
        trainers[name] = trainer
    return trainers


if __name__ == "__main__":
    torch.set_num_threads(1)
    train_all(sys.argv[1], sys.argv[2])
