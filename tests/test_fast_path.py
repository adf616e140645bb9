"""The fast path (``fast_path=True``, docs/design/fast_path.md): for every trainer the compiled training step has 0 graph breaks,
trains like the eager path and resumes exactly.

The compiled runs use ``backend="aot_eager"``: dynamo's capture and AOTAutograd's functionalised forward + backward +
update graph (what inductor compiles), without inductor's minutes of C++ compilation on 2 CPU cores; one slow test
runs the default (inductor) compile. CUDA graphs need a GPU (benchmarks/fast_path.py).
"""

import pytest
import torch

from hf_kd import DistillationArguments, create_student
from hf_kd.data.augment import RandomResizedCropAugment
from hf_kd.methods import get_method, methods
from hf_kd.models import MissingStagesError

# every test compiles or traces whole training steps: slow (docs/guides/development.md)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

METHODS = list(methods())
TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])
TINY_T = dict(channels=[8, 8, 16, 16], blocks=[1, 1, 1])
TINY18 = dict(stem_act=False, channels=[8, 8, 16, 16, 32], blocks=[1, 1, 1, 1])
AOT = {"backend": "aot_eager"}


def student(data, arch="cifar_resnet20", model_args=TINY, seed=0):
    torch.manual_seed(seed)
    return create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=model_args)


def make(method, data, out, fast, **kw):
    """A tiny run of ``method`` (from the registry): 8 images a step, SGD Nesterov with weight decay, cosine schedule,
    4 steps; LightSKD with its random-resized crop and DSR from the epoch's second step."""
    a = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, report_to=[], use_cpu=True,
             dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9,nesterov=True",
             learning_rate=0.05, weight_decay=5e-4, lr_scheduler_type="cosine", logging_steps=2,
             save_strategy="no", disable_tqdm=True, fast_path=fast)
    a.update(kw)
    cls = get_method(method)  # FFSD keeps its own optimisers (SGD over 2 groups + Adam over the decoders)
    teacher = student(data, model_args=TINY_T, seed=1) if cls.uses_teacher == "required" else None
    try:
        model = student(data)
        tr = cls(model=model, teacher=teacher, args=cls.args_class(**a), train_dataset=data.train,
                 augmentation=data.batch_augment())
    except MissingStagesError:  # MixSKD: a four-stage backbone
        tr = cls(model=student(data, "cifar_resnet18", TINY18), teacher=teacher, args=cls.args_class(**a),
                 train_dataset=data.train, augmentation=data.batch_augment())
    if fast:
        tr.fast_step.compile_options = dict(AOT)
    return tr


def loss_logs(tr):
    return [{k: v for k, v in log.items() if k.startswith("loss")} for log in tr.state.log_history if "loss" in log]


def snapshot(tr):
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Per method, computed once and shared: the eager run, the fast run (checkpoints at steps 2 and 4) and the
    same fast trainer resumed from checkpoint-2 (its compiled step is reused, so the resume costs no compile)."""
    cache = {}

    def get(method):
        if method not in cache:
            tmp = tmp_path_factory.mktemp(method)
            eager = make(method, data, tmp / "eager", False)
            eager.train()
            fast = make(method, data, tmp / "fast", True, save_strategy="steps", save_steps=2)
            fast.train()
            straight, straight_logs = snapshot(fast), loss_logs(fast)
            fast.train(resume_from_checkpoint=str(tmp / "fast" / "checkpoint-2"))
            cache[method] = dict(eager=snapshot(eager), eager_logs=loss_logs(eager), fast=straight,
                                 fast_logs=straight_logs, resumed=snapshot(fast), resumed_logs=loss_logs(fast),
                                 trainer=fast)
        return cache[method]

    return get


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_matches_eager(runs, method):
    """Same parameters, BN statistics and logged loss terms as the eager path after 4 steps (fp tolerance: foreach
    vs per-tensor optimizer arithmetic, fused graph vs eager rounding; terms are logged rounded to 6 decimals,
    so two values 1e-6 apart may differ by one last digit)."""
    r = runs(method)
    for k, v in r["eager"].items():
        torch.testing.assert_close(r["fast"][k], v, rtol=1e-4, atol=2e-5, msg=lambda m: f"{method} {k}: {m}")
    assert [sorted(x) for x in r["fast_logs"]] == [sorted(x) for x in r["eager_logs"]]  # the same terms logged
    assert len(r["eager_logs"]) == 2  # logging_steps=2 over 4 steps
    for fast, eager in zip(r["fast_logs"], r["eager_logs"]):
        for name in eager:
            assert fast[name] == pytest.approx(eager[name], rel=1e-4, abs=2e-6), (method, name)
    assert r["trainer"].fast_step.compiled is not None


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_resumes_exactly(runs, method):
    """4 steps straight == 2 steps + resume from checkpoint-2 + 2 steps, bit for bit (optimizer state rebound,
    augmentation RNG, FFSD's lambdas, LightSKD's DSR buffer, MixSKD's keyed mixup draws)."""
    r = runs(method)
    for k, v in r["fast"].items():
        assert torch.equal(r["resumed"][k], v), (method, k)
    assert r["resumed_logs"][-1] == r["fast_logs"][-1]
    assert r["trainer"].state.global_step == 4  # the resumed run did train steps 3 and 4


@pytest.mark.parametrize("method", METHODS)
def test_uncompiled_step_matches_eager(data, tmp_path, method):
    """The step function itself, run without a compiler (what mode="cuda_graph" captures on a GPU; on the CPU it runs
    eagerly): the eager path's parameters after 3 steps, its logged terms."""
    from torch._dynamo.utils import counters

    eager = make(method, data, tmp_path / "e", False, max_steps=3, logging_steps=3)
    eager.train()
    fast = make(method, data, tmp_path / "f", True, max_steps=3, logging_steps=3)
    fast.fast_step.mode = "cuda_graph"
    traced = counters["stats"]["calls_captured"], counters["frames"]["total"]
    fast.train()
    step = fast.fast_step
    assert step.steps == 3 and step.grad_norm is not None  # every step ran through the fast step
    assert step.compiled is None and not step.graphs  # no compiled step was made, no CUDA graph captured
    assert (counters["stats"]["calls_captured"], counters["frames"]["total"]) == traced  # dynamo traced nothing
    for k, v in snapshot(eager).items():
        torch.testing.assert_close(snapshot(fast)[k], v, rtol=1e-4, atol=2e-5, msg=lambda m: f"{method} {k}: {m}")
    assert len(loss_logs(fast)) == len(loss_logs(eager)) == 1
    for a, b in zip(loss_logs(fast), loss_logs(eager)):
        assert a == pytest.approx(b, rel=1e-4, abs=2e-6)


@pytest.mark.parametrize("method", METHODS)
def test_fast_step_has_no_graph_breaks(data, tmp_path, method):
    """torch._dynamo.explain of one training step: a single graph, 0 graph breaks (forward, every loss term,
    torch.autograd.grad and the optimizer update)."""
    tr = make(method, data, tmp_path, True)
    if method == "self_kd":  # the step with the DSR term (the epoch's first step has none)
        tr.dsr_previous = torch.zeros(8, data.num_labels)
    explanation = tr.fast_step.explain()
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_method_code_does_not_know_the_fast_path():
    """Methods declare per-step values (step_inputs, next_step_inputs) and nothing else: no method's trainer file, and
    no loss or module file, refers to the fast path's machinery."""
    import inspect
    import pathlib
    import re

    import hf_kd

    root = pathlib.Path(hf_kd.__file__).parent
    files = {pathlib.Path(inspect.getsourcefile(get_method(m))) for m in METHODS}
    files |= set((root / "losses").glob("*.py")) | set((root / "modules").glob("*.py"))
    files -= {root / "trainers" / "base.py"}  # the supervised baseline is the base class's own method_loss
    pattern = re.compile(r"\bgraph\s*(=|: bool)|fast_|FastStep|torch\.compile|mark_persistent|is_compiling|_dynamo")
    found = [f"{f.relative_to(root)}:{n}: {line.strip()}" for f in sorted(files)
             for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_compiling_leaves_dynamo_config_as_it_was(runs):
    """trace_autograd_ops is switched on only while the compiled step runs."""
    runs("supervised")
    assert torch._dynamo.config.trace_autograd_ops is False


def test_augmentation_draw_then_augment_equals_the_eager_call(data):
    """The fast path draws the random parameters first (on the host) and augments in the graph: same pixels."""
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    augs = [data.batch_augment(), data.batch_augment(pad_mode="reflect"), data.batch_augment("imagenet"),
            RandomResizedCropAugment(data.mean, data.std)]
    for aug in augs:
        torch.manual_seed(3)
        eager = aug(x, train=True)
        torch.manual_seed(3)
        assert torch.equal(aug.augment(x, aug.draw(x.shape)), eager), aug


def test_unsupported_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        DistillationArguments(output_dir=str(tmp_path), use_cpu=True, fast_path=True, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="torch_compile"):
        DistillationArguments(output_dir=str(tmp_path), use_cpu=True, fast_path=True, torch_compile=True)
    a = DistillationArguments(output_dir=str(tmp_path), use_cpu=True, fast_path=True)
    assert not a.logging_nan_inf_filter and a.per_device_eval_batch_size == 1024


def test_unsupported_optimizer_is_a_clear_error(data, tmp_path):
    tr = make("supervised", data, tmp_path, True, optim="adafactor", optim_args=None)
    with pytest.raises(ValueError, match="SGD, Adam and AdamW"):
        tr.train()


def test_adamw_and_clipping_match_eager(data, tmp_path):
    """AdamW (decoupled decay, capturable foreach in the graph) and max_grad_norm clipping inside the graph."""
    kw = dict(optim="adamw_torch", optim_args=None, learning_rate=1e-3, weight_decay=0.05, max_grad_norm=0.5,
              max_steps=3)
    eager = make("supervised", data, tmp_path / "e", False, **kw)
    eager.train()
    fast = make("supervised", data, tmp_path / "f", True, **kw)
    fast.train()
    # eager and fast differ by ~1e-8 here; AdamW almost cancels a uniform gradient scale, so a missing clip moves
    # the parameters by only ~3e-5 in 3 steps: the tolerance stays well below that
    for k, v in snapshot(eager).items():
        torch.testing.assert_close(snapshot(fast)[k], v, rtol=1e-5, atol=1e-6)
    norms = [x.get("grad_norm") for x in eager.state.log_history[:-1]]
    assert [x.get("grad_norm") for x in fast.state.log_history[:-1]] == pytest.approx(norms, rel=1e-4)
    assert max(norms) > kw["max_grad_norm"]  # clipping did act


@pytest.mark.slow
def test_fast_path_with_inductor_matches_eager(data, tmp_path):
    """The default compile (inductor, C++ on the CPU) of the whole step: same training as eager (~1-2 min)."""
    eager = make("supervised", data, tmp_path / "e", False, max_steps=2)
    eager.train()
    fast = make("supervised", data, tmp_path / "f", True, max_steps=2)
    fast.fast_step.compile_options = None  # FastStep's default: inductor (mode="reduce-overhead" on CUDA)
    fast.train()
    for k, v in snapshot(eager).items():
        torch.testing.assert_close(snapshot(fast)[k], v, rtol=1e-4, atol=2e-5)
