"""hf_kd.sync: files one process writes and the others read (the 2-process side: tests/test_distributed.py)."""

import os

import pytest

from hf_kd import sync
from hf_kd.trainers import SupervisedTrainer


def _write(names):
    def write(folder):
        for n in names:
            with open(os.path.join(folder, n), "w") as f:
                f.write(n)
    return write


def test_config_json_moves_in_last_so_it_marks_a_complete_export(tmp_path, monkeypatch):
    moved, replace, listdir = [], os.replace, os.listdir
    monkeypatch.setattr(sync.os, "replace", lambda a, b: (moved.append(os.path.basename(b)), replace(a, b)))
    # the directory lists config.json first, so only write_atomically's own ordering can put it last
    monkeypatch.setattr(sync.os, "listdir", lambda p: sorted(listdir(p), key=lambda n: n != "config.json"))
    sync.write_atomically(str(tmp_path), _write(["config.json", "model.safetensors", "README.md", "z.png"]))
    assert moved[-1] == "config.json" and sorted(moved) == ["README.md", "config.json", "model.safetensors", "z.png"]
    assert sorted(os.listdir(tmp_path)) == ["README.md", "config.json", "model.safetensors", "z.png"]  # no temp left


def test_a_failed_write_leaves_the_previous_files(tmp_path):
    (tmp_path / "config.json").write_text("old")

    def fail(folder):
        _write(["config.json"])(folder)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        sync.write_atomically(str(tmp_path), fail)
    assert os.listdir(tmp_path) == ["config.json"] and (tmp_path / "config.json").read_text() == "old"


def test_only_the_writer_writes(tmp_path):
    sync.main_process_writes(str(tmp_path / "a"), _write(["x"]), writer=False)
    assert not (tmp_path / "a").exists()
    sync.main_process_writes(str(tmp_path / "b"), _write(["x"]))  # one process: it is the main one
    assert os.listdir(tmp_path / "b") == ["x"]


def test_save_model_exports_through_the_collective_helper(data, tmp_path, monkeypatch, one_thread):
    """save_model is what every process calls: it must reach the barrier (not write on its own)."""
    import hf_kd

    calls = []
    real = sync.main_process_writes
    monkeypatch.setattr("hf_kd.trainers.base.main_process_writes",
                        lambda folder, write, **kw: (calls.append((folder, kw)), real(folder, write, **kw)))
    student = hf_kd.create_student("cifar_resnet20", data.num_labels, data.label_names)
    args = SupervisedTrainer.args_class(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], max_steps=1)
    tr = SupervisedTrainer(model=student, args=args, train_dataset=data.train, eval_dataset=data.eval)
    tr.save_model(str(tmp_path / "export"))
    assert calls == [(str(tmp_path / "export"), {"writer": True, "prefix": ".export-"})]
    assert sorted(os.listdir(tmp_path / "export")) == ["README.md", "config.json", "model.safetensors",
                                                        "modeling_hf_kd.py", "training_args.bin"]


def test_every_process_gives_each_process_value():
    assert sync.every_process(["checkpoint-1"]) == [["checkpoint-1"]]  # one process: its own value, in a list


def test_auto_teacher_export_this_process_cannot_see_is_a_clear_error(data, tmp_path, monkeypatch, one_thread):
    """Machines without a shared disk: only the main one's export exists, so another machine's processes cannot load
    the teacher. Each machine writes its copy with --save_on_each_node (passed on to the teacher's run); without it
    the error says so instead of failing inside from_pretrained."""
    from hf_kd import recipes

    seen = []
    monkeypatch.setattr(SupervisedTrainer, "train", lambda self, *a, **k: None)
    monkeypatch.setattr(SupervisedTrainer, "evaluate", lambda self, *a, **k: {})
    monkeypatch.setattr(SupervisedTrainer, "save_model", lambda self, *a, **k: seen.append(self.args.save_on_each_node))
    model_args = recipes.ModelArguments(teacher_architecture="cifar_resnet20")
    args = SupervisedTrainer.args_class(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[],
                                        save_on_each_node=True)
    with pytest.raises(FileNotFoundError, match="cannot see the teacher.*--save_on_each_node"):
        recipes.build_teacher(model_args, data, args)
    assert seen == [True]
