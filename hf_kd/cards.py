"""Model cards for exported students: filled from the trainer at export, with ``model-index`` eval results."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

TEMPLATES = Path(__file__).parent / "model_cards"
_SHOWN_TRAINING_ARGS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                        "gradient_accumulation_steps", "optim", "optim_args", "weight_decay", "lr_scheduler_type",
                        "seed", "bf16", "fp16")


def method_hyperparameters(args) -> list[tuple[str, object]]:
    """The distillation arguments (fields the method's args class adds to TrainingArguments) + key training ones."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = [(f.name, getattr(args, f.name)) for f in dataclasses.fields(args) if f.name not in base]
    shown = [(n, getattr(args, n)) for n in _SHOWN_TRAINING_ARGS if hasattr(args, n)]
    return [(n, getattr(v, "value", v)) for n, v in own + shown]


def last_eval_results(log_history: list[dict]) -> dict:
    for entry in reversed(log_history):
        if any(k.startswith("eval_top1") for k in entry):
            return {k[len("eval_"):]: v for k, v in entry.items() if k.startswith("eval_") and "top" in k}
    return {}


def write_model_card(trainer, output_dir: str) -> ModelCard:
    """Render the method's template (``model_cards/<method>.md``, else ``default.md``) into ``output_dir/README.md``."""
    student = trainer.student
    arch = student.config.architecture
    results = last_eval_results(trainer.state.log_history)
    dataset = getattr(trainer, "dataset_name", None)
    repo = trainer.args.hub_model_id or os.path.basename(os.path.abspath(trainer.args.output_dir))
    eval_results = [EvalResult(task_type="image-classification", dataset_type=dataset or "custom",
                               dataset_name=dataset or "custom", dataset_split="eval", metric_type="accuracy",
                               metric_name=name.replace("top", "Top-"), metric_value=value)
                    for name, value in results.items() if name in ("top1", "top5")]
    data = ModelCardData(library_name="transformers", license="apache-2.0", pipeline_tag="image-classification",
                         tags=["knowledge-distillation", trainer.method_name, "image-classification", "timm", "hf_kd"],
                         datasets=[dataset] if dataset else None, model_name=repo,
                         eval_results=eval_results or None)
    teacher = getattr(trainer, "teacher", None)
    template = TEMPLATES / f"{trainer.method_name}.md"
    template = template if template.exists() else TEMPLATES / "default.md"
    card = ModelCard.from_template(
        data, template_str=template.read_text(),
        model_name=repo, repo_or_path=repo, student_architecture=arch,
        num_parameters=f"{sum(p.numel() for p in student.parameters()) / 1e6:.2f}M",
        method_title=getattr(trainer, "method_title", trainer.method_name),
        method_description=(type(trainer).__doc__ or "").strip().split("\n\n")[0],
        dataset=dataset, results=[(k, f"{v:.4f}") for k, v in results.items()],
        teacher=getattr(trainer, "teacher_name", None) if teacher is not None else None,
        teacher_architecture=teacher.config.architecture if teacher is not None else None,
        teacher_accuracy=getattr(trainer, "teacher_accuracy", None),
        hyperparameters=method_hyperparameters(trainer.args), command=getattr(trainer, "command", None),
        needs_hf_kd=arch.startswith("cifar_"), citation=getattr(trainer, "citation", None))
    card.save(os.path.join(output_dir, "README.md"))
    return card
