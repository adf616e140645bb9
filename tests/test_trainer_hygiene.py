"""A trainer leaves the caller's objects alone, and its bookkeeping does not leak: the teacher stays as given, the
student's config change is said, logged terms are bounded and per train(), schedule arguments are applied or
refused, top-5 only where it means something, and errors name their real cause."""

import logging

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_kd import DistillationArguments, KDArguments, KDTrainer, SupervisedTrainer, create_student
from hf_kd.metrics import ClassificationMetrics

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]}


def tiny(data, seed=0, labels=None, **kw):
    torch.manual_seed(seed)
    labels = list(data.label_names) if labels is None else labels
    return create_student("cifar_resnet20", len(labels), labels, mean=data.mean, std=data.std, model_args=TINY,
                          **kw)


def args(tmp_path, cls=KDArguments, **kw):
    base = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, max_steps=2, report_to=[],
                use_cpu=True, save_strategy="no", eval_strategy="no", disable_tqdm=True, logging_steps=1)
    return cls(**{**base, **kw})


def test_the_callers_teacher_is_left_as_given(data, tmp_path):
    """It was cast to bf16, frozen, put in eval mode and in channels_last in place."""
    teacher = tiny(data, seed=1).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = KDTrainer(model=tiny(data), teacher=teacher, args=args(tmp_path, bf16=True, channels_last=True),
                        train_dataset=data.train)
    trainer.train()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    conv = next(p for p in teacher.parameters() if p.dim() == 4)
    assert conv.is_contiguous()  # not channels_last
    # the trainer's own copy is what the flags ask for
    used = trainer.teacher
    assert not used.training and not any(p.requires_grad for p in used.parameters())
    assert next(used.parameters()).dtype == torch.bfloat16
    assert next(p for p in used.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def test_a_changed_student_normalization_is_said(data, tmp_path, caplog):
    student = tiny(data)
    with caplog.at_level(logging.WARNING, logger="hf_kd.trainers.base"):
        SupervisedTrainer(model=student, args=args(tmp_path, DistillationArguments, norm_mean=[0.5] * 3,
                                                   norm_std=[0.25] * 3), train_dataset=data.train)
    assert "set to the normalisation it is trained with, [0.5, 0.5, 0.5] / [0.25, 0.25, 0.25]" in caplog.text
    assert student.config.pretrained_cfg["mean"] == [0.5] * 3  # the config describes how the model is trained
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_kd.trainers.base"):
        SupervisedTrainer(model=tiny(data), args=args(tmp_path, DistillationArguments), train_dataset=data.train)
    assert "set to the normalisation" not in caplog.text  # unchanged: nothing to say


def test_logged_terms_are_bounded_and_do_not_leak_into_the_next_train(data, tmp_path):
    teacher = tiny(data, seed=1)
    trainer = KDTrainer(model=tiny(data), teacher=teacher, args=args(tmp_path, logging_strategy="no", max_steps=3),
                        train_dataset=data.train)
    trainer.train()
    # no log fired: one running sum per term, not one tensor per step
    assert set(trainer._terms) == {"ce", "kd"}
    assert all(total.numel() == 1 and count == 3 for total, count in trainer._terms.values())
    seen = []

    class AtBegin(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            seen.append(dict(trainer._terms))

    trainer.add_callback(AtBegin())
    trainer.train()  # e.g. the next hyperparameter-search trial: it must not report the previous tail
    assert seen == [{}]


@pytest.mark.parametrize("given, message", [
    (dict(warmup_epochs=2), "--warmup_epochs 2 apply to the --lr_milestones schedule"),
    (dict(lr_gamma=0.2), "--lr_gamma 0.2 apply to the --lr_milestones schedule"),
    (dict(lr_milestones=[3], warmup_steps=10), "--warmup_steps 10 is transformers' warm-up"),
    (dict(lr_decay="cosine", lr_milestones=[3]), "--lr_decay cosine takes no --lr_milestones"),
    (dict(lr_decay="cosine", warmup_epochs=5, num_train_epochs=5), "needs warmup_epochs < num_train_epochs"),
    (dict(lr_decay="cosine", warmup_steps=10), "--warmup_steps 10 is transformers' warm-up"),
])
def test_schedule_arguments_are_applied_or_refused(tmp_path, given, message):
    """They were silently ignored: warm-up and gamma without milestones, transformers' warm-up with them."""
    with pytest.raises(ValueError, match=message):
        args(tmp_path, **given)
    args(tmp_path, lr_milestones=[3], warmup_epochs=2, lr_gamma=0.2)  # the schedule they belong to
    args(tmp_path, lr_decay="cosine", warmup_epochs=2, num_train_epochs=4)


def test_top5_only_with_more_than_five_classes(data, tmp_path):
    """With 5 classes or fewer every label is in the top 5: top-5 read 1.0 whatever the model."""
    ranked = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    metrics = ClassificationMetrics(num_labels=3)
    from transformers import EvalPrediction

    out = metrics(EvalPrediction(predictions=ranked, label_ids=[0, 0, 2]))
    assert out == {"top1": pytest.approx(1 / 3)}
    trainer = SupervisedTrainer(model=tiny(data, labels=["a", "b", "c"]), args=args(tmp_path, DistillationArguments),
                                train_dataset=data.train)
    assert trainer.compute_metrics.ks == (1,)
    assert ClassificationMetrics(num_labels=10).ks == (1, 5)


def test_a_failure_that_is_not_the_network_is_not_called_unreachable(monkeypatch):
    from huggingface_hub import HfApi

    from hf_kd.checks import check_dataset

    def broken(*a, **kw):
        raise RuntimeError("a bug, not the network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("hf_kd.checks._offline", lambda: False)
    monkeypatch.setattr(HfApi, "repo_info", broken)
    with pytest.raises(RuntimeError, match="a bug, not the network"):
        check_dataset("someone/some-dataset")


def test_a_failure_that_is_not_the_file_is_not_called_damaged(data, tmp_path, monkeypatch):
    trainer = SupervisedTrainer(model=tiny(data), args=args(tmp_path, DistillationArguments, save_strategy="steps",
                                                            save_steps=2), train_dataset=data.train)
    trainer.train()
    checkpoint = str(tmp_path / "run" / "checkpoint-2")

    def broken(*a, **kw):
        raise MemoryError("out of host memory")

    monkeypatch.setattr("safetensors.torch.load_file", broken)
    with pytest.raises(MemoryError, match="out of host memory"):
        trainer._load_from_checkpoint(checkpoint)
