"""Pushing exported students to the Hub: only the student folder and its card, never checkpoints or aux modules."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi
from transformers.trainer_utils import HubStrategy
from transformers.utils.hub import PushInProgress

# Trainer's own ignore list (private files, checkpoints) plus our export's temp folders and TensorBoard runs.
EXPORT_IGNORE = ["_*", "checkpoint-*", ".export-*", "runs/*"]


def push_folder(trainer, checkpoint_folder: str | None = None) -> PushInProgress:
    """Upload ``trainer.args.output_dir`` (the exported student) asynchronously, as ``Trainer`` does per save.

    With ``hub_strategy`` "checkpoint" / "all_checkpoints" the full-state checkpoint also goes up (the user asked
    for resumable Hub checkpoints), under ``last-checkpoint/`` or its own name.
    """
    args = trainer.args
    api = HfApi()
    step = trainer.state.global_step
    message = f"Training in progress, step {step}"
    jobs = [api.upload_folder(repo_id=trainer.hub_model_id, folder_path=args.output_dir, commit_message=message,
                              token=args.hub_token, run_as_future=True, ignore_patterns=EXPORT_IGNORE,
                              revision=args.hub_revision)]
    if checkpoint_folder and args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
        path_in_repo = "last-checkpoint" if args.hub_strategy == HubStrategy.CHECKPOINT else Path(checkpoint_folder).name
        jobs.append(api.upload_folder(repo_id=trainer.hub_model_id, folder_path=checkpoint_folder,
                                      path_in_repo=path_in_repo, commit_message=message + ", checkpoint",
                                      token=args.hub_token, run_as_future=True, revision=args.hub_revision))
    return PushInProgress(jobs)
