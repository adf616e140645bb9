"""Hub round trip, offline: a real push of a distilled student to a local Hub-compatible server, loaded back by anyone.

``tests/hub_server.py`` (stdlib, in memory) runs in this process on 127.0.0.1:<free port>. The client side runs once
per module in a subprocess, because ``HF_ENDPOINT`` / ``HF_HUB_DISABLE_XET`` are read when huggingface_hub is
imported: it trains a tiny KD student through the recipe runner with ``--push_to_hub`` (checkpoints,
TensorBoard ``runs/`` and the default every-save pushes included), loads it back with transformers, ``pipeline`` and
timm, pushes to a branch and to a private repo, tries the other ``hub_strategy`` values, makes uploads fail and
retries them as the error says, and renders every method's card. It writes what it saw to ``results.json``; the tests
below check that and the server's state (every commit of every repo).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
import traceback
import urllib.request
from pathlib import Path

import pytest

from processes import run_process

TEMPLATES = Path(__file__).parents[1] / "hf_kd" / "model_cards"
REPO, PRIVATE, BRANCH = "testuser/kd-student", "testuser/kd-private", "v1"
STALE = "stale weights of an earlier push"
CKPT_REPO, END_REPO, NEW_REPO = "testuser/kd-ckpt", "testuser/kd-end", "testuser/kd-new"
# the run passes --hub_token, so training_args.bin (a pickle of the arguments, token included) stays local
EXPORT = {".gitattributes", "README.md", "config.json", "model.safetensors", "training_curves.png",
          "modeling_hf_kd.py"}  # cifar_* students carry their generated remote code
BIBTEX = {  # method -> what its card's BibTeX must say (supervised training has no paper)
    "kd": ["Distilling the Knowledge in a Neural Network", "Hinton, Geoffrey", "arXiv:1503.02531", "2015"],
    "projector_kd": ["Improved Feature Distillation via Projector Ensemble", "Chen, Yudong",
                     "Advances in Neural Information Processing Systems", "2022"],
    "ffsd": ["Distilling a Powerful Student Model via Online Knowledge Distillation", "Li, Shaojie",
             "IEEE Transactions on Neural Networks and Learning Systems"],
    "self_kd": ["Lightweight Self-Knowledge Distillation with Multi-source Information Fusion", "arXiv:2305.09183"],
    "mixskd": ["MixSKD: Self-Knowledge Distillation from Mixup for Image Recognition", "Yang, Chuanguang",
               "European Conference on Computer Vision", "2022"],
    "supervised": None,
}


def _client(work: Path):  # runs in the subprocess, environment already pointing at the local hub
    import dataclasses

    import torch
    from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
    from huggingface_hub.errors import RepositoryNotFoundError
    from transformers.trainer_utils import HubStrategy

    import hf_kd  # noqa: F401  (registers cifar_* in timm, needed by all three loaders)
    import timm
    from hf_kd import DistillationArguments, KDArguments, KDTrainer, create_student, load_image_data
    from hf_kd.data.loading import digits_dataset
    from hf_kd.recipes import run
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    api, out, res = HfApi(), str(work / "out"), {}
    data = load_image_data("digits", max_train_samples=32, max_eval_samples=16)

    def tiny(arch: str, seed: int):
        torch.manual_seed(seed)
        return create_student(arch, data.num_labels, data.label_names, mean=data.mean, std=data.std)

    teacher = tiny("cifar_wrn_16_1", 1)  # the teacher: a tiny exported student whose card records its accuracy
    teacher.save_pretrained(work / "teacher")
    ModelCard.from_template(ModelCardData(model_name="teacher", eval_results=[EvalResult(
        task_type="image-classification", dataset_type="digits", dataset_name="digits", metric_type="accuracy",
        metric_name="Top-1 accuracy", metric_value=0.875)])).save(work / "teacher" / "README.md")

    sys.argv[0] = "recipes/kd.py"
    trainer = run(KDTrainer, argv=[
        "--student", "cifar_resnet20", "--teacher", str(work / "teacher"), "--dataset", "digits",
        "--max_train_samples", "32", "--max_eval_samples", "16", "--output_dir", out, "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--report_to", "tensorboard", "--use_cpu", "true",
        "--push_to_hub", "true", "--hub_model_id", REPO, "--hub_token", os.environ["HF_TOKEN"],
        "--in_memory", "false"])
    res["output_dir"] = sorted(os.listdir(out))
    student = trainer.student.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def same(model) -> bool:
        with torch.no_grad():
            return torch.equal(model.eval()(x).logits if hasattr(model, "config") else model.eval()(x),
                               student(x).logits)

    res["auto_equal"] = same(AutoModelForImageClassification.from_pretrained(REPO))
    res["timm_equal"] = same(timm.create_model(f"hf-hub:{REPO}", pretrained=True))
    image = digits_dataset()["test"][0]["image"]
    hub_pipe = pipeline("image-classification", model=REPO, top_k=3)(image)
    proc = AutoImageProcessor.from_pretrained(REPO)
    inputs = proc(image, return_tensors="pt")
    with torch.no_grad():
        probs = student(**inputs).logits.softmax(-1)[0]
    top = probs.topk(3)
    res["pipeline"] = hub_pipe
    res["pipeline_expected"] = [{"label": student.config.id2label[i], "score": s}
                                for s, i in zip(top.values.tolist(), top.indices.tolist())]
    res["label_names"] = list(data.label_names)
    res["processor"] = {"mean": list(proc.data_config["mean"]), "std": list(proc.data_config["std"]),
                        "pixel_shape": list(inputs["pixel_values"].shape)}
    res["data"] = {"mean": list(data.mean), "std": list(data.std), "input_size": list(data.input_size)}
    res["files_main"] = sorted(api.list_repo_files(REPO))
    card = ModelCard.load(REPO)
    res["card_tags"] = card.data.tags
    res["card_datasets"] = card.data.datasets
    res["card_results"] = [[r.metric_name, r.metric_value] for r in card.data.eval_results or []]
    res["dataset"] = trainer.dataset_name
    res["teacher_path"] = str(work / "teacher")
    res["num_parameters"] = sum(p.numel() for p in student.parameters())
    base = {f.name for f in dataclasses.fields(DistillationArguments)}
    res["method_hparams"] = {f.name: getattr(trainer.args, f.name) for f in dataclasses.fields(KDArguments)
                             if f.name not in base}
    evals = [e for e in trainer.state.log_history if "eval_top1" in e]
    res["eval_top1"], res["eval_top5"] = evals[-1]["eval_top1"], evals[-1]["eval_top5"]

    def branch():  # a changed student pushed to v1 (a new branch) leaves main as it was; its card has a baseline
        with torch.no_grad():
            student.timm_model.get_classifier().bias += 1.0
        trainer.baseline_metrics = {"name": "cifar_resnet20 without distillation", "top1": 0.0625, "top5": 0.5}
        trainer.push_to_hub(revision=BRANCH, commit_message="bias + 1")
        res["branch_equal"] = same(AutoModelForImageClassification.from_pretrained(REPO, revision=BRANCH))
        res["main_unchanged"] = not same(AutoModelForImageClassification.from_pretrained(REPO))

    def private():
        trainer.args.hub_model_id, trainer.hub_model_id = PRIVATE, None
        trainer.push_to_hub(private=True)
        res["private_flag"] = api.model_info(PRIVATE).private
        try:
            api.model_info(PRIVATE, token=False)
            res["private_anonymous"] = "visible"
        except RepositoryNotFoundError:
            res["private_anonymous"] = "not found"
        res["private_equal"] = same(AutoModelForImageClassification.from_pretrained(PRIVATE))
        for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json"):  # as a sharded export
            api.upload_file(path_or_fileobj=b"{}", path_in_repo=name, repo_id=PRIVATE, commit_message=STALE)
        trainer.push_to_hub()  # the push removes them: loaders would otherwise take stale weights

    def hub_strategies():  # what a save during training pushes, for the strategies other than every_save
        checkpoint = max((work / "out").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        trainer.args.hub_strategy, trainer.hub_model_id = HubStrategy.END, END_REPO
        trainer._push_from_checkpoint(str(checkpoint))  # "end": nothing is pushed during training
        trainer._finish_current_push()
        api.create_repo(CKPT_REPO)
        trainer.args.hub_strategy, trainer.hub_model_id = HubStrategy.CHECKPOINT, CKPT_REPO
        trainer._push_from_checkpoint(str(checkpoint))  # "checkpoint": the export, plus the resumable checkpoint
        trainer._finish_current_push()
        trainer.args.hub_strategy = HubStrategy.EVERY_SAVE

    def failure():  # the server answers 500 to the commit: export intact, the error says how to retry (CLI)
        with torch.no_grad():  # a change, so that the push has something to commit
            student.timm_model.get_classifier().bias -= 0.5
        trainer.args.hub_model_id, trainer.hub_model_id = REPO, REPO
        fail("POST", f"/api/models/{REPO}/commit/")
        try:
            trainer.push_to_hub()
            res["failure"] = None
        except Exception as e:  # noqa: BLE001
            res["failure"] = f"{type(e).__name__}: {e}"
        res["export_after_failure"] = sorted(os.listdir(out))
        res["export_loads_after_failure"] = same(AutoModelForImageClassification.from_pretrained(out))
        res["export_sha_after_failure"] = hashlib.sha256(Path(out, "model.safetensors").read_bytes()).hexdigest()
        cli = next(line.strip() for line in res["failure"].splitlines() if line.strip().startswith("hf upload "))
        argv = shlex.split(cli)
        # the retry the error message gives, as a user would run it
        done = run_process([os.path.join(os.path.dirname(sys.executable), "hf"), *argv[1:]], timeout=120)
        res["cli_retry"] = [done.returncode, done.stdout[-2000:] + done.stderr[-2000:]]
        res["cli_retry_equal"] = same(AutoModelForImageClassification.from_pretrained(REPO))

    def failure_creating_repo():  # the repo cannot be created: still exported, the error says how (Python)
        with torch.no_grad():
            student.timm_model.get_classifier().bias += 0.25
        trainer.args.hub_model_id, trainer.hub_model_id = NEW_REPO, None
        fail("POST", "/api/repos/create")
        try:
            trainer.push_to_hub()
            res["create_failure"] = None
        except Exception as e:  # noqa: BLE001
            res["create_failure"] = f"{type(e).__name__}: {e}"
        res["export_loads_after_create_failure"] = same(AutoModelForImageClassification.from_pretrained(out))
        retry = next(line.strip() for line in res["create_failure"].splitlines() if "upload_export(" in line)
        exec(retry, {})  # the retry the error message gives
        res["python_retry_equal"] = same(AutoModelForImageClassification.from_pretrained(NEW_REPO))

    def cards():  # every method's card, rendered from its own template by a real trainer
        res["cards"] = {}
        from hf_kd.methods import methods

        for cls in methods().values():  # the registry: a new method's card is rendered too
            folder = work / "cards" / cls.method_name
            kw = {"teacher": tiny("cifar_wrn_16_1", 1)} if cls.uses_teacher == "required" else {}
            method = cls(model=tiny("cifar_wrn_16_1", 0), args=cls.args_class(
                output_dir=str(folder), report_to=[], use_cpu=True), **kw)
            method.write_model_card(str(folder))
            own = {f.name for f in dataclasses.fields(cls.args_class)} - base
            res["cards"][cls.method_name] = {"card": (folder / "README.md").read_text(), "hparams": sorted(own)}

    def fail(method: str, path: str):  # test-only route of hub_server: fail the next matching request with 500
        urllib.request.urlopen(urllib.request.Request(
            f"{os.environ['HF_ENDPOINT']}/_test/fail", method="POST",
            data=json.dumps({"method": method, "path": path, "status": 500}).encode()))

    for step in (branch, private, hub_strategies, failure, failure_creating_repo, cards):
        try:  # each step reports its own error; the tests check them
            step()
        except Exception:  # noqa: BLE001
            res.setdefault("errors", {})[step.__name__] = traceback.format_exc()[-3000:]
    (work / "results.json").write_text(json.dumps(res, indent=1))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from hub_server import HubServer

    work = tmp_path_factory.mktemp("hub")
    with HubServer() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=server.url, HF_TOKEN="dummy-token-3f9a", HF_HOME=str(work / "hf_home"),
                   HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
                   TQDM_DISABLE="1", OMP_NUM_THREADS="1",  # tiny models: one thread is faster on a shared CPU
                   PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                            os.environ.get("PYTHONPATH")])))
        proc = run_process([sys.executable, __file__, str(work)], env=env, timeout=600, cwd=work)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        yield server, json.loads((work / "results.json").read_text()), work


def _no_error(res, step):
    assert step not in res.get("errors", {}), res["errors"][step]


def _student_only(weights: bytes) -> bool:
    """timm-native keys of the student alone: no wrapper (student./aux.), teacher or transformers prefix."""
    from safetensors.torch import load

    keys = set(load(weights))
    return bool(keys) and "fc.weight" in keys and len(keys) < 150 and \
        not any(k.startswith(("student.", "aux.", "teacher", "timm_model.")) for k in keys)


def _every_commit(server, repo_id):
    """{path: content} of every commit of a repo but the test's own, oldest first."""
    repo = server.repos[repo_id]
    return [{p: server.lfs[f["lfs"]] if f["lfs"] else f["data"] for p, f in c["files"].items()}
            for c in repo.commits.values() if c["title"] != STALE]


@pytest.mark.slow
def test_push_uploads_only_the_student_export(hub):
    server, res, _ = hub
    # the run's output_dir really holds what must not go up: checkpoints (full wrapper + optimizer) and TensorBoard
    assert any(n.startswith("checkpoint-") for n in res["output_dir"]) and "runs" in res["output_dir"]
    assert "training_args.bin" in res["output_dir"]  # exported, but it carries --hub_token: never uploaded
    assert set(res["files_main"]) == EXPORT
    for repo, rev in ((REPO, "main"), (REPO, BRANCH), (PRIVATE, "main")):
        assert set(server.files(repo, rev)) == EXPORT, (repo, rev)
    # every commit (the every-save pushes from checkpoints during training, the final one, the branch) held the
    # student export only: file names and the weights' keys
    for repo in (REPO, PRIVATE):
        commits = _every_commit(server, repo)
        assert all(set(c) <= EXPORT for c in commits), repo
        assert all(_student_only(c["model.safetensors"]) for c in commits if "model.safetensors" in c), repo
    # the default hub_strategy (every_save) pushed from the checkpoint saves during training
    assert any(c["title"].startswith("Training in progress, step") for c in server.repos[REPO].commits.values())


@pytest.mark.slow
def test_hub_strategy_during_training(hub):
    server, res, _ = hub
    _no_error(res, "hub_strategies")
    assert END_REPO not in server.repos  # "end": no push from a checkpoint save
    files = server.files(CKPT_REPO)  # "checkpoint": the student export at the root, the resumable state aside
    assert {p for p in files if "/" not in p} == EXPORT and _student_only(files["model.safetensors"])
    ckpt = {p.split("/", 1)[1] for p in files if p.startswith("last-checkpoint/")}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= ckpt
    assert "training_args.bin" not in ckpt and not any("tfevents" in p for p in files)
    from safetensors.torch import load

    assert all(k.startswith("student.") for k in load(files["last-checkpoint/model.safetensors"]))


@pytest.mark.slow
def test_loaders_give_identical_logits(hub):
    _, res, _ = hub
    assert res["auto_equal"] and res["timm_equal"]


@pytest.mark.slow
def test_pipeline_labels_and_preprocessing_travel(hub):
    _, res, _ = hub
    for k in ("mean", "std"):  # the processor loaded from the Hub normalises as training did
        assert res["processor"][k] == pytest.approx(res["data"][k], abs=1e-6)
    assert res["processor"]["pixel_shape"] == [1, *res["data"]["input_size"]]
    assert [p["label"] for p in res["pipeline"]] == [p["label"] for p in res["pipeline_expected"]]
    assert all(p["label"] in res["label_names"] for p in res["pipeline"])  # label names, not LABEL_<i>
    assert [p["score"] for p in res["pipeline"]] == pytest.approx([p["score"] for p in res["pipeline_expected"]],
                                                                 abs=1e-6)


@pytest.mark.slow
def test_model_card_on_the_hub(hub):
    server, res, _ = hub
    assert {"knowledge-distillation", "kd", "image-classification"} <= set(res["card_tags"])
    assert res["card_datasets"] == [res["dataset"]]
    assert ["Top-1 accuracy", pytest.approx(round(res["eval_top1"], 4))] in res["card_results"]
    assert ["Top-5 accuracy", pytest.approx(round(res["eval_top5"], 4))] in res["card_results"]
    card = server.files(REPO)["README.md"].decode()
    assert card.startswith("---\n") and "model-index:" in card
    assert "@article{hinton2015distilling" in card and "Distilling the Knowledge in a Neural Network" in card
    # teacher: id, architecture, accuracy (read from the teacher's own card)
    assert res["teacher_path"] in card and "cifar_wrn_16_1" in card and "0.8750" in card
    # student architecture and parameter count, dataset
    assert "cifar_resnet20" in card and f"{res['num_parameters']:,} parameters" in card
    assert f"`{res['dataset']}`" in card
    for name, value in res["method_hparams"].items():  # every distillation hyperparameter, with its value
        assert f"| `{name}` | `{value}` |" in card, name
    assert f"**{res['eval_top1']:.4f}**" in card and f"{res['eval_top5']:.4f}" in card
    assert "import hf_kd" in card and "](training_curves.png)" in card
    assert server.files(REPO)["training_curves.png"].startswith(b"\x89PNG")
    # the exact command (token redacted) and the config
    assert "accelerate launch recipes/kd.py" in card and "--hub_model_id testuser/kd-student" in card
    assert "--hub_token ***" in card and "dummy-token-3f9a" not in card
    assert "```yaml\nstudent: cifar_resnet20\nteacher: " in card
    # the baseline without distillation, when the run has one (the branch push set it)
    branch_card = server.files(REPO, BRANCH)["README.md"].decode()
    assert "| cifar_resnet20 without distillation | 0.0625 | 0.5000 |" in branch_card
    assert f"| gain from distillation | {res['eval_top1'] - 0.0625:+.4f} |" in branch_card
    first = next(c for c in _every_commit(server, REPO) if "README.md" in c)["README.md"].decode()
    assert "without distillation" not in first  # no baseline row before the run had one


def test_every_method_has_its_expected_bibtex():
    """BIBTEX holds one entry per registered method (checked without the Hub round trip)."""
    from hf_kd.methods import methods

    assert set(BIBTEX) == set(methods()), (f"BIBTEX needs one entry per registered method: missing "
                                           f"{sorted(set(methods()) - set(BIBTEX))}, unknown "
                                           f"{sorted(set(BIBTEX) - set(methods()))}")


@pytest.mark.slow
def test_every_method_has_its_card_template_and_citation(hub):
    _, res, _ = hub
    _no_error(res, "cards")
    from huggingface_hub import ModelCard

    assert set(res["cards"]) == set(BIBTEX), "every registered method needs its expected BibTeX in BIBTEX"
    for method, expected in BIBTEX.items():
        card, hparams = res["cards"][method]["card"], res["cards"][method]["hparams"]
        template = (TEMPLATES / f"{method}.md").read_text()  # model_cards/ at the root links to it
        exported = re.search(r"{% block exported %}(.*?){% endblock %}", template, re.S).group(1)
        assert " ".join(exported.split()) in " ".join(card.split()), method  # rendered from its own template
        data = ModelCard(card).data  # the YAML header parses; the method is a tag
        assert {"knowledge-distillation", method, "image-classification"} <= set(data.tags), method
        from hf_kd.methods import get_method

        uses_teacher = get_method(method).uses_teacher == "required"
        assert ("## Teacher" in card) == uses_teacher, method  # teacher info where there is one
        assert all(f"| `{h}` |" in card for h in hparams), method
        bib = re.search(r"```bibtex\n(.*?)```", card, re.S)
        if expected is None:
            assert bib is None, method
            continue
        bib = bib.group(1)
        assert re.match(r"@(article|inproceedings)\{\w+,", bib) and bib.count("{") == bib.count("}"), method
        for text in expected:
            assert text in " ".join(bib.split()), (method, text)


@pytest.mark.slow
def test_branch_revision(hub):
    _, res, _ = hub
    _no_error(res, "branch")
    assert res["branch_equal"] and res["main_unchanged"]


@pytest.mark.slow
def test_private_repo(hub):
    _, res, _ = hub
    _no_error(res, "private")
    assert res["private_flag"] is True and res["private_anonymous"] == "not found" and res["private_equal"]


@pytest.mark.slow
def test_failed_upload_keeps_export_and_says_how_to_retry(hub):
    server, res, _ = hub
    _no_error(res, "failure")
    assert res["failure"] is not None and "500" in res["failure"]
    assert "hf upload testuser/kd-student" in res["failure"] and "upload_export(" in res["failure"]
    assert set(res["export_after_failure"]) >= EXPORT - {".gitattributes"} and res["export_loads_after_failure"]
    assert ("POST", f"/api/models/{REPO}/commit/main") in server.requests
    # the CLI retry from the message uploaded the (changed) student, and only the export: main now serves it
    assert res["cli_retry"][0] == 0, res["cli_retry"][1]
    assert res["cli_retry_equal"]
    assert hashlib.sha256(server.files(REPO)["model.safetensors"]).hexdigest() == res["export_sha_after_failure"]
    assert set(server.files(REPO)) == EXPORT


@pytest.mark.slow
def test_failed_repo_creation_keeps_export_and_python_retry_works(hub):
    server, res, _ = hub
    _no_error(res, "failure_creating_repo")
    assert res["create_failure"].startswith("HubUploadError") and NEW_REPO in res["create_failure"]
    assert res["export_loads_after_create_failure"]  # exported before the upload was attempted
    assert res["python_retry_equal"] and set(server.files(NEW_REPO)) == EXPORT


if __name__ == "__main__":
    _client(Path(sys.argv[1]))
