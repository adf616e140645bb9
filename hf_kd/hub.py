"""Pushing exported students to the Hub: only the student folder and its card, never checkpoints or aux modules.

``DistillationTrainer.save_model`` exports the student alone (config + timm-native safetensors + model card + training
curves) into ``output_dir``. That folder also collects what a run writes there besides the export: ``checkpoint-*``
(the full ``DistillationModel`` with aux modules, optimizer, RNG), TensorBoard ``runs/``, the temporary ``.export-*``
folders. Stock ``Trainer.push_to_hub`` uploads ``output_dir`` minus only ``_*`` and ``checkpoint-*`` (so ``runs/`` and
anything else would go up; HF_NOTES §5.1); here the upload takes an allow-list of export files instead.

A failed upload never touches the local export (it is written before the upload starts) and the error says how to
retry by hand.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Optional

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from transformers.trainer_utils import HubStrategy
from transformers.utils.hub import PushInProgress

__all__ = ["EXPORT_FILES", "EXPORT_IGNORE", "STALE_WEIGHTS", "HubUploadError", "upload_export", "push_to_hub",
           "push_folder", "retry_hint"]

logger = logging.getLogger(__name__)

# What ``export_student`` writes: the only files that go up (sharded weights included).
EXPORT_FILES = ["config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                "README.md", "training_curves.png", "training_args.bin"]
# Never uploaded even if matched above: Trainer's private files and checkpoints, our export temp folders,
# TensorBoard runs.
EXPORT_IGNORE = ["_*", "checkpoint-*", ".export-*", "runs/*", "*tfevents*"]
# Weight files a previous push may have left in the repo that this export does not overwrite (a sharded export
# after a single-file one or the reverse): deleted in the same commit, so loaders never pick up stale weights.
STALE_WEIGHTS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]


class HubUploadError(RuntimeError):
    """An upload of an exported student failed; the message says how to retry. The local export is intact."""


def retry_hint(folder: str, repo_id: str, revision: Optional[str] = None, private: bool = False,
               keep_training_args: bool = True) -> str:
    """How to upload an export folder again by hand (CLI and Python), with the same allow-list.

    ``keep_training_args=False`` (the run passed ``hub_token``): leave out ``training_args.bin``, which would carry the
    token, and say that the retry needs a token."""
    rev = f" --revision {shlex.quote(revision)}" if revision else ""
    priv = " --private" if private else ""
    files = _allowed(keep_training_args)
    include = " ".join([f"--include {shlex.quote(p)}" for p in files] +
                       [f"--delete {shlex.quote(p)}" for p in STALE_WEIGHTS])
    py_kw = (f", revision={revision!r}" if revision else "") + (", private=True" if private else "") + \
        ("" if keep_training_args else ", keep_training_args=False")
    return (f"The local export in {folder} is intact. Retry the upload with\n"
            f"  hf upload {repo_id} {shlex.quote(folder)} .{rev}{priv} {include}\n"
            f"or in Python:\n"
            f"  from hf_kd.hub import upload_export; upload_export({folder!r}, {repo_id!r}{py_kw})"
            + ("" if keep_training_args else "\n(add --token / token= with a write token unless you are logged in "
                                             "with `hf auth login`: this run passed hub_token)"))


def _allowed(keep_training_args: bool) -> list[str]:
    return [p for p in EXPORT_FILES if keep_training_args or p != "training_args.bin"]


def upload_export(folder: str, repo_id: str, *, token: Optional[str] = None, revision: Optional[str] = None,
                  commit_message: str = "Upload distilled student", private: Optional[bool] = None,
                  create_repo: bool = True, keep_training_args: bool = True):
    """Upload an exported student folder (only ``EXPORT_FILES``) to ``repo_id``; returns the ``CommitInfo``.

    Creates the repo (``private`` as given) and the ``revision`` branch when missing, as transformers'
    ``PushToHubMixin.push_to_hub`` does. On failure raises with a retry hint (an ``HfHubHTTPError`` keeps its type
    and gets the hint appended; other errors become ``HubUploadError``).
    """
    api = HfApi()
    try:
        if create_repo:
            repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, token=token,
                                 revision=revision, allow_patterns=_allowed(keep_training_args),
                                 ignore_patterns=list(EXPORT_IGNORE),  # a copy: upload_folder extends the list
                                 delete_patterns=list(STALE_WEIGHTS))
    except Exception as e:  # noqa: BLE001 - every failure gets the same retry hint
        hint = retry_hint(folder, repo_id, revision, bool(private), keep_training_args)
        if isinstance(e, HfHubHTTPError):
            e.append_to_message(f"\n\nUpload of the exported student to {repo_id} failed. {hint}")
            raise
        raise HubUploadError(f"Upload of the exported student in {folder} to {repo_id} failed: "
                             f"{type(e).__name__}: {e}\n{hint}") from e


def _log_failure(future, folder: str, repo_id: str, revision: Optional[str]):
    if future.exception() is not None:
        logger.warning(f"Background push of {folder} to {repo_id} failed: {future.exception()}")


def push_to_hub(trainer, commit_message: Optional[str] = "End of training", blocking: bool = True,
                token: Optional[str] = None, revision: Optional[str] = None, private: Optional[bool] = None,
                **kwargs):
    """``Trainer.push_to_hub`` for distillation trainers: export the student (+ card, curves), upload only that.

    Same signature and flow as ``transformers.Trainer.push_to_hub`` (repo created with ``private`` /
    ``args.hub_private_repo``; ``revision`` defaults to ``args.hub_revision`` and its branch is created from main when
    missing, as ``PreTrainedModel.push_to_hub`` does), but the upload is limited to ``EXPORT_FILES``: no checkpoints,
    aux modules, teacher or TensorBoard runs. Of Trainer's ``create_model_card`` arguments (``kwargs``), ``tags`` are
    added to the card; the others are ignored (the card is filled from the trainer at export). Returns the
    ``CommitInfo``, or a ``Future`` of it with ``blocking=False``; ``None`` on processes other than the main one.
    """
    args = trainer.args
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    token = token if token is not None else args.hub_token
    revision = revision if revision is not None else args.hub_revision
    private = private if private is not None else args.hub_private_repo
    tags = kwargs.pop("tags", None)
    if tags:
        trainer.card_tags = [tags] if isinstance(tags, str) else list(tags)
    if kwargs:
        logger.info(f"push_to_hub: {sorted(kwargs)} ignored; the model card is filled from the trainer at export.")
    error = None
    if trainer.hub_model_id is None and trainer.is_world_process_zero():  # as Trainer (at __init__ if push_to_hub)
        try:
            trainer.init_hf_repo(token=token, private=private)
        except Exception as e:  # noqa: BLE001 - export locally first, then report
            error = e
    trainer._finish_current_push()  # a background push from a checkpoint reads the files the export rewrites
    trainer.save_model(_internal_call=True)  # every process: the main one writes, the others wait until it is done
    if not trainer.is_world_process_zero():
        return None
    if error is not None:
        repo_name = args.hub_model_id or Path(args.output_dir).absolute().name
        raise HubUploadError(f"Could not create the Hub repo {repo_name}: {type(error).__name__}: {error}\n"
                             + retry_hint(args.output_dir, repo_name, revision, bool(private), not args.hub_token)) \
            from error
    keep_args = not args.hub_token
    if args.hub_token:
        logger.warning("training_args.bin is not uploaded: it would carry hub_token in clear.")
    upload = dict(token=token, revision=revision, commit_message=commit_message, private=private, create_repo=False,
                  keep_training_args=keep_args)
    if blocking:
        return upload_export(args.output_dir, trainer.hub_model_id, **upload)
    future = HfApi().run_as_future(upload_export, args.output_dir, trainer.hub_model_id, **upload)
    future.add_done_callback(lambda f: _log_failure(f, args.output_dir, trainer.hub_model_id, revision))
    return future


def push_folder(trainer, checkpoint_folder: Optional[str] = None) -> PushInProgress:
    """Upload the exported student in ``trainer.args.output_dir`` in the background, as ``Trainer`` does per save.

    Called by ``DistillationTrainer._push_from_checkpoint`` after it exported the student (``hub_strategy``
    "every_save", the default, and the others but "end"): only the export files go up, never the checkpoint's
    full-state weights. With ``hub_strategy`` "checkpoint" / "all_checkpoints" the user asked for resumable Hub
    checkpoints, so the checkpoint folder also goes up as in transformers, under ``last-checkpoint/`` or its own name;
    it holds the whole ``DistillationModel`` (aux modules, never the teacher), the optimizer and the RNG state.
    """
    args = trainer.args
    api = HfApi()
    message = (f"Training in progress, step {trainer.state.global_step}" if args.save_strategy == "steps"
               else f"Training in progress, epoch {int(trainer.state.epoch or 0)}")
    keep_args = not args.hub_token
    upload_checkpoint = None
    if checkpoint_folder and args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        if not getattr(trainer, "_warned_checkpoint_push", False):
            logger.warning(f"hub_strategy={args.hub_strategy.value}: the full training checkpoints (auxiliary modules, "
                           "optimizer) are uploaded too; the repo root keeps the student export only.")
            trainer._warned_checkpoint_push = True
        upload_checkpoint = dict(
            repo_id=trainer.hub_model_id, folder_path=checkpoint_folder, token=args.hub_token,
            path_in_repo="last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else Path(
                checkpoint_folder).name, commit_message=message + ", checkpoint", revision=args.hub_revision,
            ignore_patterns=None if keep_args else ["training_args.bin"])  # it would carry hub_token in clear

    def upload():  # one job: the export first (it creates the revision branch), then the checkpoint if asked
        info = upload_export(args.output_dir, trainer.hub_model_id, token=args.hub_token, revision=args.hub_revision,
                             commit_message=message, create_repo=False, keep_training_args=keep_args)
        if upload_checkpoint is not None:
            api.upload_folder(**upload_checkpoint)
        return info

    job = api.run_as_future(upload)
    job.add_done_callback(lambda f: _log_failure(f, args.output_dir, trainer.hub_model_id, args.hub_revision))
    return PushInProgress([job])
