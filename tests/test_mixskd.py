"""MixSKD / MixSKDTrainer: losses on hand-built tensors, mixup pairing, modules, training step, export, resume."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hf_kd  # noqa: F401
from hf_kd.losses.mixskd import (discriminator_bce, discriminator_targets, draw_mixup, interpolate,
                                 mixskd_classification, mixskd_feature_mse, mixskd_kl, mixup_cross_entropy,
                                 mixup_images)
from hf_kd.models import MissingStagesError, TimmStudent, create_student
from hf_kd.modules.mixskd import Discriminator, SelfTeacher, build_auxiliary_branches
from hf_kd.recipes import parse_args
from hf_kd.modules.mixskd import MixSKDModel
from hf_kd.trainers.mixskd import MixSKDArguments, MixSKDTrainer

# a 4-stage CIFAR ResNet-18 layout (no stem ReLU, as MixSKD's) with tiny widths: fast on 2 CPU cores
TINY = dict(stem_act=False, channels=[8, 8, 16, 16, 32], blocks=[1, 1, 1, 1])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data, seed=0, model_args=TINY):
    torch.manual_seed(seed)
    return create_student("cifar_resnet18", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=model_args)


def make_args(tmp, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9",
                learning_rate=0.05, logging_steps=1, save_strategy="no")
    base.update(kw)
    return MixSKDArguments(**base)


def make_trainer(data, tmp, seed_student=0, **kw):
    return MixSKDTrainer(model=tiny(data, seed_student), args=make_args(tmp, **kw), train_dataset=data.train,
                         eval_dataset=data.eval, augmentation=data.batch_augment())


def batch(data, n=8):
    rows = [data.train[i] for i in range(n)]
    x = torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows])
    return {"pixel_values": data.batch_augment()(x, train=False), "labels": torch.tensor([r["labels"] for r in rows])}


def kl_hand(s, t, T):
    """T^2 * mean_b sum_k p_t (log p_t - log p_s), written out."""
    total = 0.0
    for sb, tb in zip(s.tolist(), t.tolist()):
        zs = [v / T for v in sb]
        zt = [v / T for v in tb]
        ls = [v - math.log(sum(math.exp(u) for u in zs)) for v in zs]
        lt = [v - math.log(sum(math.exp(u) for u in zt)) for v in zt]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    return T * T * total / len(s)


def ce_hand(z, y):
    return sum(math.log(sum(math.exp(v) for v in row)) - row[c] for row, c in zip(z.tolist(), y.tolist())) / len(y)


# --- mixup pairing ---------------------------------------------------------------------------------------------------
def test_mixup_images_pairs_each_row_with_its_permuted_partner():
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    y = torch.tensor([3, 4, 5])
    perm = torch.tensor([2, 0, 1])
    x_mix, y_a, y_b = mixup_images(x, y, 0.25, perm)
    expected = torch.tensor([[0.25 * 1 + 0.75 * 100, 0.25 * 2 + 0.75 * 200],
                             [0.25 * 10 + 0.75 * 1, 0.25 * 20 + 0.75 * 2],
                             [0.25 * 100 + 0.75 * 10, 0.25 * 200 + 0.75 * 20]])
    assert torch.allclose(x_mix, expected)
    assert y_a.tolist() == [3, 4, 5] and y_b.tolist() == [5, 3, 4]
    assert torch.allclose(interpolate(x, 0.25, perm), expected)  # outputs of the originals mixed the same way


def documented_draw(seed, step, k, batch_size, alpha):
    """The draw as ``draw_mixup`` documents it, written out here: one generator keyed by (seed, step, k), lam from
    Beta(alpha, alpha), then the permutation."""
    rng = np.random.default_rng([seed % 2**64, step, k])
    return float(rng.beta(alpha, alpha)), rng.permutation(batch_size).tolist()


def test_mixup_draw_is_a_function_of_seed_step_and_micro_batch():
    lam, perm = draw_mixup(0, 5, 1, 8, 0.4)
    np.random.seed(123)  # the global RNGs play no part
    torch.manual_seed(123)
    again = draw_mixup(0, 5, 1, 8, 0.4)
    assert lam == again[0] and torch.equal(perm, again[1])
    assert (lam, perm.tolist()) == documented_draw(0, 5, 1, 8, 0.4)
    assert 0 < lam < 1 and perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(8))
    others = [draw_mixup(*key, 8, 0.4) for key in [(0, 5, 0), (0, 5, 2), (0, 6, 1), (1, 5, 1)]]
    assert len({lam, *(o[0] for o in others)}) == 5  # every seed / step / micro-batch draws its own
    assert draw_mixup(-1, 0, 0, 4, 0.4)[0] == draw_mixup(2**64 - 1, 0, 0, 4, 0.4)[0]  # negative seeds work
    assert draw_mixup(0, 0, 0, 4, 0.0)[0] == 0.5  # alpha <= 0: lambda 0.5, as the CIFAR script


def test_mixup_draw_distribution_is_beta_and_uniform_permutations():
    lams = np.array([draw_mixup(0, s, 0, 3, 0.4)[0] for s in range(3000)])
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.139 (a uniform lambda would give 1/12 = 0.083)
    assert abs(lams.mean() - 0.5) < 0.03 and abs(lams.var() - 1 / 7.2) < 0.012
    counts = {}
    for s in range(3000):
        p = tuple(draw_mixup(0, s, 1, 3, 0.4)[1].tolist())
        counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 6 and min(counts.values()) > 400  # all 3! permutations, about 500 each


def test_each_micro_batch_of_a_step_draws_its_own_mixup(data, tmp_path, monkeypatch):
    trainer = make_trainer(data, tmp_path, max_steps=2, gradient_accumulation_steps=2, seed=3)
    seen, backbone_inputs = [], []
    original, original_kd = MixSKDModel.forward, TimmStudent.forward_kd

    def spy(self, pixel_values, labels=None, lam=None, perm=None, **kw):
        if self.training:
            seen.append((trainer.last_mixup_key, lam, perm.clone(), pixel_values.detach().clone()))
        return original(self, pixel_values, labels, lam=lam, perm=perm, **kw)

    def spy_kd(self, pixel_values, stages=True):
        if self.training:
            backbone_inputs.append(pixel_values.detach().clone())
        return original_kd(self, pixel_values, stages)

    monkeypatch.setattr(MixSKDModel, "forward", spy)
    monkeypatch.setattr(TimmStudent, "forward_kd", spy_kd)
    trainer.train()
    assert [key for key, *_ in seen] == [(3, 0, 0), (3, 0, 1), (3, 1, 0), (3, 1, 1)]
    assert len({lam for _, lam, _, _ in seen}) == 4  # two micro-batches of one step never share their mixup
    assert len(backbone_inputs) == 4
    for (key, lam, perm, x), pixels in zip(seen, backbone_inputs):
        expected = documented_draw(*key, 8, 0.4)  # the trainer's key, drawn as documented
        assert lam == expected[0] and perm.tolist() == expected[1]
        assert torch.equal(pixels[:8], x)  # the model mixes the micro-batch with the trainer's draw
        assert torch.allclose(pixels[8:], lam * x + (1 - lam) * x[perm])
    # the draw index is per process: process p, micro-batch i -> k = p * gradient_accumulation_steps + i
    monkeypatch.setattr(MixSKDArguments, "process_index", property(lambda self: 1))
    assert trainer.mixup_key(0)[2] == 2 and trainer.mixup_key(1)[2] == 3


def test_trainer_forwards_originals_then_their_mixup_in_one_call(data, tmp_path, monkeypatch):
    trainer = make_trainer(data, tmp_path)
    inputs = batch(data)
    seen, backbone_inputs = [], []
    original, original_kd = MixSKDModel.forward, TimmStudent.forward_kd

    def spy(self, pixel_values, labels=None, lam=None, perm=None, **kw):
        seen.append((lam, perm.clone()))
        return original(self, pixel_values, labels, lam=lam, perm=perm, **kw)

    def spy_kd(self, pixel_values, stages=True):
        backbone_inputs.append(pixel_values.detach().clone())
        return original_kd(self, pixel_values, stages)

    monkeypatch.setattr(MixSKDModel, "forward", spy)
    monkeypatch.setattr(TimmStudent, "forward_kd", spy_kd)
    trainer.model.train()
    expected_lam, expected_perm = documented_draw(0, 0, 0, 8, 0.4)
    trainer.compute_loss(trainer.model, inputs)
    assert len(seen) == 1 and len(backbone_inputs) == 1  # a single backbone forward for both halves
    (lam, perm), pixels = seen[0], backbone_inputs[0]
    x = inputs["pixel_values"]
    assert lam == expected_lam and perm.tolist() == expected_perm
    assert pixels.shape[0] == 16 and torch.equal(pixels[:8], x)
    assert torch.allclose(pixels[8:], lam * x + (1 - lam) * x[perm])


# --- losses: values and gradients ------------------------------------------------------------------------------------
def test_mixup_cross_entropy_value():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y_a, y_b = torch.tensor([0, 1]), torch.tensor([2, 0])
    hand = 0.3 * ce_hand(z, y_a) + 0.7 * ce_hand(z, y_b)
    assert mixup_cross_entropy(z, y_a, y_b, 0.3).item() == pytest.approx(hand, rel=1e-6)


def test_classification_terms_values_and_self_teacher_gradient():
    y, y_b, lam = torch.tensor([0, 1]), torch.tensor([1, 1]), 0.6
    orig = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.3, -0.3], [1.0, 1.0]])]
    mixed = [torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([[-1.0, 1.0], [0.5, 0.0]])]
    ens = torch.tensor([[0.2, 0.1], [0.0, 0.4]], requires_grad=True)
    ens_mix = torch.tensor([[1.0, -1.0], [0.7, 0.2]], requires_grad=True)
    l_cls, l_mix = mixskd_classification(orig, mixed, ens, ens_mix, y, y_b, lam)
    assert l_cls.item() == pytest.approx(ce_hand(orig[0], y) + ce_hand(orig[1], y), rel=1e-6)
    mce = lambda z: lam * ce_hand(z, y) + (1 - lam) * ce_hand(z, y_b)  # noqa: E731
    hand = mce(mixed[0]) + mce(mixed[1]) + mce(ens.detach()) + mce(ens_mix.detach())
    assert l_mix.item() == pytest.approx(hand, rel=1e-6)
    l_mix.backward()  # L_mixcls is what trains the self-teacher: both of its outputs get gradient
    assert ens.grad.abs().sum() > 0 and ens_mix.grad.abs().sum() > 0


def test_kl_values_crossed_pairing_and_detaches():
    T = 3.0
    g = torch.Generator().manual_seed(0)
    interp = [torch.randn(2, 4, generator=g, requires_grad=True) for _ in range(2)]  # aux head, backbone (last)
    mixed = [torch.randn(2, 4, generator=g, requires_grad=True) for _ in range(2)]
    ens = torch.randn(2, 4, generator=g, requires_grad=True)
    ens_mix = torch.randn(2, 4, generator=g, requires_grad=True)
    loss = mixskd_kl(interp, mixed, ens, ens_mix, T)
    d = lambda t: t.detach()  # noqa: E731
    hand = (kl_hand(d(interp[1]), d(ens_mix), T) + kl_hand(d(mixed[1]), d(ens), T)  # backbone: crossed teachers
            + kl_hand(d(interp[0]), d(mixed[0]), T) + kl_hand(d(mixed[0]), d(interp[0]), T))  # aux: mutual
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    swapped = (kl_hand(d(interp[1]), d(ens), T) + kl_hand(d(mixed[1]), d(ens_mix), T)
               + kl_hand(d(interp[0]), d(mixed[0]), T) + kl_hand(d(mixed[0]), d(interp[0]), T))
    assert abs(swapped - hand) > 1e-3  # the test can tell the crossed pairing from the straight one
    loss.backward()
    assert ens.grad is None and ens_mix.grad is None  # the self-teacher is only ever a (detached) target
    p = lambda z: F.softmax(d(z) / T, dim=1)  # noqa: E731
    # d/ds T^2 KL(p_t || p_s) / B = T (p_s - p_t) / B, with the teacher side detached in every term
    assert torch.allclose(interp[1].grad, T * (p(interp[1]) - p(ens_mix)) / 2, atol=1e-6)
    assert torch.allclose(mixed[1].grad, T * (p(mixed[1]) - p(ens)) / 2, atol=1e-6)
    assert torch.allclose(interp[0].grad, T * (p(interp[0]) - p(mixed[0])) / 2, atol=1e-6)
    assert torch.allclose(mixed[0].grad, T * (p(mixed[0]) - p(interp[0])) / 2, atol=1e-6)


def test_feature_mse_value_and_no_detach():
    a = [torch.tensor([[[[1.0, 2.0]]]], requires_grad=True), torch.tensor([[[[0.0]]]], requires_grad=True)]
    b = [torch.tensor([[[[0.0, 0.0]]]], requires_grad=True), torch.tensor([[[[3.0]]]], requires_grad=True)]
    loss = mixskd_feature_mse(a, b)
    assert loss.item() == pytest.approx((1 + 4) / 2 + 9)
    loss.backward()
    for t in a + b:  # symmetric: both the interpolated and the mixup features are pulled
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert torch.allclose(a[0].grad, torch.tensor([[[[1.0, 2.0]]]]))  # 2 (a - b) / numel


def test_discriminator_bce_targets_and_value():
    assert discriminator_targets(2).tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    assert discriminator_targets(1, fool=True).tolist() == [[0, 1], [1, 0]]
    d = torch.tensor([[2.0, -1.0], [0.5, 0.0]])  # row 0 interpolated, row 1 mixup
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus: -log sigmoid(-v)
    # BCE(x, t) = t softplus(-x) + (1 - t) softplus(x), mean over the 4 entries
    hand = (sp(-2.0) + sp(-1.0) + sp(0.5) + sp(-0.0)) / 4
    assert discriminator_bce([d]).item() == pytest.approx(hand, rel=1e-6)
    fooled = (sp(2.0) + sp(1.0) + sp(-0.5) + sp(0.0)) / 4
    assert discriminator_bce([d], fool=True).item() == pytest.approx(fooled, rel=1e-6)
    assert discriminator_bce([d, d]).item() == pytest.approx(2 * hand, rel=1e-6)


# --- modules ----------------------------------------------------------------------------------------------------------
def test_self_teacher_and_discriminator_layers():
    psi = SelfTeacher(4, 8, 5)
    assert psi.conv.kernel_size == (1, 1) and psi.conv.bias is None and psi.conv.in_channels == 32
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in psi.modules())
    feats = [torch.randn(2, 8, 3, 3) for _ in range(4)]
    hand = psi.fc(psi.conv(torch.cat(feats, 1)).mean((2, 3)))
    assert torch.allclose(psi(feats), hand, atol=1e-6)
    disc = Discriminator(8)
    assert (disc.fc1.in_features, disc.fc1.out_features, disc.fc2.out_features) == (8, 128, 2)
    x = torch.randn(4, 8, 2, 2, requires_grad=True)
    disc(x, detach_params=True).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in disc.parameters())
    assert torch.allclose(disc(x), disc.fc2(F.relu(disc.fc1(x.mean((2, 3))))), atol=1e-6)


def test_branches_are_fresh_copies_of_the_later_stages(data):
    student = tiny(data)
    branches = build_auxiliary_branches(student)
    stages = student.timm_model.stages
    assert len(branches) == 3
    for k, branch in enumerate(branches, start=1):
        copied = list(branch.body)[:-1]  # + final_act
        assert len(copied) == 4 - k
        for mine, theirs in zip(copied, list(stages)[k:]):
            shapes = [p.shape for p in mine.parameters()]
            assert shapes == [p.shape for p in theirs.parameters()]
            ptrs = {p.data_ptr() for p in theirs.parameters()}
            assert not any(p.data_ptr() in ptrs for p in mine.parameters())
            assert not torch.equal(next(mine.parameters()), next(theirs.parameters()))  # new init


def test_mixskd_resnet18_matches_the_official_sizes():
    """MixSKD_CIFAR_ResNet18 (K=100): backbone 11.22M, branches 30.06M, self-teacher 1.10M (docs/methods/mixskd.md)."""
    student = create_student("cifar_resnet18", 100, model_args={"stem_act": False})
    assert not any(isinstance(m, nn.ReLU) for m in student.timm_model.stem)  # no stem activation
    model = MixSKDModel(student, 100)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(student) == 11_220_132
    assert count(model.aux["branches"]) == 30_060_076
    assert count(model.aux["self_teacher"]) == 1_099_876
    assert [d.fc1.in_features for d in model.aux["discriminators"]] == [512] * 4


def test_timm_resnet_supported_and_other_backbones_rejected():
    torch.manual_seed(0)
    model = MixSKDModel(create_student("resnet18", 3, input_size=(3, 32, 32)), 3).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x, lam=0.3, perm=torch.tensor([1, 0]))
    assert len(out.head_logits) == 4 and out.ens_logits.shape == (2, 3)
    assert {tuple(f.shape[1:]) for f in out.features} == {(512, 1, 1)}
    with pytest.raises(MissingStagesError, match="mobilenetv3_small_050"):
        MixSKDModel(create_student("mobilenetv3_small_050", 3), 3)


def test_model_forward_protocol(data):
    """Train mode: one backbone pass on cat([x, x_mix]), features = branch outputs + layer4, heads with the backbone
    last, the self-teacher on the interpolated originals' features and on the mixup images' features, D_k on
    [A_bar; A_mix]; ``logits`` = the heads of the originals, backbone first."""
    model = MixSKDModel(tiny(data), data.num_labels).train()
    b, lam, perm = 4, 0.3, torch.tensor([2, 0, 3, 1])
    x = torch.randn(b, 3, 32, 32)
    with torch.no_grad():
        out = model(x, lam=lam, perm=perm)
        ref = model.student.forward_kd(torch.cat([x, lam * x + (1 - lam) * x[perm]]), stages=True)
        taps = ref.stages[-4:]  # layer1..layer4
        feats = [branch(taps[k])[0] for k, branch in enumerate(model.aux["branches"])] + [taps[-1]]
        heads = [branch(taps[k])[1] for k, branch in enumerate(model.aux["branches"])] + [ref.logits]
        interp = [lam * f[:b] + (1 - lam) * f[:b][perm] for f in feats]
        mixed = [f[b:] for f in feats]
        psi = model.aux["self_teacher"]
        assert len(out.features) == 4 and all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out.features, feats))
        assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out.head_logits, heads))
        assert out.logits.shape == (b, 4, data.num_labels)
        assert all(torch.equal(out.logits[:, k], z[:b]) for k, z in enumerate([heads[-1], *heads[:-1]]))
        assert all(torch.allclose(o, r, atol=1e-5) for o, r in zip(out.interp_features, interp))
        assert all(torch.equal(o, r) for o, r in zip(out.mixup_features, mixed))
        assert torch.allclose(out.ens_logits, psi(interp), atol=1e-5)
        assert torch.allclose(out.ens_mix_logits, psi(mixed), atol=1e-5)
        assert not torch.allclose(out.ens_logits, out.ens_mix_logits, atol=1e-3)  # the two uses are told apart
        for d, o, fi, fm in zip(model.aux["discriminators"], out.d_logits, interp, mixed):
            assert torch.allclose(o, d(torch.cat([fi, fm])), atol=1e-5)


# --- trainer ----------------------------------------------------------------------------------------------------------
def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, prefix):
    now = module.state_dict()
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], now[k])]


def test_one_step_trains_self_teacher_but_not_fixed_discriminators(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=1)
    wrapper = trainer.model
    before = snapshot(wrapper)
    trainer.train()
    assert changed(before, wrapper, "aux.self_teacher.conv") and changed(before, wrapper, "aux.self_teacher.fc")
    for k in range(3):
        assert changed(before, wrapper, f"aux.branches.{k}.fc")
    assert changed(before, wrapper, "student.timm_model.fc") and changed(before, wrapper, "student.timm_model.stem")
    assert not changed(before, wrapper, "aux.discriminators")  # bit-identical, never optimised
    assert not any(p.requires_grad for p in wrapper.aux["discriminators"].parameters())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in wrapper.aux["discriminators"].parameters())
    logged = [e for e in trainer.state.log_history if "loss_cls" in e][0]
    assert {"loss_cls", "loss_mixcls", "loss_kl", "loss_fea", "loss_gan"} <= set(logged)


@pytest.mark.parametrize("discriminator,mixup_ce", [("fixed", True), ("adversarial", False)])
def test_compute_loss_is_the_sum_of_the_terms(data, tmp_path, discriminator, mixup_ce):
    """The trainer's total, rebuilt from the model's outputs with the (separately tested) pure loss functions:
    interpolated logits of the originals, y[perm], all weights 1, L_mixcls only with mixup_ce, the network's BCE
    targets swapped only in the adversarial game, plus D's own term there."""
    trainer = make_trainer(data, tmp_path, discriminator=discriminator, mixup_ce=mixup_ce, temperature=2.5)
    model = trainer.model.train()
    inputs = batch(data)
    x, y = inputs["pixel_values"], inputs["labels"]
    loss = trainer.compute_loss(model, dict(inputs))
    lam, perm = draw_mixup(*trainer.last_mixup_key, 8, 0.4)
    with torch.no_grad():
        out = model(x, lam=lam, perm=perm)
    orig, mixed = [z[:8] for z in out.head_logits], [z[8:] for z in out.head_logits]
    l_cls, l_mix = mixskd_classification(orig, mixed, out.ens_logits, out.ens_mix_logits, y, y[perm], lam)
    l_kl = mixskd_kl([lam * z + (1 - lam) * z[perm] for z in orig], mixed, out.ens_logits, out.ens_mix_logits, 2.5)
    l_fea = mixskd_feature_mse(out.interp_features, out.mixup_features)
    adversarial = discriminator == "adversarial"
    l_gan = discriminator_bce(out.d_logits, fool=adversarial)
    expected = l_cls + l_kl + l_fea + l_gan + (l_mix if mixup_ce else 0.0)
    if adversarial:
        expected = expected + discriminator_bce(out.d_logits_detached)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    total, steps = trainer._terms["mixcls"]  # (running sum, number of steps): this step only
    assert steps == 1 and total.item() == pytest.approx(l_mix.item(), rel=1e-5)  # logged either way


def test_released_cifar_objective_leaves_self_teacher_random(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=1, mixup_ce=False, discriminator="off")
    before = snapshot(trainer.model)
    trainer.train()
    assert not changed(before, trainer.model, "aux.self_teacher")
    assert "discriminators" not in trainer.model.aux
    assert changed(before, trainer.model, "student.timm_model.fc")


def test_adversarial_discriminators_train_on_detached_features_only(data, tmp_path):
    trainer = make_trainer(data, tmp_path, max_steps=1, discriminator="adversarial")
    model = trainer.model.train()
    x = batch(data)["pixel_values"]
    out = model(x, lam=0.4, perm=torch.arange(7, -1, -1))
    fool = discriminator_bce(out.d_logits, fool=True)
    grads = torch.autograd.grad(fool, list(model.aux["discriminators"].parameters()) + [out.interp_features[0]],
                                allow_unused=True)
    assert all(g is None for g in grads[:-1]) and grads[-1].abs().sum() > 0  # the network's side: D frozen
    own = discriminator_bce(out.d_logits_detached)
    grads = torch.autograd.grad(own, list(model.aux["discriminators"].parameters()) + [out.interp_features[0]],
                                allow_unused=True)
    assert all(g is not None for g in grads[:-1]) and grads[-1] is None  # D's side: features detached
    before = snapshot(model)
    trainer.train()
    assert changed(before, model, "aux.discriminators")
    assert any("loss_gan_d" in e for e in trainer.state.log_history)


def test_teacher_rejected_and_bad_arguments(data, tmp_path):
    with pytest.raises(ValueError, match="no teacher"):
        MixSKDTrainer(model=tiny(data), teacher=tiny(data), args=make_args(tmp_path), train_dataset=data.train)
    with pytest.raises(ValueError, match="discriminator"):
        make_args(tmp_path, discriminator="gan")


def test_export_is_the_backbone_alone_and_eval_reports_it_first(data, tmp_path):
    trainer = make_trainer(data, tmp_path / "run", max_steps=2, norm_mean=[0.5071, 0.4867, 0.4408],
                           norm_std=[0.2675, 0.2565, 0.2761])
    trainer.train()
    metrics = trainer.evaluate()
    assert {"eval_top1", "eval_branch1_top1", "eval_branch2_top1", "eval_branch3_top1"} <= set(metrics)
    inputs = batch(data)
    trainer.model.eval()
    with torch.no_grad():
        _, out = trainer.compute_loss(trainer.model, inputs, return_outputs=True)
        own = trainer.student.forward_kd(inputs["pixel_values"], stages=False).logits
    assert out["logits"].shape == (8, 4, data.num_labels) and torch.equal(out["logits"][:, 0], own)
    # without labels the Trainer scores the model's own output: it must be the stacked heads, backbone first
    _, logits, _ = trainer.prediction_step(trainer.model, {"pixel_values": inputs["pixel_values"]}, False)
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert torch.equal(logits, out["logits"])

    export = tmp_path / "export"
    trainer.save_model(str(export))
    keys = load_file(str(export / "model.safetensors")).keys()
    assert not any(s in k for k in keys for s in ("branches", "self_teacher", "discriminators", "aux"))
    assert len(keys) == len(trainer.student.state_dict())
    loaded = AutoModelForImageClassification.from_pretrained(str(export)).eval()
    assert loaded.config.model_args["stem_act"] is False
    assert loaded.config.pretrained_cfg["mean"] == pytest.approx([0.5071, 0.4867, 0.4408])
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=inputs["pixel_values"]).logits, own, atol=1e-5)


def test_exact_resume(data, tmp_path):
    a = make_trainer(data, tmp_path / "a", max_steps=4)
    a.train()
    b = make_trainer(data, tmp_path / "b", max_steps=4, save_strategy="steps", save_steps=2)
    b.train()
    ckpt = tmp_path / "b" / "checkpoint-2"
    saved = load_file(str(ckpt / "model.safetensors")).keys()
    assert any(k.startswith("aux.discriminators.") for k in saved)  # fixed heads are saved for an exact resume
    c = make_trainer(data, tmp_path / "b", seed_student=1, max_steps=4, save_strategy="steps", save_steps=2)
    c.train(resume_from_checkpoint=str(ckpt))
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sc.keys()
    bad = [k for k in sa if not torch.equal(sa[k], sc[k])]
    assert not bad, bad[:5]


def test_preset_parses_to_the_official_cifar_recipe():
    model_args, data_args, args = parse_args(MixSKDArguments, argv=[
        "--config", os.path.join(REPO, "recipes/configs/mixskd_cifar100_resnet18.yaml"), "--output_dir", "/tmp/x"])
    assert data_args.dataset == "cifar100" and model_args.student == "cifar_resnet18"
    # MixSKD's ResNet-18: no stem ReLU, PyTorch's default layer init
    assert json.loads(model_args.model_args) == {"stem_act": False, "init": "torch_default"}
    assert (args.learning_rate, args.weight_decay, args.per_device_train_batch_size) == (0.1, 5e-4, 64)
    assert args.lr_milestones == [105, 155] and args.warmup_epochs == 5 and args.num_train_epochs == 205
    assert "nesterov=True" in args.optim_args and args.mixup_alpha == 0.4 and args.temperature == 3.0
    assert args.discriminator == "fixed" and args.mixup_ce and not args.dataloader_drop_last
    assert args.norm_mean == [0.5071, 0.4867, 0.4408] and args.norm_std == [0.2675, 0.2565, 0.2761]
