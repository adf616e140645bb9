"""DistillationTrainer base + KDTrainer: KD loss, export contract, exact resume, teacher handling, schedule, errors."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_kd import (DistillationArguments, KDArguments, KDTrainer, SupervisedTrainer, create_student, kd_kl_div,
                   load_image_data)
from hf_kd.methods import methods

pytestmark = pytest.mark.usefixtures("one_thread")


def student(data, arch="cifar_resnet8x4", seed=0):
    torch.manual_seed(seed)
    return create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std)


def kd_args(tmp, **kw):
    base = dict(output_dir=str(tmp), max_steps=4, per_device_train_batch_size=8, report_to=[], use_cpu=True,
                dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9", learning_rate=0.05,
                logging_steps=2, save_strategy="no")
    base.update(kw)
    return KDArguments(**base)


# --- KD loss ------------------------------------------------------------------------------------------------------
def test_kd_loss_value_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[0.0, 4.0, 2.0]])
    T = 2.0
    ps = [math.exp(v / T) for v in (1.0, 2.0, 0.0)]
    pt = [math.exp(v / T) for v in (0.0, 4.0, 2.0)]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    expected = T * T * sum(b * math.log(b / a) for a, b in zip(ps, pt))
    assert kd_kl_div(s, t, T).item() == pytest.approx(expected, rel=1e-6)
    # batchmean: the mean over samples, not the sum
    assert kd_kl_div(s.repeat(4, 1), t.repeat(4, 1), T).item() == pytest.approx(expected, rel=1e-6)
    assert kd_kl_div(t, t, T).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_gradient_only_to_student():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    T = 4.0
    kd_kl_div(s, t, T).backward()
    assert t.grad is None
    # d/ds [T^2 KL] = T * (softmax(s/T) - softmax(t/T)) / B
    expected = T * (F.softmax(s.detach() / T, -1) - F.softmax(t.detach() / T, -1)) / 4
    torch.testing.assert_close(s.grad, expected)


# --- trainer ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(data):
    return student(data, "cifar_resnet20", seed=1)


def test_kd_run_export_contract(data, teacher, tmp_path):
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    tr = KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path, save_strategy="steps", save_steps=2,
                                                                      eval_strategy="steps", eval_steps=4),
                   train_dataset=data.train, eval_dataset=data.eval, augmentation=data.batch_augment())
    tr.train()
    # the teacher: eval mode, frozen, bit-identical (weights and BN buffers), not in the optimizer or checkpoint
    assert not tr.teacher.training and all(not p.requires_grad for p in tr.teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), k
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in tr.model.parameters()}
    assert not opt_params & {id(p) for p in teacher.parameters()}
    ckpt = load_file(os.path.join(tmp_path, "checkpoint-4", "model.safetensors"))
    assert all(k.startswith("student.") for k in ckpt)
    # per-term logs and top-1/top-5 metrics
    logs = [e for e in tr.state.log_history if "loss" in e]
    assert logs and all("loss_ce" in e and "loss_kd" in e for e in logs)
    evals = [e for e in tr.state.log_history if "eval_top1" in e]
    assert evals and 0 <= evals[-1]["eval_top1"] <= evals[-1]["eval_top5"] <= 1

    export = tmp_path / "export"
    tr.save_model(str(export))
    assert sorted(os.listdir(export)) == ["README.md", "config.json", "model.safetensors", "modeling_hf_kd.py",
                                          "training_args.bin", "training_curves.png"]
    keys = set(load_file(export / "model.safetensors"))
    assert keys == set(tr.student.timm_model.state_dict())  # the student alone, timm-native keys
    loaded = AutoModelForImageClassification.from_pretrained(str(export)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, tr.student.eval()(x).logits)
    card = (export / "README.md").read_text()
    assert "model-index" in card and "knowledge-distillation" in card and "kd_weight" in card


def test_kd_loss_in_trainer_matches_formula(data, teacher, tmp_path):
    tr = KDTrainer(model=student(data), teacher=teacher, args=kd_args(tmp_path, ce_weight=0.3, kd_weight=0.7,
                                                                      temperature=3.0),
                   train_dataset=data.train, augmentation=data.batch_augment("none"))
    batch = tr.data_collator([data.train[i] for i in range(8)])
    inputs = tr._prepare_inputs(batch)
    tr.model.eval()
    with torch.no_grad():
        loss, _ = tr.training_loss(tr.model, inputs["pixel_values"], inputs["labels"])  # the objective, BN in eval
        s = tr.student(inputs["pixel_values"]).logits
        t = tr.teacher(inputs["pixel_values"]).logits  # the trainer's frozen copy (the caller's is left in train mode)
    expected = 0.3 * F.cross_entropy(s, inputs["labels"]) + 0.7 * kd_kl_div(s, t, 3.0)
    torch.testing.assert_close(loss, expected)


class StopAt(TrainerCallback):
    """Interrupt a run after ``step`` optimizer steps (as a crash would), keeping its schedule for max_steps."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def train_steps(data, tmp, max_steps, resume=None, stop_at=None, **kw):
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp), max_steps=max_steps, per_device_train_batch_size=8, report_to=[], use_cpu=True,
        dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9", learning_rate=0.05,
        save_strategy="steps", save_steps=3, lr_scheduler_type="cosine", **kw),
        train_dataset=data.train, augmentation=data.batch_augment(),
        callbacks=[StopAt(stop_at)] if stop_at else None)
    tr.train(resume_from_checkpoint=resume)
    return tr


def test_exact_resume_mid_epoch(data, tmp_path):
    """6 steps straight == 3 steps + resume + 3 steps, bit for bit (8 steps/epoch: the resume is mid-epoch)."""
    straight = train_steps(data, tmp_path / "a", 6)
    train_steps(data, tmp_path / "b", 6, stop_at=3)
    resumed = train_steps(data, tmp_path / "b", 6, resume=str(tmp_path / "b" / "checkpoint-3"))
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_mismatch_is_a_clear_error(data, tmp_path):
    train_steps(data, tmp_path / "a", 6, stop_at=3)
    tr = SupervisedTrainer(model=student(data, "cifar_resnet20"), args=DistillationArguments(
        output_dir=str(tmp_path / "c"), max_steps=4, report_to=[], use_cpu=True, per_device_train_batch_size=8),
        train_dataset=data.train)
    with pytest.raises(ValueError, match="does not match this SupervisedTrainer run"):
        tr.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))


def test_lr_milestones_multistep_by_epoch(data, tmp_path):
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=16, dataloader_drop_last=True,
        report_to=[], use_cpu=True, learning_rate=0.1, lr_milestones=[1, 2], lr_gamma=0.1),
        train_dataset=data.train)
    assert tr.steps_per_epoch() == 4
    tr.create_optimizer_and_scheduler(12)
    lrs = []
    for _ in range(12):
        lrs.append(tr.lr_scheduler.get_last_lr()[0])
        tr.optimizer.step()
        tr.lr_scheduler.step()
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001] * 4)


def test_steps_per_epoch_counts_a_last_short_accumulation_group_as_trainer_does(data, tmp_path):
    """5 batches at gradient_accumulation_steps 2 are 3 optimizer steps per epoch in transformers, so the epoch-based
    schedule (lr_milestones, warmup_epochs) must count 3 (it counted 2: the lr dropped a step early each epoch)."""
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8, gradient_accumulation_steps=2,
        report_to=[], use_cpu=True, lr_milestones=[1], save_strategy="no"), train_dataset=data.train.select(range(40)))
    tr.train()
    assert tr.state.max_steps == 6 and tr.steps_per_epoch() == 3


def test_optimizer_cls_and_kwargs_is_used_with_the_trainers_parameter_groups(data, tmp_path):
    """Trainer(optimizer_cls_and_kwargs=...) chooses the optimizer (it was ignored: AdamW was built instead)."""
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, weight_decay=5e-4), train_dataset=data.train,
        optimizer_cls_and_kwargs=(torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9}))
    opt = tr.create_optimizer()
    assert type(opt) is torch.optim.RMSprop and opt.defaults["alpha"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4]  # decay_all_parameters: one group


def test_weight_decay_on_all_parameters_by_default(data, tmp_path):
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, weight_decay=5e-4), train_dataset=data.train)
    tr.create_optimizer()
    assert len(tr.optimizer.param_groups) == 1 and tr.optimizer.param_groups[0]["weight_decay"] == 5e-4
    tr2 = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, weight_decay=5e-4, decay_all_parameters=False),
        train_dataset=data.train)
    tr2.create_optimizer()
    assert [g["weight_decay"] for g in tr2.optimizer.param_groups] == [5e-4, 0.0]


def test_teacher_label_mismatch_errors(data, tmp_path):
    other = create_student("cifar_resnet20", 7)
    with pytest.raises(ValueError, match="only number the classes"):  # (more cases: tests/test_own_teacher.py)
        KDTrainer(model=student(data), teacher=other, args=kd_args(tmp_path), train_dataset=data.train)
    renamed = create_student("cifar_resnet20", 10, [f"c{i}" for i in range(10)])
    named = create_student("cifar_resnet20", 10, [f"d{i}" for i in range(10)])
    with pytest.raises(ValueError, match="predict different classes"):
        KDTrainer(model=named, teacher=renamed, args=kd_args(tmp_path), train_dataset=data.train)


def test_kd_needs_teacher_and_right_args(data, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):  # at construction, from KDTrainer.uses_teacher
        KDTrainer(model=student(data), args=kd_args(tmp_path), train_dataset=data.train)
    with pytest.raises(TypeError, match="KDTrainer needs KDArguments"):
        KDTrainer(model=student(data), args=DistillationArguments(output_dir=str(tmp_path)))


def test_preprocessing_travels_with_the_export(data, tmp_path):
    """The normalisation the model trained with is what the exported config (and so pipeline) uses."""
    s = create_student("cifar_resnet8x4", data.num_labels, data.label_names)  # built without mean/std
    tr = SupervisedTrainer(model=s, args=DistillationArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
                           train_dataset=data.train, augmentation=data.batch_augment())
    tr.save_model()
    loaded = AutoModelForImageClassification.from_pretrained(str(tmp_path))
    assert loaded.config.pretrained_cfg["mean"] == pytest.approx(list(data.mean))


def test_evaluation_scores_every_sample_with_drop_last(data, tmp_path):
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, dataloader_drop_last=True,
        per_device_train_batch_size=24, per_device_eval_batch_size=24), train_dataset=data.train,
        eval_dataset=data.eval)
    assert len(tr.get_train_dataloader()) == 64 // 24  # training drops the ragged tail
    assert sum(len(b["labels"]) for b in tr.get_eval_dataloader()) == 32  # evaluation does not


def test_pipeline_preprocesses_like_training(data, tmp_path):
    """pipeline("image-classification") on a raw image gives the scores of the model on the trainer's eval input."""
    from transformers import pipeline

    from hf_kd.data import digits_dataset

    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(output_dir=str(tmp_path), report_to=[],
                                                                           use_cpu=True),
                           train_dataset=data.train, augmentation=data.batch_augment())
    tr.save_model()
    raw = digits_dataset()["test"][0]["image"]
    x = tr.augmentation(load_image_data("digits").eval[0]["pixel_values"][None], train=False)
    with torch.no_grad():
        probs = tr.student.eval()(x).logits.softmax(-1)[0]
    res = pipeline("image-classification", model=str(tmp_path), top_k=3)(raw)
    for r in res:
        assert r["score"] == pytest.approx(probs[data.label_names.index(r["label"])].item(), abs=1e-4)


def test_bf16_teacher_and_channels_last(data, teacher, tmp_path):
    """With bf16 the frozen teacher is held in bf16 (no fp32 copy); channels_last runs every network in that format."""
    import copy

    tr = KDTrainer(model=student(data), teacher=copy.deepcopy(teacher),
                   args=kd_args(tmp_path, bf16=True, channels_last=True, max_steps=1),
                   train_dataset=data.train, augmentation=data.batch_augment())
    assert all(p.dtype == torch.bfloat16 for p in tr.teacher.parameters())
    conv = tr.student.timm_model.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    tr.train()
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())


def test_channels_last_checkpoint_and_exact_resume(data, teacher, tmp_path):
    """channels_last conv weights are not contiguous, which safetensors refuses: checkpoints must still be written,
    resume exactly and export a loadable student."""
    import copy

    def run(max_steps, resume=None):
        torch.manual_seed(0)
        tr = KDTrainer(model=student(data), teacher=copy.deepcopy(teacher), train_dataset=data.train,
                       args=kd_args(tmp_path, max_steps=max_steps, channels_last=True, save_strategy="steps",
                                    save_steps=2), augmentation=data.batch_augment())
        tr.train(resume_from_checkpoint=resume)
        return tr

    straight = run(4)
    state = {k: v.clone() for k, v in straight.student.state_dict().items()}
    resumed = run(4, resume=str(tmp_path / "checkpoint-2"))
    for k, v in resumed.student.state_dict().items():
        assert torch.equal(v, state[k]), k
    resumed.save_model(str(tmp_path / "export"))
    loaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "export"))
    for k, v in loaded.timm_model.state_dict().items():
        assert torch.equal(v, state["timm_model." + k]), k


def test_teacher_follows_accelerate_launch_mixed_precision(data, teacher, tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets ACCELERATE_MIXED_PRECISION, not --bf16: the teacher is still
    held in bf16."""
    import copy

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    tr = KDTrainer(model=student(data), teacher=copy.deepcopy(teacher), args=kd_args(tmp_path, max_steps=1),
                   train_dataset=data.train, augmentation=data.batch_augment())
    assert not tr.args.bf16 and tr.args.mixed_precision == "bf16"
    assert all(p.dtype == torch.bfloat16 for p in tr.teacher.parameters())


def test_sync_batchnorm_is_a_clear_error_on_cpu_and_a_no_op_in_one_process(data, tmp_path, monkeypatch):
    """SyncBatchNorm needs GPUs: a multi-process CPU run says so; one process keeps plain BatchNorm."""
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, sync_batchnorm=True), train_dataset=data.train)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in tr.model.modules())
    monkeypatch.setattr(DistillationArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="sync_batchnorm needs GPUs"):
        SupervisedTrainer(model=student(data), args=DistillationArguments(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, sync_batchnorm=True), train_dataset=data.train)


@pytest.mark.parametrize("name", list(methods()))
def test_gradient_accumulation_divides_each_micro_batch_loss(data, tmp_path, name):
    """compute_loss returns per-batch means, so with 2 micro-batches per step each loss must be halved before its
    backward. transformers skips that (and multiplies by the world size under DDP) for a model whose forward takes
    **kwargs unless it sets accepts_loss_kwargs = False: gradients then come out 2x too large."""
    cls = methods()[name]
    teacher = student(data, "cifar_resnet20", seed=1) if cls.uses_teacher == "required" else None
    args = cls.args_class(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                          gradient_accumulation_steps=2, report_to=[], use_cpu=True, dataloader_drop_last=True,
                          save_strategy="no", disable_tqdm=True)
    tr = cls(model=student(data, "cifar_resnet20"), teacher=teacher, args=args, train_dataset=data.train,
             augmentation=data.batch_augment("none"))
    seen = []
    compute, backward = tr.compute_loss, tr.accelerator.backward

    def record_compute(*a, **k):
        loss = compute(*a, **k)
        seen.append(("loss", loss.item()))
        return loss

    def record_backward(loss, **k):
        seen.append(("backward", loss.item()))
        return backward(loss, **k)

    tr.compute_loss, tr.accelerator.backward = record_compute, record_backward
    tr.train()
    assert [k for k, _ in seen] == ["loss", "backward"] * 2
    for (_, loss), (_, backed) in zip(seen[::2], seen[1::2]):
        assert backed == pytest.approx(loss / 2, rel=1e-5)


def test_no_gradient_clipping_by_default():
    """None of the methods' official code clips gradients; transformers' default would clip at 1.0."""
    import hf_kd

    for name in ["DistillationArguments", "KDArguments", "ProjectorKDArguments", "FFSDArguments", "SelfKDArguments",
                 "MixSKDArguments"]:
        assert getattr(hf_kd, name)(output_dir="x").max_grad_norm == 0.0, name


def test_norm_mean_std_override_reaches_training_and_export(data, tmp_path):
    """--norm_mean/--norm_std (any trainer): the step normalises with them and the export carries them exactly."""
    mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
    tr = SupervisedTrainer(model=student(data), args=DistillationArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, norm_mean=mean, norm_std=std),
        train_dataset=data.train, augmentation=data.batch_augment())
    assert tr.augmentation.kind == data.batch_augment().kind
    torch.testing.assert_close(tr.augmentation.mean.flatten(), torch.tensor(mean))
    tr.save_model()
    cfg = AutoModelForImageClassification.from_pretrained(str(tmp_path)).config.pretrained_cfg
    assert cfg["mean"] == mean and cfg["std"] == std
    with pytest.raises(ValueError, match="norm_mean and norm_std"):
        DistillationArguments(output_dir=str(tmp_path), norm_mean=mean)
