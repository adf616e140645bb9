"""trainer.hyperparameter_search (optuna): model_init builds the student, build_model its aux modules, per trial."""

import pytest
import torch

from hf_kd import ProjectorKDArguments, ProjectorKDTrainer, create_student

optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_trials_rebuild_student_and_projectors(data, tmp_path):
    torch.manual_seed(1)
    teacher = create_student("cifar_resnet20", data.num_labels, data.label_names,
                             model_args={"channels": [8, 8, 16, 16], "blocks": [1, 1, 1]})
    built = []

    def model_init(trial):
        built.append(trial)
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = ProjectorKDArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=32,
                                max_steps=2, report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                                optim="sgd", learning_rate=0.05, disable_tqdm=True, dataloader_drop_last=True)
    trainer = ProjectorKDTrainer(model_init=model_init, teacher=teacher, args=args, train_dataset=data.train,
                                 eval_dataset=data.eval, augmentation=data.batch_augment())
    seen = []

    def hp_space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True),
                "num_projectors": trial.suggest_int("num_projectors", 1, 4)}

    def objective(metrics):
        m = trainer.accelerator.unwrap_model(trainer.model)
        seen.append((id(m.student), id(m.aux["projectors"]), m.aux["projectors"].num_projectors,
                     trainer.args.num_projectors))
        return metrics["eval_top1"]

    best = trainer.hyperparameter_search(hp_space=hp_space, compute_objective=objective, n_trials=2,
                                         direction="maximize", backend="optuna")
    assert len(seen) == 2 and set(best.hyperparameters) == {"learning_rate", "num_projectors"}
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]  # a fresh student and fresh projectors per trial
    assert all(built_q == asked for _, _, built_q, asked in seen)  # aux modules follow the trial's arguments
    assert built[0] is None and len(built) == 3  # __init__ once, then once per trial (with the trial)
