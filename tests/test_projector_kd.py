"""PEFD / ProjectorKDTrainer: loss and projector ensemble on hand-built tensors, frozen teacher, export, resume."""

import math
import os

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hf_kd  # noqa: F401
from hf_kd.losses.projector_kd import projector_cosine_loss
from hf_kd.models import create_student
from hf_kd.modules.projector_kd import ProjectorEnsemble
from hf_kd.modules.projector_kd import ProjectorKDModel
from hf_kd.trainers.projector_kd import ProjectorKDArguments, ProjectorKDTrainer

# tiny CIFAR ResNets (one block per stage): pooled feature width = last channel count
TINY_S = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])  # d_s = 32
TINY_T = dict(channels=[8, 8, 16, 16], blocks=[1, 1, 1])  # d_t = 16 (differs from d_s)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data, model_args, seed=0, label_names=None, num_labels=None):
    torch.manual_seed(seed)
    n = num_labels or data.num_labels
    names = label_names or (data.label_names if num_labels is None else None)
    return create_student("cifar_resnet20", n, names, mean=data.mean, std=data.std, model_args=model_args)


def make_args(tmp, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9",
                learning_rate=0.05, logging_steps=1, save_strategy="no")
    base.update(kw)
    return ProjectorKDArguments(**base)


def make_trainer(data, tmp, teacher=None, seed_student=0, student_args=TINY_S, **kw):
    teacher = teacher if teacher is not None else tiny(data, TINY_T, seed=123)
    student = tiny(data, student_args, seed=seed_student)
    return ProjectorKDTrainer(model=student, teacher=teacher, args=make_args(tmp, **kw), train_dataset=data.train,
                              eval_dataset=data.eval, augmentation=data.batch_augment())


# --- loss: values and gradients on hand-built tensors ---------------------------------------------------------------
def test_loss_value_by_hand():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 5.0], [4.0, 3.0]])
    # cosines: 1, 1/sqrt(2), (12 + 12) / 25
    expected = ((1 - 1) + (1 - 1 / math.sqrt(2)) + (1 - 24 / 25)) / 3
    assert projector_cosine_loss(g, t).item() == pytest.approx(expected, abs=1e-6)
    # scale invariance on both sides (cosine), and averaging (not summing) over the batch
    assert projector_cosine_loss(5 * g, 0.1 * t).item() == pytest.approx(expected, abs=1e-6)
    assert projector_cosine_loss(g[1:2], t[1:2]).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_loss_gradient_by_hand_and_teacher_gets_none():
    g = torch.tensor([[1.0, 1.0], [3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[0.0, 5.0], [4.0, 3.0]], requires_grad=True)
    projector_cosine_loss(g, t).backward()
    assert t.grad is None  # the teacher feature is detached inside the loss
    # d/dg_b (1/B) sum (1 - cos_b) = -(t_hat_b - cos_b * g_hat_b) / (||g_b|| * B)
    with torch.no_grad():
        gh, th = g / g.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
        cos = (gh * th).sum(1, keepdim=True)
        expected = -(th - cos * gh) / (g.norm(dim=1, keepdim=True) * 2)
    torch.testing.assert_close(g.grad, expected)
    # row 0 by hand: g_hat = (1,1)/sqrt2, t_hat = (0,1), cos = 1/sqrt2 -> -((0,1) - (1/2,1/2)) / (2 sqrt2)
    torch.testing.assert_close(g.grad[0], torch.tensor([0.5, -0.5]) / (2 * math.sqrt(2)))


def test_loss_eps_guard_on_all_zero_projection():
    """Official formula: 0/0 = NaN for an all-zero ReLU output; ours gives cos 0 (loss 1) and finite gradients."""
    g = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 2.0]])
    loss = projector_cosine_loss(g, t)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(g.grad).all()
    # the unguarded official computation really is NaN here (what the guard is for)
    gz = g.detach()
    official = (1 - (gz / gz.pow(2).sum(1, keepdim=True).sqrt() * t / t.norm(dim=1, keepdim=True)).sum(1)).mean()
    assert torch.isnan(official)
    # an all-zero teacher row is guarded too
    assert projector_cosine_loss(torch.ones(1, 3), torch.zeros(1, 3)).item() == pytest.approx(1.0)


def test_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        projector_cosine_loss(torch.ones(2, 3), torch.ones(2, 4))


# --- projector ensemble ---------------------------------------------------------------------------------------------
def hand_ensemble():
    ens = ProjectorEnsemble(1, 2, num_projectors=3)
    with torch.no_grad():
        for lin, w in zip(ens.linears, ([[1.0], [-1.0]], [[-2.0], [1.0]], [[0.0], [3.0]])):
            lin.weight.copy_(torch.tensor(w))
            lin.bias.zero_()
    return ens


def test_ensemble_averages_after_relu():
    ens = hand_ensemble()
    x = torch.tensor([[1.0]])
    # ReLU outputs (1,0), (0,1), (0,3) -> mean (1/3, 4/3); ReLU of the mean would be relu((-1/3, 1)) = (0, 1)
    torch.testing.assert_close(ens(x), torch.tensor([[1 / 3, 4 / 3]]))


def test_ensemble_gradient_skips_dead_relu_units():
    ens = hand_ensemble()
    x = torch.tensor([[1.0]])
    ens(x).sum().backward()
    # d out_j / d W_i[j] = x / 3 where projector i's unit j is active, 0 where its ReLU is off
    torch.testing.assert_close(ens.linears[0].weight.grad, torch.tensor([[1 / 3], [0.0]]))
    torch.testing.assert_close(ens.linears[1].weight.grad, torch.tensor([[0.0], [1 / 3]]))
    torch.testing.assert_close(ens.linears[2].weight.grad, torch.tensor([[0.0], [1 / 3]]))  # pre-act. 0: ReLU' = 0


def test_ensemble_defaults_three_default_init_linears():
    torch.manual_seed(7)
    ens = ProjectorEnsemble(5, 4)
    torch.manual_seed(7)
    ref = [nn.Linear(5, 4) for _ in range(3)]
    assert ens.num_projectors == 3 and len(list(ens.children())) == 1
    for lin, r in zip(ens.linears, ref):
        assert lin.bias is not None
        assert torch.equal(lin.weight, r.weight) and torch.equal(lin.bias, r.bias)
    with pytest.raises(ValueError, match="num_projectors"):
        ProjectorEnsemble(5, 4, num_projectors=0)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        ens(torch.ones(2, 6))


# --- trainer ----------------------------------------------------------------------------------------------------------
def test_projector_dims_differ_or_equal_and_dry_run_keeps_bn(data, tmp_path):
    student = tiny(data, TINY_S)
    buffers = {k: v.clone() for k, v in student.state_dict().items()}
    tr = ProjectorKDTrainer(model=student, teacher=tiny(data, TINY_T), args=make_args(tmp_path))
    ens = tr.projectors
    assert isinstance(tr.model, ProjectorKDModel) and ens.num_projectors == 3
    assert (ens.in_features, ens.out_features) == (32, 16)
    assert all(tuple(lin.weight.shape) == (16, 32) for lin in ens.linears)
    # the dry runs measuring d_s / d_t ran in eval mode: no BN running statistic moved, training flag restored
    assert all(torch.equal(buffers[k], v) for k, v in tr.student.state_dict().items())
    assert tr.student.training
    # equal dimensions still get an ensemble (the paper's point), and num_projectors is honoured
    tr2 = ProjectorKDTrainer(model=tiny(data, TINY_S), teacher=tiny(data, TINY_S, seed=5),
                             args=make_args(tmp_path, num_projectors=2))
    assert (tr2.projectors.in_features, tr2.projectors.out_features, tr2.projectors.num_projectors) == (32, 32, 2)


def test_compute_loss_combines_weighted_terms(data, tmp_path):
    tr = make_trainer(data, tmp_path, kd_weight=0.5, ce_weight=0.7, feature_weight=25.0, temperature=4.0)
    batch = tr.data_collator([data.train[i] for i in range(8)])
    x = tr.augmentation(batch["pixel_values"], train=False)
    y = batch["labels"]
    tr.model.eval()
    with torch.no_grad():
        loss, _ = tr.training_loss(tr.model, x, y)  # the training objective, BN in eval mode
        s = tr.student.forward_kd(x, stages=False)
        t = tr.teacher.forward_kd(x, stages=False)
        g = tr.projectors(s.pre_logits)
        ce = nn.functional.cross_entropy(s.logits, y)
        cos = nn.functional.cosine_similarity(g, t.pre_logits, dim=1)
        kd = nn.functional.kl_div(torch.log_softmax(s.logits / 4, 1), torch.softmax(t.logits / 4, 1),
                                  reduction="batchmean") * 16
    expected = 0.7 * ce + 0.5 * kd + 25.0 * (1 - cos).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_feature_loss_gradient_reaches_backbone_and_projectors_only(data, tmp_path):
    """beta * L_PE alone: gradient in the student backbone (through the projectors) and in every projector; none in
    the student's classifier (L_PE sits on the pre-logits), none in the teacher."""
    tr = make_trainer(data, tmp_path, ce_weight=0.0, kd_weight=0.0, feature_weight=1.0)
    batch = tr.data_collator([data.train[i] for i in range(8)])
    inputs = {"pixel_values": tr.augmentation(batch["pixel_values"], train=False), "labels": batch["labels"]}
    tr.model.train()
    tr.compute_loss(tr.model, inputs).backward()
    named = dict(tr.model.named_parameters())
    fc_grad = named["student.timm_model.fc.weight"].grad
    assert fc_grad is None or not fc_grad.any()  # 0 * CE keeps it in the graph with a zero gradient
    stem = [p for n, p in named.items() if n.startswith("student.timm_model.stem")]
    assert stem and all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem)
    for lin in tr.projectors.linears:
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tr.teacher.parameters())


def test_training_frozen_teacher_and_optimizer(data, tmp_path):
    teacher = tiny(data, TINY_T, seed=3)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}  # weights AND BN buffers
    tr = make_trainer(data, tmp_path, teacher=teacher, max_steps=2, weight_decay=0.0)
    before_s = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    # the teacher: bit-identical (incl. running_mean/var, num_batches_tracked), no grad, eval mode throughout
    after_t = tr.teacher.state_dict()
    assert set(after_t) == set(before_t) and any("running_mean" in k for k in after_t)
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)
    assert all(p.grad is None and not p.requires_grad for p in tr.teacher.parameters())
    assert not tr.teacher.training and not any(m.training for m in tr.teacher.modules())
    # the optimizer holds exactly the student + projector parameters, none of the teacher's
    opt_ids = {id(p) for group in tr.optimizer.param_groups for p in group["params"]}
    assert opt_ids == {id(p) for p in tr.model.parameters()}
    assert opt_ids.isdisjoint({id(p) for p in tr.teacher.parameters()})
    assert {id(p) for p in tr.projectors.parameters()} <= opt_ids
    # training moved the student and every projector
    after_s = tr.model.state_dict()
    assert not torch.equal(before_s["student.timm_model.fc.weight"], after_s["student.timm_model.fc.weight"])
    for i in range(3):
        k = f"aux.projectors.linears.{i}.weight"
        assert not torch.equal(before_s[k], after_s[k]), k
    logged = [e for e in tr.state.log_history if "loss_feature" in e]
    assert logged and "loss_ce" in logged[0] and "loss_kd" not in logged[0]  # alpha = 0: no KD term


def test_export_is_student_only_and_loads_with_automodel(data, tmp_path):
    tr = make_trainer(data, tmp_path / "run", max_steps=2)
    tr.train()
    out = str(tmp_path / "export")
    tr.save_model(out)
    keys = set(load_file(os.path.join(out, "model.safetensors")))
    assert keys == set(tr.student.timm_model.state_dict())  # timm-native student keys only
    assert not any("projector" in k or "linears" in k or "aux" in k or "teacher" in k for k in keys)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, tr.student.eval()(pixel_values=x).logits)
    metrics = tr.evaluate()
    assert "eval_top1" in metrics


def test_exact_resume_including_projectors(data, tmp_path):
    teacher = tiny(data, TINY_T, seed=123)
    kw = dict(max_steps=4, save_steps=2, save_strategy="steps")
    a = make_trainer(data, tmp_path / "a", teacher=teacher, **kw)
    a.train()
    b = make_trainer(data, tmp_path / "b", teacher=teacher, **kw)
    b.train()
    ckpt = tmp_path / "b" / "checkpoint-2"
    assert any(k.startswith("aux.projectors.") for k in load_file(str(ckpt / "model.safetensors")))
    # a different init seed: everything (student and projectors) must come from the checkpoint
    c = make_trainer(data, tmp_path / "b", teacher=teacher, seed_student=1, **kw)
    c.train(resume_from_checkpoint=str(ckpt))
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert set(sa) == set(sc) and any(k.startswith("aux.projectors.") for k in sa)
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k


def test_teacher_required_and_label_mismatch_errors(data, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        ProjectorKDTrainer(model=tiny(data, TINY_S), args=make_args(tmp_path))
    with pytest.raises(ValueError, match="only number the classes"):
        ProjectorKDTrainer(model=tiny(data, TINY_S), teacher=tiny(data, TINY_T, num_labels=5),
                           args=make_args(tmp_path))
    names = [f"class_{i}" for i in range(10)]
    reordered = ProjectorKDTrainer(model=tiny(data, TINY_S, label_names=names),
                                   teacher=tiny(data, TINY_T, label_names=names[::-1]), args=make_args(tmp_path))
    assert reordered.teacher_labels.index == tuple(range(9, -1, -1))  # same names, other order: matched by name
    with pytest.raises(ValueError, match="predict different classes"):
        ProjectorKDTrainer(model=tiny(data, TINY_S, label_names=names),
                           teacher=tiny(data, TINY_T, label_names=[f"other_{i}" for i in range(10)]),
                           args=make_args(tmp_path))


def test_arguments_defaults_follow_official_script():
    a = ProjectorKDArguments(output_dir="unused", report_to=[])
    assert (a.num_projectors, a.ce_weight, a.kd_weight, a.feature_weight, a.temperature) == (3, 1.0, 0.0, 25.0, 4.0)
    assert ProjectorKDTrainer.method_name == "projector_kd"
