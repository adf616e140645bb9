"""Train each named trainer a few steps under whatever launcher started this script; save the student per trainer.

Used by tests/test_distributed.py: `accelerate launch --multi_gpu --num_processes 2 ddp_train.py OUT 1 kd ...`
(2 gloo processes on a GPU-less machine) against one process with gradient_accumulation_steps=2.
Randomness that would differ between the two layouts is off: no augmentation, no dropout.
"""

import dataclasses
import json
import os
import sys

import torch

import hf_kd
from hf_kd.data import load_image_data

# name -> (registered method, teacher, student architecture, extra method arguments). Teacher: None for a tiny
# cifar_resnet20 when the method requires one, else "vit" / "convnext" for a transformers teacher (folders in
# $HF_KD_TEST_VIT_TEACHER / $HF_KD_TEST_CONVNEXT_TEACHER, tests/test_transformers_teacher.py). Every registered method
# has an entry under its own name (tests/test_distributed.py checks it).
TRAINERS = {
    "supervised": ("supervised", None, "cifar_resnet8x4", {}),
    "kd": ("kd", None, "cifar_resnet8x4", {}),
    "projector_kd": ("projector_kd", None, "cifar_resnet8x4", {}),
    "ffsd": ("ffsd", None, "cifar_resnet20", {}),
    # without the terms whose targets come from the decoders in eval mode: their BN running statistics are updated
    # once per micro-batch under accumulation but once per step (rank 0's, broadcast) under DDP
    "ffsd_no_decoder_targets": ("ffsd", None, "cifar_resnet20", {"lambda_fusion": 0.0, "lambda_diversity": 0.0}),
    # DSR's previous batch is per process (DDP) or per micro-batch (accumulation): parity only without it
    "self_kd_drg": ("self_kd", None, "cifar_resnet8x4", {"use_dsr": False}),
    "self_kd": ("self_kd", None, "cifar_resnet8x4", {}),
    "mixskd": ("mixskd", None, "cifar_resnet8x4", {}),
    "kd_vit": ("kd", "vit", "cifar_resnet8x4", {}),
    "projector_kd_vit": ("projector_kd", "vit", "cifar_resnet8x4", {}),
    "kd_convnext": ("kd", "convnext", "cifar_resnet8x4", {}),
    "projector_kd_convnext": ("projector_kd", "convnext", "cifar_resnet8x4", {}),
}


def main(out: str, grad_accum: int, names: list[str]):
    from hf_kd.methods import get_method

    # the first 96 training rows, as when the tolerances below were measured (max_train_samples now draws a
    # class-balanced random subset; LightSKD-with-DSR's legitimate layout difference depends on the batches)
    data = load_image_data("digits", max_eval_samples=16)
    data = dataclasses.replace(data, train=data.train.select(range(96)))
    for name in names:
        method, teacher_kind, arch, extra = TRAINERS[name]
        cls = get_method(method)
        torch.manual_seed(0)
        student = hf_kd.create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std)
        torch.manual_seed(1)
        if teacher_kind is not None:
            teacher = hf_kd.load_teacher(os.environ[f"HF_KD_TEST_{teacher_kind.upper()}_TEACHER"])
        elif cls.uses_teacher == "required":
            teacher = hf_kd.create_student("cifar_resnet20", data.num_labels, data.label_names)
        else:
            teacher = None
        args = cls.args_class(output_dir=os.path.join(out, name), max_steps=3, per_device_train_batch_size=8,
                              gradient_accumulation_steps=grad_accum, report_to=[], save_strategy="no",
                              logging_steps=1, seed=0, optim="sgd", optim_args="momentum=0.9", learning_rate=0.05,
                              dataloader_drop_last=True, use_cpu=True, disable_tqdm=True, **extra)
        trainer = cls(model=student, teacher=teacher, args=args, train_dataset=data.train, eval_dataset=data.eval,
                      augmentation=data.batch_augment("none"))
        trainer.train()
        trainer.evaluate()
        trainer.save_model()
        if trainer.is_world_process_zero():
            torch.save({k: v.cpu() for k, v in trainer.student.state_dict().items()},
                       os.path.join(out, f"{name}_student.pt"))
            with open(os.path.join(out, f"{name}_info.json"), "w") as f:
                json.dump({"world_size": trainer.args.world_size, "steps": trainer.state.global_step}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
