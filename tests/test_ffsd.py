"""FFSD / FFSDTrainer: every loss term on hand-built tensors (values and detaches), the modules, gradient routing, the
equivalence of one backward with the official sequential per-module updates, the composite optimizer, the warm-up,
evaluation heads, the leader-only export and exact resume (the 2-process launch: tests/test_distributed.py)."""

import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import hf_kd  # noqa: F401
from hf_kd.data import ImageCollator
from hf_kd.losses.ffsd import (attention_loss, attention_map, decoder_loss, diversity_loss, diversity_target,
                               dml_loss, ffsd_losses, fusion_module_loss, lambda_warmup, leader_fusion_loss,
                               self_distillation_loss, shifted_attention, trans_fusion_loss)
from hf_kd.models import create_student
from hf_kd.models.student import MissingStagesError
from hf_kd.modules.ffsd import FusionModule, SelfDistillationDecoder, TransFusionModule
from hf_kd.optim import CompositeOptimizer
from hf_kd.modules.ffsd import FFSDModel
from hf_kd.trainers.ffsd import FFSDArguments, FFSDMetrics, FFSDTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])  # stages (8,32,32), (16,16,16), (32,8,8)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data, seed=0, model_args=TINY):
    torch.manual_seed(seed)
    return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=model_args)


def make_args(tmp, **kw):
    base = dict(output_dir=str(tmp), per_device_train_batch_size=16, per_device_eval_batch_size=16, report_to=[],
                use_cpu=True, dataloader_drop_last=True, seed=0, logging_steps=1, save_strategy="no",
                disable_tqdm=True)
    base.update(kw)
    return FFSDArguments(**base)


def make_trainer(data, tmp, seed=0, **kw):
    return FFSDTrainer(model=tiny(data, seed), args=make_args(tmp, **kw), train_dataset=data.train,
                       eval_dataset=data.eval, augmentation=data.batch_augment())


def batch(data, n=16, split="train"):
    b = ImageCollator()([getattr(data, split)[i] for i in range(n)])
    return data.batch_augment("none")(b["pixel_values"], train=False), b["labels"]


# --- losses: values on hand-built tensors and which inputs get gradient ---------------------------------------------
def test_attention_map_and_attention_loss_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    assert attention_map(f).tolist() == [[[[5.0, 2.0]]]]  # mean over channels of F^2
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)
    # rows normalised: (0.6, 0.8) vs (1, 0) -> 0.16 + 0.64; (0, 1) vs (0, 1) -> 0; mean over B*D = 4 entries
    assert attention_loss(x, y).item() == pytest.approx(0.8 / 4, abs=1e-6)
    assert attention_loss(x[:1], y[:1]).item() == pytest.approx(0.8 / 2, abs=1e-6)
    # the generic Lat detaches nothing: both sides get gradient (callers detach their targets)
    attention_loss(x, y).backward()
    assert x.grad is not None and y.grad is not None


def test_shifted_attention_by_hand_and_equals_the_sign_formula():
    a = torch.tensor([[0.1, 0.5, 0.2, 0.3, 0.2, 0.4]])  # D = 6 -> k = 2 -> tau = 0.2 (a tie: both 0.2 -> n/2)
    n = torch.tensor([[2.0]])
    assert shifted_attention(a, n) == pytest.approx(torch.tensor([[0.1, 1.5, 1.0, 1.7, 1.0, 1.6]]), abs=1e-6)
    # the official formula (n/2 - a) * sign(a - tau) + n/2 with tau the k-th smallest, k = floor(D/3)
    torch.manual_seed(0)
    att = torch.rand(4, 64)
    norm = att.norm(dim=1, keepdim=True)
    a_hat = F.normalize(att, dim=1)
    tau = a_hat.topk(64 // 3, dim=1, largest=False).values[:, -1:]
    official = (norm / 2 - a_hat) * torch.sign(a_hat - tau) + norm / 2
    assert torch.allclose(shifted_attention(a_hat, norm), official, atol=1e-6)
    with pytest.raises(ValueError, match="at least 3 positions"):
        shifted_attention(torch.rand(1, 2), torch.ones(1, 1))


def test_diversity_loss_by_hand_and_previous_student_gets_no_gradient():
    x = torch.tensor([0.0, 1.0, 0.0]).view(1, 1, 1, 3).requires_grad_()
    y = torch.tensor([3.0, 0.0, 4.0]).view(1, 1, 1, 3).requires_grad_()
    # n = 5, y_hat = (0.6, 0, 0.8), k = 1 -> tau = 0: (5 - 0.6, 5 / 2, 5 - 0.8); x_hat = (0, 1, 0)
    expected = (4.4 ** 2 + 1.5 ** 2 + 4.2 ** 2) / 3
    loss = diversity_loss(x, y)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert y.grad is None and x.grad is not None and x.grad.abs().sum() > 0


def test_diversity_target_by_hand_and_detached():
    # two equal channels (sqrt 3, 0, 2): att = (3, 0, 4), n = 5, a_hat = (0.6, 0, 0.8), target (4.4, 2.5, 4.2)
    f = torch.tensor([math.sqrt(3.0), 0.0, 2.0]).view(1, 1, 1, 3).repeat(1, 2, 1, 1).requires_grad_()
    shift = (torch.tensor([4.4, 2.5, 4.2]) - torch.tensor([0.6, 0.0, 0.8])) * 5 / 2  # (a_tilde - a_hat) * n / C
    out = diversity_target(f)
    assert out.shape == f.shape
    assert torch.allclose(out, f.detach() + shift.view(1, 1, 1, 3), atol=1e-5)
    assert not out.requires_grad


def test_dml_loss_by_hand_averages_over_the_other_students():
    t = 2.0
    z0 = torch.zeros(1, 2, requires_grad=True)
    z1 = torch.tensor([[2 * math.log(3.0), 0.0]], requires_grad=True)  # softmax(z1 / 2) = (3/4, 1/4)
    z2 = torch.zeros(1, 2, requires_grad=True)  # same as z0: KL 0
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    loss = dml_loss(z0, [z1, z2], t)
    assert loss.item() == pytest.approx(t ** 2 * (kl1 + 0.0) / 2, rel=1e-5)  # T^2 / (M - 1) * sum_j KL
    loss.backward()
    assert z1.grad is None and z2.grad is None and z0.grad.abs().sum() > 0


def test_self_distillation_loss_by_hand_and_decoder_output_detached():
    f = torch.tensor([math.sqrt(3.0), 2.0]).view(1, 1, 1, 2).requires_grad_()  # att (3, 4) -> (0.6, 0.8)
    d = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2).requires_grad_()  # att (1, 0)
    g = torch.rand(1, 3, 2, 2, requires_grad=True)
    loss = self_distillation_loss([f, g], [d, g.detach().clone() * 2])  # second level: same attention -> 0
    assert loss.item() == pytest.approx(0.8 / 2, abs=1e-6)
    loss.backward()
    assert d.grad is None and f.grad.abs().sum() > 0


def test_fusion_module_loss_by_hand_and_students_detached():
    zf = torch.zeros(1, 2, requires_grad=True)
    za = torch.tensor([[4 * math.log(3.0), 0.0]], requires_grad=True)
    zb = torch.zeros(1, 2, requires_grad=True)  # mean (2 ln 3, 0); / T = (ln 3, 0) -> (3/4, 1/4)
    ce, kd = fusion_module_loss(zf, [za, zb], torch.tensor([0]), 2.0)
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert ce.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert kd.item() == pytest.approx(4 * kl1, rel=1e-5)
    (ce + kd).backward()
    assert za.grad is None and zb.grad is None and zf.grad.abs().sum() > 0


def test_leader_fusion_and_trans_fusion_losses_detach_the_fusion_side():
    leader = torch.tensor([math.sqrt(3.0), 2.0]).view(1, 1, 1, 2).requires_grad_()
    fused = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2).repeat(1, 3, 1, 1).requires_grad_()
    loss = leader_fusion_loss(leader, fused)
    assert loss.item() == pytest.approx(0.4, abs=1e-6)
    loss.backward()
    assert fused.grad is None and leader.grad.abs().sum() > 0
    trans = torch.rand(2, 6, 2, 2, requires_grad=True)
    u = torch.rand(2, 6, 2, 2, requires_grad=True)
    loss = trans_fusion_loss(trans, u)
    assert loss.item() == pytest.approx(attention_loss(attention_map(trans), attention_map(u)).item(), abs=1e-7)
    loss.backward()
    assert u.grad is None and trans.grad.abs().sum() > 0


def test_decoder_loss_by_hand_feature_and_attention_terms():
    d = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).requires_grad_()  # full feature (3, 4) -> (0.6, 0.8)
    f = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).requires_grad_()
    feature, attention = decoder_loss([d], [f])
    assert feature.item() == pytest.approx(0.4, abs=1e-6)  # Lat over C*H*W
    assert attention.item() == pytest.approx(0.0, abs=1e-7)  # one position: both attentions normalise to 1
    (feature + attention).backward()
    assert f.grad is None and d.grad.abs().sum() > 0


def test_lambda_warmup_factors():
    factors = [lambda_warmup(1.0, e) for e in range(1, 8)]
    assert [round(v, 3) for v in factors] == [0.041, 0.165, 0.449, 0.819, 1.0, 1.0, 1.0]
    assert lambda_warmup(1000.0, 1) == pytest.approx(1000.0 * math.exp(-5 * 0.8 ** 2))
    assert lambda_warmup(10.0, 3, warmup_epochs=0) == 10.0


# --- modules ---------------------------------------------------------------------------------------------------------
def test_modules_shapes_and_official_init():
    torch.manual_seed(0)
    fusion = FusionModule(64, 100, num_students=2)
    logits, h = fusion(torch.rand(2, 128, 8, 8))
    assert logits.shape == (2, 100) and h.shape == (2, 64, 8, 8) and (h >= 0).all()
    assert fusion.conv1.groups == 128 and fusion.conv1.bias is None and fusion.conv2.bias is None
    assert fusion.conv1.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 128)), rel=0.1)
    assert fusion.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    assert (fusion.bn1.weight == 1).all() and (fusion.bn2.bias == 0).all()
    trans = TransFusionModule(8, num_students=3)
    assert trans(torch.rand(2, 8, 4, 4)).shape == (2, 24, 4, 4)
    assert trans.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / 24), rel=0.2)
    dec = SelfDistillationDecoder((32, 16, 8))
    outs = dec(torch.rand(2, 32, 4, 4))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 16), (2, 16, 8, 8)]  # shallow first


def test_build_model_and_clear_errors(data, tmp_path):
    leader = tiny(data)
    model = FFSDModel.build(leader, 3)
    assert model.student is leader and model.num_students == 3 and len(model.aux["decoders"]) == 2
    # independently initialised common students of the same config
    w = [s.timm_model.stem[0].weight for s in model.aux["students"]]
    assert w[0].shape == leader.timm_model.stem[0].weight.shape and not torch.equal(w[0], w[1])
    assert model.aux["fusion"].fc.out_features == data.num_labels
    with pytest.raises(MissingStagesError, match="FFSD needs 3"):
        FFSDModel.build(tiny(data, model_args=dict(channels=[8, 8], blocks=[1])), 2)
    with pytest.raises(MissingStagesError, match="halve"):  # stem + 2 stages: (8,32,32), (8,32,32), (16,16,16)
        FFSDModel.build(tiny(data, model_args=dict(channels=[8, 8, 16], blocks=[1, 1])), 2)
    with pytest.raises(ValueError, match="num_students must be >= 2"):
        make_args(tmp_path, num_students=1)
    with pytest.raises(ValueError, match="no pre-trained teacher"):
        FFSDTrainer(model=tiny(data), teacher=tiny(data), args=make_args(tmp_path), train_dataset=data.train)


# --- gradient routing and the one-backward / sequential equivalence -------------------------------------------------
def owner(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "student":
        return "leader"
    if parts[1] == "students":
        return f"student{parts[2]}"
    if parts[1] == "decoders":
        return f"decoder{int(parts[2]) + 1}"
    return parts[1]  # trans_fusion, fusion, leader_decoder


EXPECTED_OWNERS = {"leader_ce": {"leader"}, "leader_kd": {"leader"}, "leader_fusion": {"leader"},
                   "leader_sd": {"leader"}, "leader_trans_fusion": {"leader", "trans_fusion"},
                   "fusion_ce": {"fusion"}, "fusion_kd": {"fusion"}}


def test_each_term_reaches_exactly_its_own_network(data):
    model = FFSDModel.build(tiny(data), 3).train()
    x, y = batch(data, 8)
    out = model(x)
    lam = dict(lambda_diversity=1e-5, lambda_fusion=10.0, lambda_self_distillation=1000.0)
    total, terms = ffsd_losses(out, y, 2.0, **lam)
    named = [(n, p) for n, p in model.named_parameters()]
    for term, value in terms.items():
        if term in EXPECTED_OWNERS:
            expected = EXPECTED_OWNERS[term]
        elif term.startswith("leader_decoder"):
            expected = {"leader_decoder"}
        else:  # student{m}_* -> student m (students m >= 1 too: nothing flows into student m-1), decoder{m}_*
            expected = {term.split("_")[0]}
        grads = torch.autograd.grad(value, [p for _, p in named], retain_graph=True, allow_unused=True)
        reached = {owner(n) for (n, _), g in zip(named, grads) if g is not None and g.abs().sum() > 0}
        assert reached == expected, (term, reached)
    assert set(terms) >= {"student1_diversity", "student2_sd", "decoder2_feature", "leader_decoder_attention"}
    # the total is the official weighting of the unweighted terms
    manual = sum(terms[f"student{m}_ce"] + terms[f"student{m}_dml"] for m in range(3))
    manual += 1e-5 * sum(terms[f"student{m}_diversity"] + terms[f"student{m}_sd"] for m in (1, 2))
    manual += terms["fusion_ce"] + terms["fusion_kd"] + terms["leader_ce"] + terms["leader_kd"]
    manual += 10.0 * (terms["leader_fusion"] + terms["leader_trans_fusion"] + terms["leader_sd"])
    manual += 1000.0 * sum(terms[f"{d}_feature"] + terms[f"{d}_attention"]
                           for d in ("decoder1", "decoder2", "leader_decoder"))
    assert total.item() == pytest.approx(manual.item(), rel=1e-6)


def test_decoders_give_eval_mode_targets_before_their_train_mode_update(data):
    model = FFSDModel.build(tiny(data), 2).train()
    dec = model.aux["leader_decoder"]
    before = copy.deepcopy(dec).eval()
    x, _ = batch(data, 8)
    out = model(x)
    with torch.no_grad():
        expected = before(out["fused"])  # running statistics as they were before this step
    assert all(torch.equal(a, b) for a, b in zip(out["leader_sd_target"], expected))
    assert dec.training and all(d.training for d in model.aux["decoders"])
    # one train-mode pass per step: running stats updated once, by the decoder's own objective
    assert int(dec.blocks[0][1].num_batches_tracked) == 1
    assert not torch.equal(dec.blocks[0][1].running_mean, before.blocks[0][1].running_mean)


def test_decoders_are_wired_as_the_official_code(data):
    """Student m >= 1: its SD target is decoder m (index m-1) in eval mode on student m-1's *diversity-shifted* last map,
    and decoder m trains on student m's *own* maps; the leader's decoder gets the fused map as target input and the
    leader's own last map for training. The fusion input is the students' last maps in student order."""
    model = FFSDModel.build(tiny(data), 3).train()
    decs = [copy.deepcopy(d) for d in model.aux["decoders"]]
    lead = copy.deepcopy(model.aux["leader_decoder"])
    lead_before = copy.deepcopy(lead).eval()
    x, _ = batch(data, 8)
    out = model(x)
    maps = out["student_maps"]
    assert out["student_sd_targets"][0] is None and out["student_decoded"][0] is None  # student 0: CE + DML only
    with torch.no_grad():
        for m in (1, 2):
            want = decs[m - 1].eval()(diversity_target(maps[m - 1][-1]))
            assert all(torch.equal(a, b) for a, b in zip(out["student_sd_targets"][m], want)), m
            want = decs[m - 1].train()(maps[m][-1])  # train mode: batch statistics, its own student's deepest map
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out["student_decoded"][m], want)), m
        want = lead_before(out["fused"])
        assert all(torch.equal(a, b) for a, b in zip(out["leader_sd_target"], want))
        want = lead.train()(out["leader_maps"][-1])
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out["leader_decoded"], want))
    assert torch.equal(out["fusion_input"], torch.cat([m[-1] for m in maps], dim=1))
    assert not out["fusion_input"].requires_grad and out["student_decoded"][1][0].requires_grad


def test_one_backward_equals_the_official_sequential_updates(data, tmp_path):
    """Sum of all objectives + one CompositeOptimizer step == the official per-network backward/step sequence with
    its own optimizers (SGD Nesterov wd 1e-4 per student and leader, 1e-5 fusion, Adam wd 1e-4 per decoder)."""
    tr = FFSDTrainer(model=FFSDModel.build(tiny(data), 2), args=make_args(tmp_path), train_dataset=data.train)
    model, ref = tr.model, copy.deepcopy(tr.model)
    opt = tr.create_optimizer()
    a, lam = tr.args, tr.lambdas(2)
    x, y = batch(data, 16)
    sgd = dict(lr=a.learning_rate, momentum=0.9, nesterov=True)
    students = [torch.optim.SGD(s.parameters(), weight_decay=1e-4, **sgd) for s in ref.aux["students"]]
    fusion = torch.optim.SGD(ref.aux["fusion"].parameters(), weight_decay=1e-5, **sgd)
    leader = torch.optim.SGD([*ref.student.parameters(), *ref.aux["trans_fusion"].parameters()], weight_decay=1e-4,
                             **sgd)
    decoders = [torch.optim.Adam(d.parameters(), weight_decay=1e-4) for d in [*ref.aux["decoders"],
                                                                               ref.aux["leader_decoder"]]]

    def sequential_step():
        _, t = ffsd_losses(ref(x), y, a.temperature, **lam)
        objectives = [(students[0], t["student0_ce"] + t["student0_dml"]),
                      (students[1], t["student1_ce"] + t["student1_dml"]
                       + lam["lambda_diversity"] * (t["student1_diversity"] + t["student1_sd"])),
                      (fusion, t["fusion_ce"] + t["fusion_kd"]),
                      (leader, t["leader_ce"] + t["leader_kd"] + lam["lambda_fusion"] * (
                          t["leader_fusion"] + t["leader_trans_fusion"] + t["leader_sd"])),
                      (decoders[0], lam["lambda_self_distillation"] * (t["decoder1_feature"]
                                                                       + t["decoder1_attention"])),
                      (decoders[1], lam["lambda_self_distillation"] * (t["leader_decoder_feature"]
                                                                       + t["leader_decoder_attention"]))]
        for o, loss in objectives:
            o.zero_grad()
            loss.backward(retain_graph=True)
            o.step()

    for _ in range(2):  # two steps: momentum and Adam state matter
        opt.zero_grad()
        ffsd_losses(model(x), y, a.temperature, **lam)[0].backward()
        opt.step()
        sequential_step()
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in got:
        assert torch.allclose(got[k].float(), want[k].float(), atol=2e-6, rtol=1e-5), k


def test_trainer_step_updates_each_module_with_its_own_optimizer_settings(data, tmp_path):
    def changed(**kw):
        tr = make_trainer(data, tmp_path / str(len(kw)), max_steps=1, lr_scheduler_type="constant", **kw)
        before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        tr.train()
        return tr, {owner(n) for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)}

    tr, moved = changed(learning_rate=0.0)  # SGD groups frozen (wd is scaled by lr): only the Adam decoders move
    assert moved == {"decoder1", "leader_decoder"}
    tr, moved = changed(decoder_learning_rate=0.0)
    assert moved == {"leader", "student0", "student1", "trans_fusion", "fusion"}
    groups = tr.optimizer.param_groups
    fusion_ids = {id(p) for p in tr.ffsd_model.aux["fusion"].parameters()}
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-5, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == fusion_ids
    assert groups[0]["nesterov"] and groups[0]["momentum"] == 0.9 and "betas" in groups[2]


# --- composite optimizer ----------------------------------------------------------------------------------------------
def test_composite_optimizer_state_round_trip_and_live_groups():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = CompositeOptimizer([torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9),
                              torch.optim.Adam(b.parameters(), lr=1e-3)])
    assert isinstance(opt, torch.optim.Optimizer) and len(opt.param_groups) == 2
    (a(torch.ones(1, 2)).sum() + b(torch.ones(1, 2)).sum()).backward()
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    assert len(opt.state) == 4  # momentum buffers of a + Adam moments of b
    opt2 = CompositeOptimizer([torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9),
                               torch.optim.Adam(b.parameters(), lr=1e-3)])
    opt2.load_state_dict(state)
    assert torch.equal(opt2.optimizers[1].state[b.weight]["exp_avg"], opt.optimizers[1].state[b.weight]["exp_avg"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5)  # a scheduler drives both inner optimizers
    assert [g["lr"] for g in opt2.optimizers[0].param_groups + opt2.optimizers[1].param_groups] == [0.05, 5e-4]
    assert sched.get_last_lr() == [0.05, 5e-4]
    with pytest.raises(ValueError, match="CompositeOptimizer of 2"):
        opt2.load_state_dict(state["optimizers"][0])
    with pytest.raises(ValueError, match="two of"):
        CompositeOptimizer([torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.Adam(a.parameters())])


# --- trainer: warm-up, evaluation, export, exact resume -------------------------------------------------------------
def test_warmup_uses_the_one_based_epoch_at_epoch_start(data, tmp_path, monkeypatch):
    import hf_kd.trainers.ffsd as ffsd_trainer

    seen = []

    def spy(out, labels, temperature, **lam):
        seen.append(lam)
        return ffsd_losses(out, labels, temperature, **lam)

    monkeypatch.setattr(ffsd_trainer, "ffsd_losses", spy)
    tr = FFSDTrainer(model=tiny(data), args=make_args(tmp_path, num_train_epochs=2, per_device_train_batch_size=32),
                     train_dataset=data.train)
    tr.train()  # 64 samples / 32 = 2 steps per epoch
    assert [round(s["lambda_diversity"] / 1e-5, 3) for s in seen] == [0.041, 0.041, 0.165, 0.165]
    assert [round(s["lambda_fusion"] / 10, 3) for s in seen] == [0.041, 0.041, 0.165, 0.165]
    assert [round(s["lambda_self_distillation"] / 1000, 3) for s in seen] == [0.041, 0.041, 0.165, 0.165]
    assert any("loss_student1_diversity" in e and "loss_leader_decoder_feature" in e for e in tr.state.log_history)


def test_evaluation_reports_leader_first_then_students_fusion_ensemble(data, tmp_path):
    tr = make_trainer(data, tmp_path, max_steps=2)
    tr.train()
    metrics = tr.evaluate()
    for name in ("top1", "top5", "student0_top1", "student1_top1", "fusion_top1", "ensemble_top1", "ensemble_top5",
                 "students_average_top1", "students_oracle_top1"):
        assert f"eval_{name}" in metrics
    x, y = batch(data, 32, "eval")
    m = tr.ffsd_model.eval()
    with torch.no_grad():
        leader = m.student(x).logits
        ens = torch.stack([s(x).logits for s in m.aux["students"]]).mean(0)
    assert metrics["eval_top1"] == pytest.approx((leader.argmax(-1) == y).float().mean().item())
    assert metrics["eval_ensemble_top1"] == pytest.approx((ens.argmax(-1) == y).float().mean().item())
    assert metrics["eval_loss"] == pytest.approx(F.cross_entropy(leader, y).item(), rel=1e-4)


def test_student_average_and_oracle_accuracy_by_hand():
    """The official test log's "Average Acc" (mean of the students' accuracies) and "Ensemble Acc" (its
    ensemble_accuracy sums the students' boolean hit masks: any student right counts)."""
    from transformers import EvalPrediction

    # heads: leader, student0, student1, fusion, ensemble; top-2 ids per head; labels (0, 1, 2)
    preds = np.array([[[0, 1], [0, 2], [1, 2], [0, 1], [0, 1]],
                      [[1, 0], [0, 1], [2, 0], [1, 0], [1, 0]],
                      [[0, 1], [0, 1], [1, 0], [0, 1], [0, 1]]])
    got = FFSDMetrics(["leader", "student0", "student1", "fusion", "ensemble"], 2)(
        EvalPrediction(predictions=preds, label_ids=np.array([0, 1, 2])))
    # top-1 hits: student0 (T, F, F), student1 (F, F, F); top-2: student0 (T, T, F), student1 (F, F, F)
    assert got["students_average_top1"] == pytest.approx(1 / 6) and got["students_oracle_top1"] == pytest.approx(1 / 3)
    assert got["students_average_top5"] == pytest.approx(2 / 6) and got["students_oracle_top5"] == pytest.approx(2 / 3)
    assert got["top1"] == pytest.approx(2 / 3) and got["student1_top1"] == 0.0


def test_export_is_the_leader_alone_and_loads_with_automodel_and_pipeline(data, tmp_path):
    from transformers import pipeline

    tr = make_trainer(data, tmp_path / "run", max_steps=2)
    tr.train()
    out = str(tmp_path / "export")
    tr.save_model(out)
    assert "official FFSD code differs" not in open(os.path.join(out, "README.md")).read()  # WRN note only
    keys = set(load_file(os.path.join(out, "model.safetensors")))
    assert keys == set(tr.student.timm_model.state_dict())  # timm-native keys of the leader, nothing else
    loaded = AutoModelForImageClassification.from_pretrained(out).eval()
    x, _ = batch(data, 4, "eval")
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, tr.student.eval()(x).logits, atol=1e-6)
    image = data.eval[0]["pixel_values"].permute(1, 2, 0).numpy()
    from PIL import Image

    res = pipeline("image-classification", model=out, top_k=2)(Image.fromarray(image))
    assert len(res) == 2 and all(r["label"] in data.label_names for r in res)


def test_exact_resume_with_composite_optimizer_state(data, tmp_path):
    def make(out, max_steps):
        return make_trainer(data, out, max_steps=max_steps, save_strategy="steps", save_steps=3,
                            lr_milestones=[1], warmup_epochs=0.5)

    a = make(tmp_path / "a", 6)  # 4 steps per epoch: resume mid-epoch, then cross the warm-up epoch boundary
    a.train()
    make(tmp_path / "b", 6).train()
    c = make(tmp_path / "b", 6)
    c.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    sa, sc = a.ffsd_model.state_dict(), c.ffsd_model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    oa, oc = a.optimizer.state_dict()["optimizers"], c.optimizer.state_dict()["optimizers"]
    for inner_a, inner_c in zip(oa, oc):
        assert inner_a["param_groups"] == inner_c["param_groups"]
        for i, st in inner_a["state"].items():
            for name, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(inner_c["state"][i][name])), (i, name)


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet56", "wrn_16_2", "wrn_40_2"])
def test_presets_have_the_official_settings(arch):
    from hf_kd.recipes import parse_args

    m, d, a = parse_args(FFSDArguments, {}, ["--config", os.path.join(ROOT, "recipes", "configs",
                                                                      f"ffsd_cifar100_{arch}.yaml")])
    assert m.student == f"cifar_{arch}" and d.dataset == "cifar100" and a.num_train_epochs == 299
    assert (a.lambda_diversity, a.lambda_fusion, a.lambda_self_distillation, a.temperature) == (1e-5, 10, 1000, 2)
    assert (a.learning_rate, a.weight_decay, a.fusion_weight_decay, a.decoder_learning_rate) == (0.1, 1e-4, 1e-5, 1e-3)
    assert a.optim_args == "momentum=0.9,nesterov=True" and a.lr_milestones == [150, 225] and a.max_grad_norm == 0
    assert a.per_device_train_batch_size == 128 and a.pad_mode == "reflect" and a.num_students == 2


# 2 processes (gloo on the CPU): tests/test_distributed.py launches recipes/ffsd.py (with every other recipe) and
# checks FFSD's 2-process parity.


def test_bf16_and_channels_last_step(data, tmp_path):
    tr = make_trainer(data, tmp_path, max_steps=1, bf16=True, channels_last=True)
    tr.train()
    assert math.isfinite(tr.state.log_history[0]["loss"]) and tr.state.log_history[0]["loss_leader_sd"] > 0


def test_wrn_leader_trains_and_its_card_documents_the_official_wrn_differences(data, tmp_path):
    """WRN: the hooked maps are block1, block2 and relu(bn(block3)) (the official layer1, layer2, relu1); the card says
    how hf_kd's WRN differs from the copy in the official code (conv biases, stride, shortcut, BN momentum 0.9)."""
    torch.manual_seed(0)
    leader = create_student("cifar_wrn_16_2", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                            model_args=dict(depth=10, widen_factor=1))  # widths 16, 16, 32, 64; one block per stage
    tr = FFSDTrainer(model=leader, args=make_args(tmp_path, max_steps=1), train_dataset=data.train)
    m = tr.ffsd_model
    assert m.aux["fusion"].conv1.in_channels == 128 and m.aux["trans_fusion"].conv2.out_channels == 128
    x, _ = batch(data, 4)
    out = m.train()(x)
    last = leader.timm_model.final_act(leader.timm_model.stages(leader.timm_model.stem(x)))
    assert (out["leader_maps"][-1] >= 0).all() and out["leader_maps"][-1].shape == last.shape == (4, 64, 8, 8)
    assert (out["leader_maps"][0] < 0).any()  # block1 output is pre-activation, as the official WRN hook
    tr.train()
    tr.save_model(str(tmp_path / "wrn"))
    card = open(tmp_path / "wrn" / "README.md").read()
    assert "copy in the official FFSD code differs: its convs have biases" in card and "`momentum=0.9`" in card


def test_trainer_run_is_a_plain_training_loop_bit_for_bit(data, tmp_path):
    """What per-step parity cannot see: over whole epochs, ``FFSDTrainer.train`` computes exactly what a plain loop
    computes from the same start: each epoch the sampler's permutation (accelerate's seedable sampler: seed + epoch)
    and one draw from torch's global RNG (the DataLoader iterator's seed); each step one batched augmentation, the
    loss with the lambdas of the 1-based epoch (set here, not read from the trainer), one backward, the optimizers'
    step, the schedule's step, every gradient cleared. A Trainer-loop side effect (an extra random draw or
    augmentation, lambdas off by an epoch, a gradient left over, the schedule stepped in another order) breaks the
    bitwise equality. Evaluation is off: an evaluation draws one more number from the global RNG."""
    mem = data.in_memory()
    kw = dict(num_train_epochs=3, learning_rate=0.05, optim_args="momentum=0.9", weight_decay=5e-4,
              lr_scheduler_type="cosine", eval_strategy="no", logging_steps=100)
    recipe = make_trainer(mem, tmp_path / "a", **kw)
    recipe.train()

    plain = make_trainer(mem, tmp_path / "b", **kw)
    model, args = plain.model, plain.args
    n, bs = len(mem.train), args.per_device_train_batch_size
    steps = n // bs  # drop_last
    plain.create_optimizer()
    plain.create_scheduler(steps * 3, plain.optimizer)
    for epoch in range(3):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + epoch)).tolist()
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's base seed
        for k in range(steps):
            b = mem.train.__getitems__(order[k * bs:(k + 1) * bs])
            model.train()
            x = plain.augmentation(b["pixel_values"], train=True)
            loss, _ = plain.training_loss(model, x, b["labels"], lambdas=plain.lambdas(epoch + 1))
            loss.backward()
            plain.optimizer.step()
            plain.lr_scheduler.step()
            for p in model.parameters():
                p.grad = None
    assert recipe.state.global_step == 3 * steps
    a, b = recipe.model.state_dict(), model.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
