"""Float64 stays float64: losses and the teacher's outputs upcast only half precision (``upcast_half``).

A float64 run (the golden parity tests) must not be rounded to float32 on the way; bf16/fp16 (autocast, a teacher
held in half precision) still gets float32 norms, attention maps and BCE logits.
"""

import pytest
import torch

from hf_kd import KDArguments, KDTrainer, create_student, load_teacher
from hf_kd.losses.ffsd import attention_loss, attention_map, diversity_loss, diversity_target
from hf_kd.losses.mixskd import discriminator_bce
from hf_kd.losses.precision import upcast_half
from hf_kd.losses.projector_kd import projector_cosine_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_upcast_half_only_touches_half_precision():
    for dtype in (torch.float16, torch.bfloat16):
        assert upcast_half(torch.ones(2, dtype=dtype)).dtype == torch.float32
    for dtype in (torch.float32, torch.float64):
        x = torch.ones(2, dtype=dtype)
        assert upcast_half(x) is x


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float32)])
def test_losses_keep_float64_and_upcast_half(dtype, expected):
    torch.manual_seed(0)
    f = torch.rand(2, 4, 6, 6, dtype=torch.float64).to(dtype)
    g = torch.rand(2, 4, 6, 6, dtype=torch.float64).to(dtype)
    assert attention_map(f).dtype == expected
    assert attention_loss(f, g).dtype == expected
    assert diversity_loss(attention_map(f), attention_map(g)).dtype == expected
    assert diversity_target(f).dtype == dtype  # a shifted feature map, in the map's own dtype
    assert projector_cosine_loss(f.flatten(1), g.flatten(1)).dtype == expected
    assert discriminator_bce([f[:, :2, 0, 0].repeat(2, 1)]).dtype == expected


def test_float64_losses_are_not_rounded_to_float32():
    """The values themselves: a float32 detour would differ from the float64 result by ~1e-8 relative."""
    torch.manual_seed(0)
    f, g = torch.rand(4, 8, 5, 5, dtype=torch.float64), torch.rand(4, 8, 5, 5, dtype=torch.float64)
    exact = ((f.flatten(1) / f.flatten(1).norm(dim=1, keepdim=True)
              - g.flatten(1) / g.flatten(1).norm(dim=1, keepdim=True)) ** 2).mean()
    assert abs(attention_loss(f, g).item() - exact.item()) <= 1e-15 * exact.item()
    p, t = torch.rand(4, 16, dtype=torch.float64), torch.rand(4, 16, dtype=torch.float64)
    cos = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1))
    assert abs(projector_cosine_loss(p, t).item() - (1 - cos).mean().item()) <= 1e-15


def _trainer(tmp_path, teacher_dtype):
    torch.manual_seed(0)
    tiny = dict(channels=[8, 8, 16, 16], blocks=[1, 1, 1])
    student = create_student("cifar_resnet20", 10, model_args=tiny).double()
    teacher = create_student("cifar_resnet20", 10, model_args=tiny).to(teacher_dtype)
    args = KDArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    return KDTrainer(model=student, teacher=teacher, args=args)


def test_teacher_forward_keeps_float64_and_upcasts_half(tmp_path):
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    out = _trainer(tmp_path, torch.float64).teacher_forward(x)
    assert out.logits.dtype == out.pre_logits.dtype == torch.float64
    out = _trainer(tmp_path, torch.bfloat16).teacher_forward(x)
    assert out.logits.dtype == out.pre_logits.dtype == torch.float32


def test_transformers_teacher_inputs_keep_float64(tmp_path):
    """A teacher's input (undo the student's normalisation, resize, its own normalisation) is made in the batch's
    dtype: float64 stays float64 (it was rounded to float32), half precision is upcast to float32. The expected
    input is written out by hand in float64, with statistics that float32 cannot hold exactly."""
    import torch.nn.functional as F
    from test_transformers_teacher import save_vit

    from hf_kd.models import TeacherInput, input_spec

    teacher = load_teacher(save_vit(tmp_path / "vit", [str(i) for i in range(10)])).double().eval()
    t_mean, t_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    teacher.preprocess.mean, teacher.preprocess.std = t_mean, t_std
    mean, std = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
    teacher_inputs = TeacherInput(mean, std, input_spec(teacher))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1)  # noqa: E731
    pixels = (x * as64(std) + as64(mean)).clamp(0.0, 1.0)
    expected = (F.interpolate(pixels, size=(24, 24), mode="bilinear", antialias=True).clamp(0.0, 1.0)
                - as64(t_mean)) / as64(t_std)
    inputs = teacher_inputs(x)
    assert inputs.dtype == torch.float64 and inputs.shape == (2, 3, 24, 24)
    torch.testing.assert_close(inputs, expected, rtol=1e-13, atol=1e-13)
    assert teacher_inputs(x.float()).dtype == torch.float32
    assert teacher_inputs(x.to(torch.bfloat16)).dtype == torch.float32
