"""trainer.hyperparameter_search (optuna): model_init builds the student, build_model its aux modules, per trial."""

import pytest
import torch

from hf_kd import ProjectorKDArguments, ProjectorKDTrainer, create_student
from hf_kd.methods import methods

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


# method -> (a searched method argument, its values, what the built model must show for it); one entry per registered
# method (test_every_method_has_a_searched_argument)
SEARCHED = {
    "kd": ("temperature", [2.0, 8.0], None),
    "supervised": ("weight_decay", [0.0, 1e-4], None),
    "projector_kd": ("num_projectors", [1, 3], lambda m: m.aux["projectors"].num_projectors),
    "ffsd": ("num_students", [2, 3], lambda m: len(m.aux["students"])),
    "self_kd": ("adapter_stage", [1, 2], lambda m: m.stage_index),
    "mixskd": ("discriminator_hidden", [8, 16], lambda m: m.aux["discriminators"][0].fc1.out_features),
}


def test_every_method_has_a_searched_argument():
    assert set(SEARCHED) == set(methods()), (
        f"SEARCHED needs one entry per registered method: missing {sorted(set(methods()) - set(SEARCHED))}, "
        f"unknown {sorted(set(SEARCHED) - set(methods()))}")


@pytest.mark.slow
@pytest.mark.parametrize("method", list(methods()))
def test_every_trainer_searches_two_trials(data, tmp_path, method):
    """2 optuna trials per trainer: each trial trains a fresh student and fresh auxiliary modules (no parameter
    shared with the previous trial), built from that trial's arguments, and its evaluation reports every head."""
    from transformers import TrainerCallback

    if method not in SEARCHED:
        pytest.fail(f"no SEARCHED entry for method {method}")
    arg, values, built_value = SEARCHED[method]
    cls = methods()[method]
    teacher = None
    if cls.uses_teacher == "required":
        torch.manual_seed(1)
        teacher = create_student("cifar_resnet20", data.num_labels, data.label_names,
                                 model_args={"channels": [8, 8, 16, 16], "blocks": [1, 1, 1]})

    def model_init(trial):
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = cls.args_class(output_dir=str(tmp_path), per_device_train_batch_size=16, per_device_eval_batch_size=32,
                          max_steps=2, report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                          optim="sgd", learning_rate=0.05, disable_tqdm=True, dataloader_drop_last=True)
    trainer = cls(model_init=model_init, teacher=teacher, args=args, train_dataset=data.train,
                  eval_dataset=data.eval, augmentation=data.batch_augment())
    started = []

    class AtTrainBegin(TrainerCallback):  # what each trial starts from
        def on_train_begin(self, args, state, control, model=None, **kw):
            m = trainer.accelerator.unwrap_model(trainer.model)
            started.append(({id(p) for p in m.parameters()}, getattr(args, arg),
                            built_value(m) if built_value else None, getattr(trainer, "dsr_previous", None)))

    trainer.add_callback(AtTrainBegin())
    evals = []

    def objective(metrics):
        evals.append((metrics, trainer.accelerator.unwrap_model(trainer.model).head_names))
        return metrics["eval_top1"]

    best = trainer.hyperparameter_search(
        hp_space=lambda t: {"learning_rate": t.suggest_float("learning_rate", 1e-3, 1e-1, log=True),
                            arg: t.suggest_categorical(arg, values)},
        compute_objective=objective, n_trials=2, direction="maximize", backend="optuna",
        sampler=optuna.samplers.GridSampler({"learning_rate": [0.05], arg: values}, seed=0))  # each value once
    assert len(started) == 2 and sorted(s[1] for s in started) == sorted(values)  # each value tried once
    assert len(evals) == 2 and set(best.hyperparameters) == {"learning_rate", arg}
    assert not started[0][0] & started[1][0]  # no parameter of trial 1's student or aux modules reused
    for params, asked, built, dsr in started:
        assert asked in values and dsr is None
        if built_value is not None:
            assert built == asked, (method, built, asked)  # aux modules built from the trial's arguments
    for metrics, heads in evals:  # the metrics follow the trial's model (FFSD: one head per common student)
        assert all(f"eval_{h}_top1" in metrics or (h == heads[0] and "eval_top1" in metrics) for h in heads), \
            (method, sorted(metrics))


@pytest.mark.slow
def test_a_trial_applies_its_method_augmentation(data, tmp_path):
    """LightSKD's random_resized_crop is read when the augmentation is chosen: a trial that searches it must train
    with the augmentation it asked for, not the one __init__ chose."""
    from transformers import TrainerCallback

    from hf_kd import SelfKDTrainer
    from hf_kd.data import RandomResizedCropAugment

    def model_init(trial):
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = SelfKDTrainer.args_class(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=1,
                                    report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                                    disable_tqdm=True, random_resized_crop=False)
    trainer = SelfKDTrainer(model_init=model_init, args=args, train_dataset=data.train, eval_dataset=data.eval,
                            augmentation=data.batch_augment())
    seen = []

    class AtTrainBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.append((args.random_resized_crop, isinstance(trainer.augmentation, RandomResizedCropAugment)))

    trainer.add_callback(AtTrainBegin())
    trainer.hyperparameter_search(
        hp_space=lambda t: {"random_resized_crop": t.suggest_categorical("random_resized_crop", [False, True])},
        compute_objective=lambda m: m["eval_top1"], n_trials=2, direction="maximize", backend="optuna",
        sampler=optuna.samplers.GridSampler({"random_resized_crop": [False, True]}, seed=0))
    assert sorted(seen) == [(False, False), (True, True)], seen


@pytest.mark.slow
def test_a_trial_applies_its_data_augmentation_arguments(data, tmp_path):
    """The data-level overrides (``augmentation``, ``pad_mode``, ``norm_mean``/``norm_std``) are arguments too: a trial
    that searches one trains with it (it used to keep what __init__ chose, silently)."""
    from transformers import TrainerCallback

    from hf_kd import SupervisedTrainer

    def model_init(trial):
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = SupervisedTrainer.args_class(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=1,
                                        report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                                        disable_tqdm=True, pad_mode="constant")
    trainer = SupervisedTrainer(model_init=model_init, args=args, train_dataset=data.train, eval_dataset=data.eval,
                                augmentation=data.batch_augment("cifar"))
    seen = []

    class AtTrainBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.append((args.pad_mode, trainer.augmentation.pad_mode))

    trainer.add_callback(AtTrainBegin())
    trainer.hyperparameter_search(
        hp_space=lambda t: {"pad_mode": t.suggest_categorical("pad_mode", ["constant", "reflect"])},
        compute_objective=lambda m: m["eval_top1"], n_trials=2, direction="maximize", backend="optuna",
        sampler=optuna.samplers.GridSampler({"pad_mode": ["constant", "reflect"]}, seed=0))
    assert sorted(seen) == [("constant", "constant"), ("reflect", "reflect")], seen


def _search_snapshots(method, data, out, fast):
    """2 trials (learning rates 0.05, 0.01) of ``method``; the parameters each trial ends with."""
    from hf_kd.methods import get_method

    cls = get_method(method)
    torch.manual_seed(1)
    teacher = (create_student("cifar_resnet20", data.num_labels, data.label_names,
                              model_args={"channels": [8, 8, 16, 16], "blocks": [1, 1, 1]})
               if cls.uses_teacher == "required" else None)

    def model_init(trial):
        torch.manual_seed(0)
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = cls.args_class(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, report_to=[], use_cpu=True,
                          dataloader_drop_last=True, seed=0, optim="sgd", optim_args="momentum=0.9",
                          save_strategy="no", eval_strategy="no", disable_tqdm=True, fast_path=fast)
    trainer = cls(model_init=model_init, teacher=teacher, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  augmentation=data.batch_augment())
    if fast:
        trainer.fast_step.compile_options = {"backend": "aot_eager"}  # dynamo + AOTAutograd, no inductor compile
    snaps = []

    def objective(metrics):
        snaps.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        assert not fast or trainer.fast_step.compiled is not None  # the trial really ran the compiled step
        return metrics["eval_top1"]

    lrs = [0.05, 0.01]
    trainer.hyperparameter_search(
        hp_space=lambda t: {"learning_rate": t.suggest_categorical("learning_rate", lrs)},
        compute_objective=objective, n_trials=2, direction="maximize", backend="optuna",
        sampler=optuna.samplers.GridSampler({"learning_rate": lrs}, seed=0))
    return snaps


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "ffsd"])
def test_search_with_the_fast_path_trains_each_trial_like_eager(method, data, tmp_path):
    """With ``fast_path`` every trial's compiled step trains that trial's model and optimizer (a new student, aux
    modules and, for FFSD, SGD + Adam per trial), as the eager search does."""
    eager = _search_snapshots(method, data, tmp_path / "eager", False)
    fast = _search_snapshots(method, data, tmp_path / "fast", True)
    assert len(eager) == len(fast) == 2
    assert any(not torch.equal(eager[0][k], eager[1][k]) for k in eager[0])  # the trials differ
    for e, f in zip(eager, fast):
        for k, v in e.items():
            torch.testing.assert_close(f[k], v, rtol=1e-4, atol=2e-5, msg=lambda m: f"{method} {k}: {m}")


@pytest.mark.slow
def test_a_trial_applies_its_normalization_to_student_export_and_teacher(data, tmp_path):
    """A searched norm_mean/norm_std reaches the training augmentation, the student's exported preprocessing and a
    transformers teacher's input rebuild (which undoes the student's normalisation)."""
    from test_transformers_teacher import save_vit
    from transformers import TrainerCallback

    from hf_kd import KDTrainer, load_teacher

    teacher = load_teacher(save_vit(tmp_path / "vit", data.label_names))

    def model_init(trial):
        return create_student("cifar_resnet20", data.num_labels, data.label_names, mean=data.mean, std=data.std,
                              model_args={"channels": [8, 8, 16, 32], "blocks": [1, 1, 1]})

    args = KDTrainer.args_class(output_dir=str(tmp_path / "run"), per_device_train_batch_size=16, max_steps=1,
                                report_to=[], use_cpu=True, save_strategy="no", eval_strategy="no",
                                disable_tqdm=True)
    trainer = KDTrainer(model_init=model_init, teacher=teacher, args=args, train_dataset=data.train,
                        eval_dataset=data.eval, augmentation=data.batch_augment())
    stats = {"a": ([0.25, 0.5, 0.75], [0.5, 0.25, 0.125]), "b": ([0.125, 0.25, 0.375], [0.25, 0.5, 0.75])}
    seen, applied = [], []
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    class AtTrainBegin(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.append([list(args.norm_mean), trainer.augmentation.mean.flatten().tolist(),
                         trainer.student.config.pretrained_cfg["mean"], list(trainer.teacher_input.student_mean),
                         list(args.norm_std), trainer.augmentation.std.flatten().tolist(),
                         trainer.student.config.pretrained_cfg["std"], list(trainer.teacher_input.student_std)])
            # what the teacher applies (its cached device statistics), not only the attributes just set
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (args.norm_mean, args.norm_std))
            applied.append((trainer.teacher_input(x), teacher.preprocess((x * std + mean).clamp(0.0, 1.0))))

    def hp_space(trial):
        mean, std = stats[trial.suggest_categorical("stats", list(stats))]
        return {"norm_mean": mean, "norm_std": std}

    trainer.add_callback(AtTrainBegin())
    trainer.hyperparameter_search(hp_space=hp_space, compute_objective=lambda m: m["eval_top1"], n_trials=2,
                                  direction="maximize", backend="optuna",
                                  sampler=optuna.samplers.GridSampler({"stats": list(stats)}, seed=0))
    assert sorted(seen) == sorted([[m] * 4 + [s] * 4 for m, s in stats.values()]), seen
    assert len(applied) == 2
    for got, want in applied:
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
