"""Cheap checks first: a typo in a network name is reported before any data loads or any teacher trains, with the
closest names first; a ViT student takes the data's size; --max_steps 0 is refused; the fast path on the CPU does
not ask for pinned memory."""

import pytest
import torch

import hf_kd.recipes
from hf_kd import DistillationArguments, KDTrainer, SupervisedTrainer, create_student
from hf_kd.recipes import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_data(monkeypatch):
    """Any data loading fails the test: the checks must come first."""
    def load(*a, **kw):
        raise AssertionError("the data was loaded before the names were checked")

    monkeypatch.setattr(hf_kd.recipes, "load_data", load)


def test_a_student_typo_is_reported_before_the_data_loads_closest_first(tmp_path, no_data):
    with pytest.raises(ValueError, match=r"Unknown --student 'cifar_resnt32'.*Closest names: cifar_resnet32, "):
        run(SupervisedTrainer, argv=["--student", "cifar_resnt32", "--output_dir", str(tmp_path / "o")])


def test_an_auto_teacher_typo_is_reported_before_anything_trains(tmp_path, no_data):
    with pytest.raises(ValueError, match=r"Unknown --teacher_architecture 'cifar_resnet32x5'"):
        run(KDTrainer, argv=["--teacher_architecture", "cifar_resnet32x5", "--output_dir", str(tmp_path / "o")])


def test_a_vit_student_takes_the_datas_size(data, tmp_path):
    """Built at 224 px, a ViT failed at its first step on 32-px data (timm: input height doesn't match model)."""
    torch.manual_seed(0)
    student = create_student("vit_tiny_patch16_224", data.num_labels, data.label_names, mean=data.mean,
                             std=data.std, input_size=data.input_size, model_args={"depth": 1})
    assert student.config.model_args["img_size"] == (32, 32)
    args = DistillationArguments(output_dir=str(tmp_path / "vit"), per_device_train_batch_size=8, max_steps=1,
                                 report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                                 disable_tqdm=True)
    trainer = SupervisedTrainer(model=student, args=args, train_dataset=data.train, eval_dataset=data.eval)
    trainer.train()
    assert trainer.state.global_step == 1 and "eval_top1" in trainer.evaluate()
    # a size given by the user is kept
    kept = create_student("vit_tiny_patch16_224", 10, input_size=(3, 32, 32), model_args={"img_size": 64})
    assert kept.config.model_args["img_size"] == 64


def test_max_steps_0_is_refused(tmp_path):
    """transformers trained one step and exported."""
    with pytest.raises(ValueError, match="--max_steps 0 would train nothing"):
        DistillationArguments(output_dir=str(tmp_path), report_to=[], max_steps=0)


def test_the_fast_path_on_the_cpu_does_not_ask_for_pinned_memory(tmp_path):
    """transformers warned at every trainer that non_blocking was on but pinned memory off."""
    args = DistillationArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, fast_path=True)
    assert args.dataloader_pin_memory is False and args.accelerator_config.non_blocking is False
