"""The checkpoint manifest: method and teacher recorded in every checkpoint, and checked when a run resumes."""

import json
import logging
import os
import shutil

import pytest
import torch

from hf_kd import DistillationArguments, KDArguments, KDTrainer, SupervisedTrainer, create_student
from hf_kd.manifest import MANIFEST_NAME, weights_sha256

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])


def net(data, seed):
    torch.manual_seed(seed)
    return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=TINY)


def trainer(cls, data, out, teacher=None, teacher_name=None, **kw):
    args_class = KDArguments if cls is KDTrainer else DistillationArguments
    args = args_class(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, report_to=[], use_cpu=True,
                      dataloader_drop_last=True, seed=0, save_strategy="steps", save_steps=1, disable_tqdm=True, **kw)
    tr = cls(model=net(data, 0), teacher=teacher, args=args, train_dataset=data.train,
             augmentation=data.batch_augment())
    tr.teacher_name = teacher_name  # as the recipes set it
    return tr


@pytest.fixture(scope="module")
def kd_run(data, tmp_path_factory):
    """A 2-step KD run with a checkpoint per step; tests resume copies of its checkpoint-1."""
    out = tmp_path_factory.mktemp("kd")
    teacher = net(data, 1)
    digest = weights_sha256(teacher)
    trainer(KDTrainer, data, out, teacher, "teachers/a").train()
    return out, digest


def copy_checkpoint(kd_run, out, step=1):
    """A fresh output_dir holding the KD run's checkpoint-<step> (resumes write their own checkpoints there)."""
    shutil.copytree(kd_run[0] / f"checkpoint-{step}", out / f"checkpoint-{step}")
    return str(out / f"checkpoint-{step}")


def test_kd_checkpoint_holds_method_and_teacher(kd_run, data, tmp_path):
    out, digest = kd_run
    for step in (1, 2):
        manifest = json.loads((out / f"checkpoint-{step}" / MANIFEST_NAME).read_text())
        assert manifest["method"] == "kd" and manifest["trainer"] == "KDTrainer"
        assert manifest["teacher"] == {"name": "teachers/a", "revision": None, "weights_sha256": digest}
    # hashed before the trainer casts the teacher: --bf16 records the same teacher
    tr = trainer(KDTrainer, data, tmp_path, net(data, 1), bf16=True)
    assert next(tr.teacher.parameters()).dtype == torch.bfloat16
    assert tr.checkpoint_manifest()["teacher"]["weights_sha256"] == digest


def test_resume_with_another_teacher_is_refused(kd_run, data, tmp_path):
    checkpoint = copy_checkpoint(kd_run, tmp_path)
    tr = trainer(KDTrainer, data, tmp_path, net(data, 2), "teachers/b")  # same architecture, other weights
    with pytest.raises(ValueError, match="another teacher") as e:
        tr.train(resume_from_checkpoint=checkpoint)
    assert "teacher 'teachers/a'" in str(e.value) and "teacher 'teachers/b'" in str(e.value)
    assert "--overwrite_output_dir" in str(e.value)
    assert tr.state.global_step == 0 and not os.path.isdir(tmp_path / "checkpoint-2")


def test_resume_with_another_method_is_refused(kd_run, data, tmp_path):
    """A KD checkpoint loads into the plain cross-entropy trainer (same keys): it must be refused, not resumed."""
    copy_checkpoint(kd_run, tmp_path)
    tr = trainer(SupervisedTrainer, data, tmp_path)
    with pytest.raises(ValueError, match="another method and teacher") as e:
        tr.train(resume_from_checkpoint=True)  # the last checkpoint of output_dir
    assert "method 'kd' (KDTrainer)" in str(e.value) and "method 'supervised' (SupervisedTrainer)" in str(e.value)
    assert tr.state.global_step == 0 and not os.path.isdir(tmp_path / "checkpoint-2")
    # and the other way: a plain cross-entropy checkpoint resumed by KD
    manifest_path = os.path.join(tmp_path, "checkpoint-1", MANIFEST_NAME)
    with open(manifest_path, "w") as f:
        json.dump({"method": "supervised", "trainer": "SupervisedTrainer", "teacher": None}, f)
    with pytest.raises(ValueError, match="method 'supervised' \\(SupervisedTrainer\\), no teacher"):
        trainer(KDTrainer, data, tmp_path, net(data, 1)).train(resume_from_checkpoint=True)


def test_resume_with_the_same_method_and_teacher(kd_run, data, tmp_path):
    checkpoint = copy_checkpoint(kd_run, tmp_path)
    tr = trainer(KDTrainer, data, tmp_path, net(data, 1), "teachers/a")  # rebuilt: the same weights
    tr.train(resume_from_checkpoint=checkpoint)
    assert tr.state.global_step == 2 and os.path.isfile(tmp_path / "checkpoint-2" / MANIFEST_NAME)


def test_checkpoint_without_manifest_resumes_with_a_warning(kd_run, data, tmp_path, caplog):
    checkpoint = copy_checkpoint(kd_run, tmp_path)
    os.remove(os.path.join(checkpoint, MANIFEST_NAME))  # as an older hf_kd wrote it
    tr = trainer(KDTrainer, data, tmp_path, net(data, 1))
    with caplog.at_level(logging.WARNING, logger="hf_kd"):
        tr.train(resume_from_checkpoint=checkpoint)
    assert f"has no {MANIFEST_NAME}" in caplog.text and "cannot be checked" in caplog.text
    assert tr.state.global_step == 2


def test_unreadable_manifest_is_a_damaged_checkpoint(kd_run, data, tmp_path):
    checkpoint = copy_checkpoint(kd_run, tmp_path)
    with open(os.path.join(checkpoint, MANIFEST_NAME), "w") as f:
        f.write('{"method": "k')  # cut short
    tr = trainer(KDTrainer, data, tmp_path, net(data, 1))
    with pytest.raises(ValueError, match=f"is damaged: .*{MANIFEST_NAME} cannot be read"):
        tr.train(resume_from_checkpoint=checkpoint)
