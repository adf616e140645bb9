"""One contract for every method (docs/design/overview.md), checked over the method registry (``hf_kd.methods``), so a new method
is covered without being listed here: its identity and files, its model's output type, the base's eval branch and
teacher rule, and no import cycle inside hf_kd."""

import ast
import os

import pytest
import torch
import torch.nn.functional as F

import hf_kd
from hf_kd.arguments import DistillationArguments
from hf_kd.methods import get_method, methods
from hf_kd.models import MissingStagesError, create_student
from hf_kd.modules.base import DistillationModel, DistillationOutput

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "hf_kd")
METHODS = list(methods())
TINY = dict(channels=[8, 8, 16, 32], blocks=[1, 1, 1])
TINY18 = dict(stem_act=False, channels=[8, 8, 16, 16, 32], blocks=[1, 1, 1, 1])


def student(data, seed=0, arch="cifar_resnet20", model_args=TINY):
    torch.manual_seed(seed)
    return create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std,
                          model_args=model_args)


def make(method, data, tmp_path, **kw):
    """A tiny trainer of ``method``: the smallest CIFAR ResNet that has the stages the method needs."""
    cls = get_method(method)
    args = cls.args_class(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=8,
                          max_steps=1, save_strategy="no", **kw)
    teacher = student(data, seed=1) if cls.uses_teacher == "required" else None
    try:
        model = student(data)
        return cls(model=model, teacher=teacher, args=args, train_dataset=data.train,
                   augmentation=data.batch_augment())
    except MissingStagesError:  # e.g. MixSKD's four-stage backbones
        return cls(model=student(data, arch="cifar_resnet18", model_args=TINY18), teacher=teacher, args=args,
                   train_dataset=data.train, augmentation=data.batch_augment())


def batch(trainer, data, n=8):
    b = trainer.data_collator([data.train[i] for i in range(n)])
    return {"pixel_values": trainer.augmentation(b["pixel_values"], train=False), "labels": b["labels"]}


def test_registry_holds_every_method_with_its_files():
    """Each method declares its identity; its recipe, card template and at least one preset exist."""
    assert {"supervised", "kd", "projector_kd", "ffsd", "self_kd", "mixskd"} <= set(METHODS)
    presets = os.listdir(os.path.join(ROOT, "recipes", "configs"))
    for name, cls in methods().items():
        assert cls.method_name == name and cls.method_title and cls.uses_teacher in ("required", "optional", "refused")
        assert issubclass(cls.args_class, DistillationArguments), name
        assert os.path.isfile(os.path.join(ROOT, "recipes", f"{cls.recipe}.py")), name
        assert os.path.isfile(os.path.join(ROOT, "model_cards", cls.card_template)), name
        assert any(p.startswith(cls.preset_prefix) for p in presets), name
        if name != "supervised":
            assert cls.citation and cls.paper, name
        assert getattr(hf_kd, cls.__name__) is cls and getattr(hf_kd, cls.args_class.__name__) is cls.args_class
    recipe_files = {f[:-3] for f in os.listdir(os.path.join(ROOT, "recipes")) if f.endswith(".py")}
    assert recipe_files == {cls.recipe for cls in methods().values()}  # no recipe without a registered method


@pytest.mark.parametrize("method", METHODS)
def test_forward_returns_the_one_output_type(data, tmp_path, method):
    """Eval and train forward both return a ``DistillationOutput``; its heads follow ``head_names``, exported head
    first, and the eval logits are (B, K) for one head, (B, H, K) for several."""
    tr = make(method, data, tmp_path)
    model, b = tr.model, batch(tr, data)
    assert isinstance(model, DistillationModel) and tr.eval_head_names == model.head_names
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=b["pixel_values"])
        own = tr.student.forward_kd(b["pixel_values"], stages=False).logits
    assert isinstance(out, DistillationOutput)
    heads = len(model.head_names)
    assert out.logits.shape == ((8, heads, data.num_labels) if heads > 1 else (8, data.num_labels))
    torch.testing.assert_close(out.heads[:, 0], own)
    model.train()
    step = tr.step_inputs(8, b["pixel_values"].device)
    out = model(pixel_values=b["pixel_values"], **step)
    assert isinstance(out, DistillationOutput) and out.heads.shape[:2] == (8, heads)
    loss, terms = tr.method_loss(out, b["pixel_values"], b["labels"], **step)
    assert loss.dim() == 0 and torch.isfinite(loss) and all(v.dim() == 0 for v in terms.values())


@pytest.mark.parametrize("method", METHODS)
def test_eval_loss_is_the_exported_heads_cross_entropy(data, tmp_path, method):
    """The base owns evaluation: eval_loss is CE of the exported head, the outputs are the model's logits."""
    tr = make(method, data, tmp_path)
    b = batch(tr, data)
    tr.model.eval()
    with torch.no_grad():
        loss, out = tr.compute_loss(tr.model, b, return_outputs=True)
        own = tr.student.forward_kd(b["pixel_values"], stages=False).logits
    torch.testing.assert_close(loss, F.cross_entropy(own, b["labels"]))
    first = out["logits"] if out["logits"].dim() == 2 else out["logits"][:, 0]
    torch.testing.assert_close(first, own)


@pytest.mark.parametrize("method", METHODS)
def test_teacher_rule_is_checked_once_in_the_base(data, tmp_path, method):
    cls = get_method(method)
    args = cls.args_class(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    if cls.uses_teacher == "required":
        with pytest.raises(ValueError, match="needs a teacher"):
            cls(model=student(data), args=args)
    elif cls.uses_teacher == "refused":
        with pytest.raises(ValueError, match="no pre-trained teacher"):
            cls(model=student(data), teacher=student(data, seed=1), args=args)


def _module_imports(path: str, module: str) -> set[str]:
    """hf_kd modules imported by ``path``, at module level or inside a function (a deferred import that closes a
    loop is still a cycle: two modules that cannot be read or moved apart)."""
    tree = ast.parse(open(path).read())
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hf_kd")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("hf_kd"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def test_no_import_cycle_inside_hf_kd():
    """The import graph of hf_kd's modules has no cycle (``cards`` and the trainer base used to import each
    other). A package's lazy exports (``hf_kd._lazy``) are names, not imports, so they add no edge."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                modules[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    graph = {m: {t for t in _module_imports(p, m) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ is imported before its submodules: importing hf_kd.x.y runs hf_kd and hf_kd.x first
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
