"""LightSKD / SelfKDTrainer: DRG and DSR losses on hand-built tensors, the layer-2 adapter, the DSR buffer (epoch
reset, update with DRG off, checkpointed), switches, batched random-resized crop, export and exact resume."""

import math
import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hf_kd  # noqa: F401
from hf_kd.data import BatchAugment
from hf_kd.losses.self_kd import drg_loss, dsr_loss, sorted_logits
from hf_kd.models import create_student
from hf_kd.models.student import MissingStagesError
from hf_kd.data.augment import RandomResizedCropAugment
from hf_kd.modules.self_kd import LightSKDAdapter, SelfKDModel
from hf_kd.trainers.self_kd import DSR_STATE_FILE, LIGHTSKD_CIFAR_MEAN, LIGHTSKD_CIFAR_STD, SelfKDArguments, SelfKDTrainer

# a tiny CIFAR ResNet (one block per stage): stages [stem(8), layer1(8), layer2(16), layer3(32)]
TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])
LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data, seed=0, arch="cifar_resnet20", model_args=TINY):
    torch.manual_seed(seed)
    return create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=model_args)


def make_args(tmp, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=8, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, seed=0, optim="sgd", optim_args="momentum=0.9", learning_rate=0.05, logging_steps=1,
                save_strategy="no")
    base.update(kw)
    return SelfKDArguments(**base)


def make_trainer(data, tmp, seed_student=0, **kw):
    return SelfKDTrainer(model=tiny(data, seed_student), args=make_args(tmp, **kw), train_dataset=data.train,
                         eval_dataset=data.eval, augmentation=data.batch_augment())


def batch(tr, data, start=0, n=8):
    b = tr.data_collator([data.train[i] for i in range(start, start + n)])
    return {"pixel_values": tr.augmentation(b["pixel_values"], train=False), "labels": b["labels"]}


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# --- losses: values, sorting, gradients, detaches ----------------------------------------------------------------
def test_sorted_logits_ascending_per_row():
    z = torch.tensor([[3.0, -1.0, 2.0], [0.0, 5.0, 1.0]])
    torch.testing.assert_close(sorted_logits(z), torch.tensor([[-1.0, 2.0, 3.0], [0.0, 1.0, 5.0]]))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        sorted_logits(torch.ones(2, 3, 4))


def test_dsr_value_by_hand_compares_sorted_logits():
    # row 0 at T=1: prev sorted [0, 0, ln2] -> p = (1/4, 1/4, 1/2); current [ln2, 0, ln2] sorts to [0, ln2, ln2]
    # -> q = (1/5, 2/5, 2/5). Row 1: the current row is a permutation of the previous one -> 0 once sorted.
    prev = torch.tensor([[0.0, 0.0, LN2], [0.0, 1.0, 2.0]])
    z = torch.tensor([[LN2, 0.0, LN2], [2.0, 0.0, 1.0]])
    row0 = kl([0.25, 0.25, 0.5], [0.2, 0.4, 0.4])
    assert dsr_loss(z, prev, 1.0).item() == pytest.approx(row0 / 2, abs=1e-6)  # batchmean over 2 rows
    # T = 2 with logits scaled by 2: the same distributions, times T^2 = 4
    assert dsr_loss(2 * z, 2 * prev, 2.0).item() == pytest.approx(4 * row0 / 2, abs=1e-6)
    # a permutation of the previous batch's (sorted) row costs nothing; unsorted it would not
    perm = torch.tensor([[2.0, 0.0, 1.0]])
    assert dsr_loss(perm, torch.tensor([[0.0, 1.0, 2.0]]), 4.0).item() == pytest.approx(0.0, abs=1e-7)
    unsorted = 16 * F.kl_div(F.log_softmax(perm / 4, 1), F.softmax(torch.tensor([[0.0, 1.0, 2.0]]) / 4, 1),
                             reduction="batchmean")
    assert unsorted.item() > 1e-3


def test_dsr_gradient_goes_to_current_logits_through_the_sort_only():
    z = torch.tensor([[3.0, 1.0, 2.0]], requires_grad=True)
    prev = torch.zeros(1, 3, requires_grad=True)
    dsr_loss(z, prev, 1.0).backward()
    assert prev.grad is None  # the previous batch is a detached target
    # d/ds T^2 KL(p || softmax(s/T)) / B = T (q - p) / B, with s = sort(z) = (1, 2, 3): z_0 = s_2, z_1 = s_0, z_2 = s_1
    q = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0)
    g = q - 1 / 3
    torch.testing.assert_close(z.grad, torch.stack([g[2], g[0], g[1]])[None])


def test_dsr_needs_equal_batch_sizes():
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        dsr_loss(torch.ones(3, 5), torch.ones(4, 5), 4.0)


def test_drg_value_gradient_and_detached_adapter():
    z = torch.zeros(2, 3, requires_grad=True)
    za = torch.tensor([[0.0, 0.0, LN2], [0.0, 0.0, 0.0]], requires_grad=True)
    loss = drg_loss(z, za, 1.0)
    # row 0: KL((1/4, 1/4, 1/2) || (1/3, 1/3, 1/3)); row 1: identical distributions
    assert loss.item() == pytest.approx(kl([0.25, 0.25, 0.5], [1 / 3] * 3) / 2, abs=1e-6)
    loss.backward()
    assert za.grad is None  # the adapter is the (detached) teacher
    expected = torch.tensor([[1 / 3 - 1 / 4, 1 / 3 - 1 / 4, 1 / 3 - 1 / 2], [0.0, 0.0, 0.0]]) / 2
    torch.testing.assert_close(z.grad, expected)
    # T^2 scaling: T = 4 on 4x the logits gives the same distributions, 16x the value
    assert drg_loss(4 * z, 4 * za, 4.0).item() == pytest.approx(16 * loss.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        drg_loss(torch.ones(2, 3), torch.ones(2, 4), 4.0)


# --- adapter ---------------------------------------------------------------------------------------------------------
def test_adapter_mask_in_half_open_range_and_shapes():
    torch.manual_seed(0)
    ad = LightSKDAdapter(16, 10).train()
    for x in (torch.randn(4, 16, 16, 16) * 5, torch.randn(4, 16, 7, 7)):  # odd sizes too
        m = ad.mask(x)
        assert m.shape == x.shape
        assert m.min().item() >= 0.5 and m.max().item() < 1.0  # ReLU before the sigmoid
        assert (m == 0.5).any()  # some ReLU outputs are 0 -> sigmoid(0) = 1/2 exactly
        assert ad(x).shape == (4, 10)
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        ad(torch.randn(2, 8, 16, 16))


def test_adapter_layout_matches_istr2_basicblock_variant():
    ad = LightSKDAdapter(128, 100)  # ResNet-18 layer2: the BasicBlock variant of the official Istr_2
    assert sum(p.numel() for p in ad.parameters()) == 342_116
    assert ad.fc.in_features == 512 and ad.fc.out_features == 100
    convs = [m for m in ad.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    # upsampling to the input size = the official nn.Upsample(scale_factor=2, align_corners=True) on even maps
    ad.eval()
    x = torch.randn(2, 128, 16, 16)
    ref = torch.sigmoid(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)(ad.attention(x)))
    torch.testing.assert_close(ad.mask(x), ref)
    # Bottleneck variant (ResNet-50/101 layer2, 512 channels): 4.71M parameters (docs/methods/self_kd.md)
    assert sum(p.numel() for p in LightSKDAdapter(512, 100).parameters()) == 4_710_500


def test_adapter_channels_follow_the_backbones_layer2(data, tmp_path):
    tr = SelfKDTrainer(model=tiny(data), args=make_args(tmp_path))
    assert isinstance(tr.model, SelfKDModel) and tr.adapter.in_channels == 16 and tr.model.stage_index == 2
    r18 = create_student("cifar_resnet18", 10)
    tr18 = SelfKDTrainer(model=r18, args=make_args(tmp_path))
    assert tr18.adapter.in_channels == 128 and tr18.adapter.fc.in_features == 512  # BasicBlock variant
    timm18 = create_student("resnet18", 10, input_size=(3, 32, 32))  # timm: [act1, layer1, layer2, ...]
    assert SelfKDTrainer(model=timm18, args=make_args(tmp_path)).adapter.in_channels == 128
    with pytest.raises(MissingStagesError, match="adapter_stage=9"):
        SelfKDTrainer(model=tiny(data), args=make_args(tmp_path, adapter_stage=9))
    with pytest.raises(ValueError, match="no teacher"):
        SelfKDTrainer(model=tiny(data), teacher=tiny(data, 1), args=make_args(tmp_path))


# --- loss assembly, DSR buffer, switches ------------------------------------------------------------------------------
def test_compute_loss_terms_weights_and_buffer(data, tmp_path):
    tr = make_trainer(data, tmp_path, alpha=0.3, beta=0.7, temperature=2.0)
    tr.model.train()
    b1, b2 = batch(tr, data, 0), batch(tr, data, 8)
    assert tr.dsr_previous is None
    loss1, out1 = tr.compute_loss(tr.model, b1, return_outputs=True)
    z1, za1 = out1["logits"].unbind(1)  # (B, 2, K): backbone head first, then the adapter
    expected1 = (F.cross_entropy(z1, b1["labels"]) + F.cross_entropy(za1, b1["labels"])
                 + 0.3 * 4 * F.kl_div(F.log_softmax(z1 / 2, 1), F.softmax(za1 / 2, 1), reduction="batchmean"))
    torch.testing.assert_close(loss1, expected1)  # first batch: no DSR
    torch.testing.assert_close(tr.dsr_previous, torch.sort(z1.detach(), 1).values)
    assert not tr.dsr_previous.requires_grad
    loss2, out2 = tr.compute_loss(tr.model, b2, return_outputs=True)
    z2, za2 = out2["logits"].unbind(1)
    s1, s2 = torch.sort(z1.detach(), 1).values, torch.sort(z2, 1).values
    expected2 = (F.cross_entropy(z2, b2["labels"]) + F.cross_entropy(za2, b2["labels"])
                 + 0.3 * 4 * F.kl_div(F.log_softmax(z2 / 2, 1), F.softmax(za2 / 2, 1), reduction="batchmean")
                 + 0.7 * 4 * F.kl_div(F.log_softmax(s2 / 2, 1), F.softmax(s1 / 2, 1), reduction="batchmean"))
    torch.testing.assert_close(loss2, expected2)
    assert sorted(tr._terms) == ["ce", "ce_adapter", "drg", "dsr"] and tr._terms["dsr"][1] == 1
    # evaluation neither uses nor moves the buffer
    tr.model.eval()
    before = tr.dsr_previous.clone()
    with torch.no_grad():
        tr.compute_loss(tr.model, b1)
    assert torch.equal(tr.dsr_previous, before)


def test_drg_gradient_reaches_backbone_not_adapter(data, tmp_path):
    tr = make_trainer(data, tmp_path)
    tr.model.train()
    b = batch(tr, data)
    out = tr.model(pixel_values=b["pixel_values"])
    logits, adapter_logits = out.student_logits, out.adapter_logits
    drg_loss(logits, adapter_logits, 4.0).backward()
    assert all(p.grad is None for p in tr.adapter.parameters())
    named = dict(tr.model.named_parameters())
    for k in ("student.timm_model.fc.weight", "student.timm_model.stem.0.weight",
              "student.timm_model.stages.1.0.conv1.weight"):
        assert named[k].grad is not None and named[k].grad.abs().sum() > 0, k


def test_adapter_ce_trains_the_layers_under_its_stage(data, tmp_path):
    # the official adapter reads mids[1] undetached: its CE also trains stem/layer1/layer2, never layer3 or the fc
    tr = make_trainer(data, tmp_path)
    tr.model.train()
    b = batch(tr, data)
    adapter_logits = tr.model(pixel_values=b["pixel_values"]).adapter_logits
    F.cross_entropy(adapter_logits, b["labels"]).backward()
    named = dict(tr.model.named_parameters())
    for k in ("student.timm_model.stem.0.weight", "student.timm_model.stages.1.0.conv1.weight",
              "aux.adapter.fc.weight"):
        assert named[k].grad is not None and named[k].grad.abs().sum() > 0, k
    for k in ("student.timm_model.stages.2.0.conv1.weight", "student.timm_model.fc.weight"):
        assert named[k].grad is None, k


def test_switches(data, tmp_path):
    # DRG off: no DRG term, the adapter still trains with its CE (official code), the DSR buffer is still updated
    tr = make_trainer(data, tmp_path, use_drg=False)
    tr.model.train()
    _, out = tr.compute_loss(tr.model, batch(tr, data), return_outputs=True)
    assert sorted(tr._terms) == ["ce", "ce_adapter"] and tr.adapter is not None
    torch.testing.assert_close(tr.dsr_previous, torch.sort(out["logits"][:, 0].detach(), 1).values)
    tr.compute_loss(tr.model, batch(tr, data, 8))
    assert sorted(tr._terms) == ["ce", "ce_adapter", "dsr"]
    # DRG off and no adapter: CE (+ DSR) on the backbone alone
    tr = make_trainer(data, tmp_path, use_drg=False, keep_adapter_without_drg=False)
    assert tr.adapter is None and not any(k.startswith("aux.") for k in tr.model.state_dict())
    tr.model.train()
    b = batch(tr, data)
    loss, out = tr.compute_loss(tr.model, b, return_outputs=True)
    assert out["logits"].dim() == 2
    torch.testing.assert_close(loss, F.cross_entropy(out["logits"], b["labels"]))
    # DSR off: no buffer, and drop_last is no longer required
    tr = make_trainer(data, tmp_path, use_dsr=False, dataloader_drop_last=False)
    tr.model.train()
    tr.compute_loss(tr.model, batch(tr, data))
    tr.compute_loss(tr.model, batch(tr, data, 8))
    assert tr.dsr_previous is None and sorted(tr._terms) == ["ce", "ce_adapter", "drg"]


def test_drop_last_enforced_and_defaults():
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        SelfKDArguments(output_dir="unused", report_to=[], dataloader_drop_last=False)
    a = SelfKDArguments(output_dir="unused", report_to=[])
    assert (a.use_drg, a.use_dsr, a.alpha, a.beta, a.temperature, a.adapter_stage) == (True, True, 0.2, 1.0, 4.0, 2)
    assert a.dataloader_drop_last
    with pytest.raises(ValueError, match="norm_mean and norm_std"):
        SelfKDArguments(output_dir="unused", report_to=[], norm_mean=[0.5, 0.5, 0.5])
    assert SelfKDTrainer.method_name == "self_kd" and "2305.09183" in SelfKDTrainer.citation


def test_no_gradient_clipping(data, tmp_path):
    # the official train.py never clips; transformers' default max_grad_norm=1.0 would clip every early step
    assert SelfKDArguments(output_dir="unused", report_to=[]).max_grad_norm == 0.0
    tr = make_trainer(data, tmp_path, max_steps=1)
    calls = []
    clip = tr._clip_grad_norm
    tr._clip_grad_norm = lambda model: calls.append(1) or clip(model)
    tr.train()
    assert calls == []


def test_cifar100_preset_is_the_official_setting(data, tmp_path):
    from hf_kd.recipes import build_student, parse_args

    preset = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "configs",
                          "self_kd_cifar100_resnet18.yaml")
    m, d, a = parse_args(SelfKDArguments, {}, ["--config", preset, "--output_dir", str(tmp_path), "--use_cpu", "true",
                                               "--report_to", "none"])
    assert (d.dataset, m.student, a.num_train_epochs, a.per_device_train_batch_size) == \
        ("cifar100", "cifar_resnet18", 200, 128)
    assert (a.use_drg, a.use_dsr, a.alpha, a.beta, a.temperature, a.adapter_stage) == (True, True, 0.2, 1.0, 4.0, 2)
    assert (a.lr_milestones, a.lr_gamma, a.warmup_epochs, a.max_grad_norm) == ([60, 120, 160], 0.1, 0.0, 0.0)
    assert a.dataloader_drop_last and a.random_resized_crop and a.decay_all_parameters
    # built on the offline digits data (CIFAR-100 would need a download): one SGD over backbone + adapter
    tr = SelfKDTrainer(model=build_student(m, data), args=a, train_dataset=data.train, eval_dataset=data.eval,
                       augmentation=data.batch_augment())
    assert tr.adapter.in_channels == 128 and tr.adapter.fc.in_features == 512
    opt = tr.create_optimizer()
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.1, 0.9, False, 5e-4)
    assert {id(p) for p in g["params"]} == {id(p) for p in tr.model.parameters()}
    tr.create_scheduler(10, opt)
    spe, factor = tr.steps_per_epoch(), tr.lr_scheduler.lr_lambdas[0]
    assert [factor(e * spe) for e in (0, 59, 60, 119, 120, 159, 160, 199)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert isinstance(tr.augmentation, RandomResizedCropAugment)
    torch.testing.assert_close(tr.augmentation.mean.flatten(), torch.tensor(LIGHTSKD_CIFAR_MEAN))
    torch.testing.assert_close(tr.augmentation.std.flatten(), torch.tensor(LIGHTSKD_CIFAR_STD))


def test_dsr_skipped_on_each_epochs_first_batch_and_updated_with_drg_off(data, tmp_path):
    # 64 samples / batch 16 = 4 steps per epoch; 2 epochs, a log per step; DRG off
    tr = make_trainer(data, tmp_path, use_drg=False, per_device_train_batch_size=16, num_train_epochs=2)
    tr.train()
    logs = [e for e in tr.state.log_history if "loss_ce" in e]
    assert [e["step"] for e in logs] == list(range(1, 9))
    assert [("loss_dsr" in e) for e in logs] == [False, True, True, True] * 2
    assert not any("loss_drg" in e for e in logs)
    assert tr.dsr_previous is None  # emptied at the end of the epoch


# --- augmentation ----------------------------------------------------------------------------------------------------
def test_random_resized_crop_resamples_like_interpolate_on_the_crop():
    aug = RandomResizedCropAugment([0.0] * 3, [1.0] * 3)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 12, 10), dtype=torch.uint8)
    boxes = torch.tensor([[2.0, 1.0, 5.0, 7.0], [0.0, 0.0, 12.0, 10.0], [11.0, 9.0, 1.0, 1.0]])
    aug.crop_boxes = lambda b, h, w, device: boxes  # fixed boxes (top, left, height, width)
    torch.manual_seed(1)
    out = aug.resized_crop_flip(x)
    torch.manual_seed(1)
    flip = torch.rand(3, 1) < 0.5  # the fixed crop_boxes draws nothing: the flip is the first draw
    assert flip.any() and not flip.all()
    for i, (t, l, h, w) in enumerate(boxes.long().tolist()):
        ref = F.interpolate(x[i:i + 1, :, t:t + h, l:l + w].float(), size=(12, 10), mode="bilinear",
                            align_corners=False)
        ref = ref.flip(-1) if flip[i] else ref
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-3, rtol=1e-5)  # 0-255 pixel scale


def test_random_resized_crop_boxes_follow_torchvision_rule():
    aug = RandomResizedCropAugment([0.0] * 3, [1.0] * 3)
    torch.manual_seed(0)
    top, left, h, w = aug.crop_boxes(4000, 32, 32, "cpu").unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    frac = h * w / 1024
    assert frac.min() < 0.15 and frac.max() > 0.95 and frac.mean() > 0.4  # area ~ U(0.08, 1), clipped
    assert (w / h).min() < 0.8 and (w / h).max() > 1.25  # log-uniform aspect in [3/4, 4/3] (before rounding)
    # narrow images fall back to a centre crop clamped to the ratio when no try fits
    aug2 = RandomResizedCropAugment([0.0] * 3, [1.0] * 3, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    t, l, hh, ww = aug2.crop_boxes(3, 32, 8, "cpu")[0].tolist()
    assert (hh, ww) == (4.0, 8.0) and (t, l) == (14.0, 0.0)


def test_augmentation_selection_and_exported_normalisation(data, tmp_path):
    tr = make_trainer(data, tmp_path)  # auto: the data's CIFAR pad-crop is replaced by LightSKD's crop
    assert isinstance(tr.augmentation, RandomResizedCropAugment) and tr.augmentation.kind == "random_resized_crop"
    tr = make_trainer(data, tmp_path, augmentation="cifar")  # explicit --augmentation wins in auto mode
    assert type(tr.augmentation) is BatchAugment and tr.augmentation.kind == "cifar"
    tr = make_trainer(data, tmp_path, pad_mode="reflect")  # so does an explicit --pad_mode (a pad-crop setting)
    assert type(tr.augmentation) is BatchAugment and (tr.augmentation.kind, tr.augmentation.pad_mode) == \
        ("cifar", "reflect")
    tr = make_trainer(data, tmp_path, random_resized_crop=False, norm_mean=list(LIGHTSKD_CIFAR_MEAN),
                      norm_std=list(LIGHTSKD_CIFAR_STD))
    assert type(tr.augmentation) is BatchAugment and tr.augmentation.kind == "cifar"
    torch.testing.assert_close(tr.augmentation.std.flatten(), torch.tensor(LIGHTSKD_CIFAR_STD))
    assert tr.student.config.pretrained_cfg["mean"] == list(LIGHTSKD_CIFAR_MEAN)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    aug = RandomResizedCropAugment(LIGHTSKD_CIFAR_MEAN, LIGHTSKD_CIFAR_STD)
    torch.testing.assert_close(aug(x, train=False), BatchAugment(LIGHTSKD_CIFAR_MEAN, LIGHTSKD_CIFAR_STD, "none")(
        x, train=False))  # evaluation: normalisation only (Resize(32) of a 32x32 image)


# --- end to end: export and exact resume ----------------------------------------------------------------------------
def test_training_step_export_backbone_only_and_automodel(data, tmp_path):
    tr = make_trainer(data, tmp_path / "run", max_steps=2, norm_mean=list(LIGHTSKD_CIFAR_MEAN),
                      norm_std=list(LIGHTSKD_CIFAR_STD))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train()
    after = tr.model.state_dict()
    params = {n for n, _ in tr.model.named_parameters()}
    assert any(n.startswith("aux.adapter.") for n in params)
    moved = {n for n in params if not torch.equal(before[n], after[n])}
    # every backbone and adapter parameter trains (one optimizer, as the official code), except the gamma of the
    # attention SepConv's last BN: BN -> ReLU -> BN is invariant to that scale while its beta is 0 (at init), so its
    # gradient is ~0 for the first steps (the same in the official Istr_2)
    assert moved == params - {"aux.adapter.attention.0.op.6.weight"}
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in tr.model.parameters()}
    out = str(tmp_path / "export")
    tr.save_model(out)
    keys = set(load_file(os.path.join(out, "model.safetensors")))
    assert keys == set(tr.student.timm_model.state_dict())  # timm-native backbone keys only
    assert not any("adapter" in k or "aux" in k for k in keys)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.pretrained_cfg["std"] == list(LIGHTSKD_CIFAR_STD)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, tr.student.eval()(pixel_values=x).logits)
    metrics = tr.evaluate()
    assert "eval_top1" in metrics and "eval_adapter_top1" in metrics


def run_resume(data, tmp_path, batch_size, max_steps, save_steps, drop_buffer=False):
    kw = dict(max_steps=max_steps, save_steps=save_steps, save_strategy="steps",
              per_device_train_batch_size=batch_size)
    a = make_trainer(data, tmp_path / "a", **kw)
    a.train()
    b = make_trainer(data, tmp_path / "b", **kw)
    b.train()
    ckpt = tmp_path / "b" / f"checkpoint-{save_steps}"
    state = torch.load(ckpt / DSR_STATE_FILE.format(rank=0), weights_only=True)
    if drop_buffer:
        os.remove(ckpt / DSR_STATE_FILE.format(rank=0))
    c = make_trainer(data, tmp_path / "b", seed_student=1, **kw)  # another init: all must come from the checkpoint
    c.train(resume_from_checkpoint=str(ckpt))
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert set(sa) == set(sc) and any(k.startswith("aux.adapter.") for k in sa)
    shutil.rmtree(tmp_path / "a"), shutil.rmtree(tmp_path / "b")
    return state, [k for k in sa if not torch.equal(sa[k], sc[k])]


def test_exact_resume_mid_epoch_restores_the_dsr_buffer(data, tmp_path):
    # 64 / 8 = 8 steps per epoch; checkpoint after step 2 (mid-epoch) holds the DSR buffer of batch 2
    state, diff = run_resume(data, tmp_path, batch_size=8, max_steps=4, save_steps=2)
    assert state["sorted_logits"] is not None and state["sorted_logits"].shape == (8, data.num_labels)
    assert diff == []
    # the same resume without the buffer file is not exact (what the saved buffer is for)
    _, diff = run_resume(data, tmp_path, batch_size=8, max_steps=4, save_steps=2, drop_buffer=True)
    assert diff


def test_exact_resume_at_epoch_boundary_starts_with_an_empty_buffer(data, tmp_path):
    # 64 / 16 = 4 steps per epoch; checkpoint at step 4 (end of epoch 1): the next epoch starts without DSR
    state, diff = run_resume(data, tmp_path, batch_size=16, max_steps=6, save_steps=4)
    assert state["sorted_logits"] is None
    assert diff == []
