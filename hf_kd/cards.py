"""Model cards for exported students, filled from the trainer at export.

``write_model_card(trainer, folder)`` renders the method's ``model_cards/<card_template>`` (else ``default.md``; method
templates extend ``default.md`` and fill its blocks) into ``folder/README.md`` and draws
``folder/training_curves.png`` (loss terms and eval accuracy per epoch from ``trainer.state.log_history``), embedded
in the card. The YAML header is built with ``huggingface_hub.ModelCardData`` + ``EvalResult`` so the Hub shows the
results (``model-index``).

What the card reads from the trainer: the method's identity (``method_name``, ``method_title``, ``paper``,
``citation``, ``recipe``, ``card_template``, the class docstring); ``student``, ``teacher``, ``augmentation``,
``train_dataset`` / ``eval_dataset`` sizes, ``args`` (every distillation hyperparameter and the non-default training
arguments) and ``state.log_history`` (final and best evaluation); and the run description that
``DistillationTrainer`` declares (default None) and ``hf_kd.recipes.run`` or the user sets: ``dataset_name``,
``dataset_title``, ``dataset_split``, ``dataset_subsets``, ``dataset_inferred`` (what was read from the data),
``data_config``, ``command``, ``teacher_name``, ``teacher_accuracy`` (else read from the teacher's own card when it is
a local export or cached) and
``baseline_metrics`` (the same student trained without distillation: ``top1`` / ``top5`` or ``eval_top1`` /
``eval_top5``, optional ``name``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import shlex
from pathlib import Path
from typing import Optional

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from .arguments import DistillationArguments

__all__ = ["write_model_card", "plot_training_curves", "training_curves_figure", "method_hyperparameters", "final_and_best",
           "evaluation_of_export", "TEMPLATES", "CURVES_FILE"]

TEMPLATES = Path(__file__).parent / "model_cards"
CURVES_FILE = "training_curves.png"
_SHOWN_TRAINING_ARGS = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                        "learning_rate", "optim", "optim_args", "weight_decay", "lr_scheduler_type", "warmup_steps",
                        "warmup_ratio", "max_grad_norm", "label_smoothing_factor", "seed", "bf16", "fp16")
_SECRET = ("token", "password", "secret")


def _plain(v):
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def method_hyperparameters(args) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    """(distillation hyperparameters, training hyperparameters) of a run, as (name, value) pairs.

    Distillation: every field the method's arguments class adds to ``DistillationArguments`` (temperature, loss
    weights, ...). Training: the ``DistillationArguments`` fields (schedule, augmentation) + key ``TrainingArguments``.
    """
    base = {f.name for f in dataclasses.fields(DistillationArguments)}
    own = base - {f.name for f in dataclasses.fields(TrainingArguments)} - {"overwrite_output_dir"}
    method = [(f.name, _plain(getattr(args, f.name))) for f in dataclasses.fields(args) if f.name not in base]
    training = [(n, _plain(getattr(args, n))) for n in (*sorted(own), *_SHOWN_TRAINING_ARGS) if hasattr(args, n)]
    return method, training


def _is_default(name: str, value, f: dataclasses.Field) -> bool:
    """Whether a ``to_dict()`` value is the field's default, up to TrainingArguments' ``__post_init__`` rewrites
    (None -> False/[]/{...}, report_to "none" -> []). No default instance is built: constructing TrainingArguments
    resets Accelerate's global state mid-training."""
    default = _plain(_default(f))
    if value == default or (not value and not default) or (name == "report_to" and value in ([], ["none"])
                                                            and default in ("none", None)):
        return True
    if name == "accelerator_config" and default is None:
        from transformers.trainer_pt_utils import AcceleratorConfig

        return isinstance(value, dict) and value == {k: v for k, v in AcceleratorConfig().to_dict().items()
                                                     if k in value}
    return False


def run_config(trainer) -> dict:
    """A recipe YAML (``--config``) reproducing the run: student, teacher, data, every non-default argument."""
    args = trainer.args
    cfg = {"student": trainer.student.config.architecture}
    if trainer.teacher is not None and _teacher_name(trainer):
        cfg["teacher"] = _teacher_name(trainer)
    if trainer.dataset_name:
        cfg["dataset"] = trainer.dataset_name
    cfg.update(trainer.data_config or {})
    fields = {f.name: f for f in dataclasses.fields(args) if f.init}
    skip = {"output_dir", "logging_dir", "hub_model_id", "push_to_hub", "resume_from_checkpoint", "do_train",
            "do_eval", "do_predict"}  # do_*: derived by TrainingArguments, not used by Trainer
    for name, value in args.to_dict().items():  # to_dict: enums as values, nested configs as dicts
        f = fields.get(name)
        if f is None or name in skip or name in getattr(args, "_quieted", ()) or any(s in name for s in _SECRET) \
                or _is_default(name, value, f):
            continue
        cfg[name] = value if isinstance(value, (bool, int, float, str, list, dict)) else str(value)
    return cfg


def redact_command(command: str) -> str:
    """The command line with the values of secret flags (``--hub_token``, ...) replaced by ``***``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out, hide = [], False
    for w in words:
        flag = w.startswith("--") and any(s in w.split("=", 1)[0].lower() for s in _SECRET)
        if hide and not w.startswith("--"):
            out.append("***")
        elif flag and "=" in w:
            out.append(w.split("=", 1)[0] + "=***")
        else:
            out.append(w)
        hide = flag and "=" not in w
    return " ".join(shlex.quote(w) if w != "***" and not w.endswith("=***") else w for w in out)


def reproduce_command(trainer) -> str:
    command = trainer.command
    if command:
        return redact_command(command)
    recipe = trainer.recipe
    return f"accelerate launch recipes/{recipe}.py --config config.yaml  # config.yaml: the YAML above"


def final_and_best(log_history: list[dict]) -> tuple[dict, Optional[float]]:
    """(metrics of the last evaluation without the ``eval_`` prefix, best ``eval_top1`` over all evaluations)."""
    evals = [e for e in log_history if "eval_top1" in e]
    if not evals:
        return {}, None
    final = {k[len("eval_"):]: v for k, v in evals[-1].items()
             if k.startswith("eval_") and ("top1" in k or "top5" in k)}
    return final, max(e["eval_top1"] for e in evals)


def evaluation_of_export(trainer) -> tuple[Optional[dict], Optional[dict]]:
    """(the logged evaluation of the weights the export holds, the final evaluation when that is another one).

    After ``load_best_model_at_end`` the model holds the best checkpoint (``trainer.loaded_best_checkpoint``): its
    evaluation is the one logged at that checkpoint's step, and the final evaluation (of weights not exported) comes
    second. Otherwise the export holds the last weights: the last evaluation, and None. (None, None) without one."""
    evals = [e for e in trainer.state.log_history if "eval_top1" in e]
    if not evals:
        return None, None
    best = getattr(trainer, "loaded_best_checkpoint", None)
    if best:
        step = int(os.path.basename(os.path.normpath(best)).rsplit("-", 1)[-1])
        at_best = [e for e in evals if e.get("step") == step]
        if at_best and at_best[-1] is not evals[-1]:
            return at_best[-1], evals[-1]
        if at_best:
            return at_best[-1], None
    return evals[-1], None


def best_metric_key(args) -> str:
    """The logged key ``load_best_model_at_end`` selects by (``metric_for_best_model`` "loss" is ``eval_loss``)."""
    metric = args.metric_for_best_model or "loss"
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def _top_metrics(entry: Optional[dict]) -> dict:
    """An evaluation's top-1/top-5 values of every head, without the ``eval_`` prefix."""
    return {k[len("eval_"):]: v for k, v in (entry or {}).items()
            if k.startswith("eval_") and ("top1" in k or "top5" in k)}


def _baseline(trainer, final: dict) -> Optional[dict]:
    """The no-distillation baseline row (values as strings) with the gain of this run, if the run has one."""
    b = trainer.baseline_metrics
    if not b:
        return None
    row = {"name": b.get("name", "same student without distillation")}
    for k in ("top1", "top5"):
        v = b.get(k, b.get(f"eval_{k}"))
        row[k] = f"{v:.4f}" if v is not None else "-"
        row[f"delta_{k}"] = f"{final[k] - v:+.4f}" if v is not None and k in final else "-"
    return row


def _teacher_name(trainer) -> Optional[str]:
    t = trainer.teacher
    return trainer.teacher_name or (getattr(t.config, "_name_or_path", None) if t is not None
                                                      else None) or None


def _teacher_architecture(teacher) -> str:
    """timm architecture of a ``timm_wrapper`` teacher, else the transformers class (``ViTForImageClassification``)."""
    return getattr(teacher.config, "architecture", None) or getattr(teacher, "architecture", None) or \
        (getattr(teacher.config, "architectures", None) or [type(teacher).__name__])[0]


def _teacher_accuracy(trainer, name: Optional[str]) -> Optional[float]:
    """``trainer.teacher_accuracy``, else the Top-1 in the teacher's own model card (local export or Hub cache)."""
    acc = trainer.teacher_accuracy
    if acc is not None or not name:
        return acc
    path = os.path.join(name, "README.md")
    if not os.path.isfile(path):
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError

        try:
            cached = try_to_load_from_cache(name, "README.md")
        except HFValidationError:  # a name that is not a repo id
            return None
        path = cached if isinstance(cached, str) else None
    try:
        results = ModelCard.load(path).data.eval_results or [] if path else []
    except (OSError, ValueError, yaml.YAMLError):  # a card that cannot be read or parsed: no accuracy recorded
        return None
    top1 = [r.metric_value for r in results if "top-1" in (r.metric_name or "").lower() or r.metric_type == "accuracy"]
    return top1[0] if top1 else None


def _colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10 lines, tab20 up to 20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def _panel(ax, series: dict[str, list[tuple[float, float]]], emphasise: str, title: str, ylabel: str):
    """One line per series in a distinct colour, ``emphasise`` black and thicker, the legend outside the axes."""
    others = [k for k in series if k != emphasise]
    for key, colour in zip(others, _colours(len(others))):
        pts = series[key]
        ax.plot(*zip(*pts), color=colour, lw=1.2, marker="." if len(pts) < 30 else None, label=key)
    if emphasise in series:
        pts = series[emphasise]
        ax.plot(*zip(*pts), color="black", lw=2.2, marker="o" if len(pts) < 30 else None, label=emphasise, zorder=3)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] != emphasise)  # the emphasised line first
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              fontsize=8, frameon=False, borderaxespad=0.0, ncol=_legend_columns(len(labels)))


def _legend_columns(n: int) -> int:
    return math.ceil(n / 10)


def _panel_height(n: int) -> float:
    """Inches a panel needs so that its legend (``n`` entries, 10 per column) stays beside it."""
    return max(2.8, 0.2 * math.ceil(n / _legend_columns(n)) + 0.9)


def training_curves_figure(log_history: list[dict]):
    """The training-curves figure (matplotlib ``Figure``) of a run's ``log_history``, or None if nothing was logged.

    One panel per quantity, stacked, each with its legend outside the axes and a distinct colour per line:
    the logged loss terms (unweighted, as logged; log scale when they span more than two decades, since terms such
    as FFSD's diversity loss are orders of magnitude above the rest), then the evaluation top-1 and top-5 of every
    head, the exported model in black.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [e for e in log_history if "loss" in e and "epoch" in e]
    evals = [e for e in log_history if "eval_top1" in e and "epoch" in e]
    loss_keys = ["loss"] + sorted({k for e in train for k in e if k.startswith("loss_")})
    total = "total (weighted)" if len(loss_keys) > 1 else "loss"
    losses = {(total if k == "loss" else k[len("loss_"):]): [(e["epoch"], e[k]) for e in train if k in e]
              for k in loss_keys}
    losses = {k: v for k, v in losses.items() if v}
    accuracy = {}
    for metric in ("top1", "top5"):
        keys = sorted({k for e in evals for k in e if k.startswith("eval_") and k.endswith(metric)})
        accuracy[metric] = {("exported model" if k == f"eval_{metric}" else k[len("eval_"):-len(metric) - 1]):
                            [(e["epoch"], e[k]) for e in evals if k in e] for k in keys}
    panels = [p for p in (losses, accuracy["top1"], accuracy["top5"]) if p]
    if not panels:
        return None
    heights = [_panel_height(len(p)) for p in panels]
    fig = Figure(figsize=(9, sum(heights)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    i = 0
    if losses:
        values = [v for pts in losses.values() for _, v in pts]
        log = min(values) > 0 and max(values) / min(values) > 100
        _panel(axes[i], losses, total, "Training loss terms" if len(losses) > 1 else "Training loss",
               ("loss (unweighted terms" + (", log scale)" if log else ")")) if len(losses) > 1
               else "loss" + (" (log scale)" if log else ""))
        if log:
            axes[i].set_yscale("log")
        i += 1
    for metric, title in (("top1", "Evaluation top-1 accuracy"), ("top5", "Evaluation top-5 accuracy")):
        if accuracy[metric]:
            _panel(axes[i], accuracy[metric], "exported model", title, "accuracy")
            i += 1
    fig.tight_layout()
    return fig


def plot_training_curves(log_history: list[dict], path: str) -> bool:
    """Draw ``training_curves_figure`` to a PNG. Uses matplotlib's Agg canvas directly (no pyplot, so no global
    backend change). Returns False (nothing written) without matplotlib or without logged values."""
    try:
        fig = training_curves_figure(log_history)
    except ImportError:
        return False
    if fig is None:
        return False
    fig.savefig(path, bbox_inches="tight")  # "tight": the legends outside the axes are kept
    return True


def _rounded(values):
    return [round(float(v), 4) for v in values] if values else values


def _dataset_size(ds) -> Optional[int]:
    try:
        return len(ds) if ds is not None else None
    except TypeError:
        return None


def write_model_card(trainer, output_dir: str) -> ModelCard:
    """Render the method's card into ``output_dir/README.md`` (+ ``training_curves.png``); returns the card."""
    student, args = trainer.student, trainer.args
    cfg = student.config
    arch = cfg.architecture
    _, best = final_and_best(trainer.state.log_history)
    exported, last = evaluation_of_export(trainer)
    final = _top_metrics(exported)  # what the weights in this folder scored: the table and the model-index
    best_checkpoint = None
    if last is not None:  # the best checkpoint was exported: say so, with the final evaluation beside it
        key = best_metric_key(args)
        best_checkpoint = dict(name=os.path.basename(os.path.normpath(trainer.loaded_best_checkpoint)),
                               step=exported.get("step"), metric=key, value=exported.get(key),
                               final_step=last.get("step"),
                               final={k: f"{v:.4f}" for k, v in _top_metrics(last).items() if k in ("top1", "top5")})
    dataset_id = trainer.dataset_name
    dataset = trainer.dataset_title or dataset_id
    split = trainer.dataset_split
    hub_id = trainer.hub_model_id  # set once the trainer pushes (Trainer.init_hf_repo)
    repo = hub_id or os.path.basename(os.path.abspath(args.output_dir))  # the card's title and model-index name
    where = hub_id or args.output_dir  # what the Use snippet loads: the Hub id after a push, else the local folder
    names = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}
    eval_results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                               dataset_type=dataset_id or "custom", dataset_name=dataset or "custom",
                               dataset_split=split, metric_type="accuracy", metric_name=names[k],
                               metric_value=round(float(final[k]), 4)) for k in ("top1", "top5") if k in final]
    data = ModelCardData(library_name="transformers", license="apache-2.0", pipeline_tag="image-classification",
                         tags=list(dict.fromkeys(["knowledge-distillation", trainer.method_name, "image-classification",
                                                  "timm", "hf_kd", *trainer.card_tags])),
                         datasets=[dataset_id] if dataset_id else None, model_name=repo,
                         eval_results=eval_results or None)
    teacher = trainer.teacher
    teacher_name = _teacher_name(trainer)
    method_hp, training_hp = method_hyperparameters(args)
    used = trainer.used_hyperparameters()
    method_hp = [(n, _plain(used.get(n, v))) for n, v in method_hp]
    training_hp = [(n, _plain(used.get(n, v))) for n, v in training_hp]
    curves = plot_training_curves(trainer.state.log_history, os.path.join(output_dir, CURVES_FILE))
    ws = max(1, getattr(args, "world_size", 1))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             trim_blocks=False)
    template = trainer.card_template or "default.md"  # a user's own subclass without a template: the default
    name = template if (TEMPLATES / template).exists() else "default.md"
    content = env.get_template(name).render(
        card_data=data.to_yaml(), model_name=repo, repo_id=where, on_hub=bool(hub_id),
        timm_id=f"hf-hub:{hub_id}" if hub_id else f"local-dir:{where}", method_name=trainer.method_name,
        method_title=trainer.method_title,
        method_description=(type(trainer).__doc__ or "").strip().split("\n\n")[0],
        citation=(trainer.citation or "").strip() or None, paper=trainer.paper,
        student_architecture=arch, num_parameters=sum(p.numel() for p in student.parameters()),
        num_labels=cfg.num_labels, labels=[cfg.id2label[i] for i in range(min(cfg.num_labels, 10))],
        input_size=cfg.pretrained_cfg.get("input_size"), mean=_rounded(cfg.pretrained_cfg.get("mean")),
        std=_rounded(cfg.pretrained_cfg.get("std")), needs_hf_kd=arch.startswith("cifar_"),
        dataset=dataset, dataset_split=split, subsets=trainer.dataset_subsets or {},
        data_inferred=trainer.dataset_inferred or {},
        num_train=_dataset_size(trainer.train_dataset),
        num_eval=_dataset_size(trainer.eval_dataset),
        final={k: f"{v:.4f}" for k, v in final.items() if k in ("top1", "top5")},
        other_heads=[(k, f"{v:.4f}") for k, v in final.items() if k not in ("top1", "top5")],
        best=f"{best:.4f}" if best is not None else None, best_checkpoint=best_checkpoint,
        evaluated_step=exported.get("step") if exported else None,
        baseline=_baseline(trainer, final),
        teacher=(teacher_name or "(in-memory model, no id recorded)") if teacher is not None else None,
        teacher_architecture=_teacher_architecture(teacher) if teacher is not None else None,
        teacher_model_type=getattr(teacher.config, "model_type", None) if teacher is not None else None,
        teacher_notes=list(trainer.teacher_notes) if teacher is not None else [],
        teacher_parameters=sum(p.numel() for p in teacher.parameters()) if teacher is not None else None,
        teacher_accuracy=_teacher_accuracy(trainer, teacher_name) if teacher is not None else None,
        method_hyperparameters=method_hp, training_hyperparameters=training_hp,
        effective_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps * ws,
        world_size=ws, steps=trainer.state.global_step, epochs=trainer.state.epoch,
        augmentation=getattr(trainer.augmentation, "kind", None),
        config_yaml=yaml.safe_dump(run_config(trainer), sort_keys=False).strip(),
        command=reproduce_command(trainer), curves=CURVES_FILE if curves else None)
    card = ModelCard(content)
    card.save(os.path.join(output_dir, "README.md"))
    return card
