"""Checks a recipe runs before anything heavy, so that a user's common mistakes get a clear error in seconds.

Each check raises ``ValueError`` (or ``FileNotFoundError`` / ``ConnectionError`` where that is what happened) with a
message that names the problem and the fix. docs/guides/troubleshooting.md lists them.

- ``check_output_dir``: an ``output_dir`` holding another run's export or checkpoints is refused unless the run
  resumes (``--resume_from_checkpoint``) or says ``--overwrite_output_dir``, as transformers' example scripts did.
- ``check_output_dir_writable``: an ``output_dir`` that cannot be written would be found only when the first file is
  saved, after training (with ``save_strategy no``, at the very end: the whole run lost).
- ``check_output_dir_apart``: an ``output_dir`` that is (or is inside) the teacher's or the dataset's folder would
  have the run's export written over them, whatever the flags.
- ``check_enough_examples``: a training set smaller than one batch (with ``dataloader_drop_last``) would train 0
  steps and still export a "result".
- ``check_teacher`` / ``check_dataset``: a local path that does not exist, or a Hub id that cannot be reached
  (offline, no network, no such repo), fails at once instead of after the data loaded and 5 network retries.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
import shutil
import tempfile
from typing import Optional

__all__ = ["check_output_dir", "check_output_dir_writable", "check_output_dir_apart", "resume_request",
           "check_enough_examples", "check_teacher", "check_dataset", "HubUnreachableError"]

_EXPORT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


class HubUnreachableError(ConnectionError):
    """A Hub id was given but the Hub cannot be asked (offline mode or no connection) and nothing is cached."""


# --- output_dir ------------------------------------------------------------------------------------------------------
def _previous_run(output_dir: str) -> list[str]:
    """What in ``output_dir`` comes from an earlier run: export files and ``checkpoint-*`` folders."""
    if not os.path.isdir(output_dir):
        return []
    found = [f for f in _EXPORT_FILES if os.path.isfile(os.path.join(output_dir, f))]
    # complete checkpoints only: a folder without trainer_state.json is the residue of a save that was cut short
    found += sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "checkpoint-*"))
                    if os.path.isfile(os.path.join(p, "trainer_state.json")))
    return found


def resume_request(value):
    """What ``resume_from_checkpoint`` asks for: None (a new run), True (the last complete checkpoint of
    ``output_dir``) or a checkpoint folder. The recipes' flag is a string: "true" / "false" (any case) mean the
    booleans, unless a folder of that name exists."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value.lower() in ("true", "false") and not os.path.isdir(value):
        value = value.lower() == "true"
    if value is None or value is False or value == "":
        return None
    return value


def check_output_dir(args) -> None:
    """Refuse an ``output_dir`` that holds another run's export or checkpoints, unless resuming or overwriting.

    With ``overwrite_output_dir`` the earlier run's ``checkpoint-*`` folders are deleted (main process first, once
    every process has looked: ``hf_kd.sync.every_process``), so they neither mix with the new run's nor get picked by
    a later ``--resume_from_checkpoint true``; the export files are replaced by the new export.
    """
    if resume_request(args.resume_from_checkpoint) is not None:
        return
    from .sync import every_process

    # every process looks before any deletes (all must take the same branch: the deletion ends at a barrier), and a
    # run on machines without a shared disk counts what any of them holds
    found = list(dict.fromkeys(name for seen in every_process(_previous_run(args.output_dir)) for name in seen))
    if not found:
        return
    if not getattr(args, "overwrite_output_dir", False):
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise ValueError(
            f"output_dir {args.output_dir} already holds another run ({shown}); a new run would replace its export "
            "and mix its checkpoints with the new ones. Either continue that run with --resume_from_checkpoint "
            "true (or a checkpoint-* folder), or start over with --overwrite_output_dir (deletes its checkpoints), "
            "or pick another --output_dir.")
    with args.main_process_first(desc="removing the previous run's checkpoints", local=False):
        if args.should_save:  # who writes checkpoints: the main process (each machine's with --save_on_each_node)
            for path in glob.glob(os.path.join(args.output_dir, "checkpoint-*")):
                shutil.rmtree(path, ignore_errors=True)


def _write_problem(output_dir: str) -> Optional[str]:
    """Why ``output_dir`` cannot be written, or None. Probed with a real write (a folder made and removed) in
    ``output_dir`` or, while it does not exist, in the nearest folder above it that the run would create it in;
    ``os.access`` would answer yes for root on a read-only mount and ignores ACLs. Leaves nothing behind."""
    folder = os.path.abspath(os.path.expanduser(output_dir))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e} in {folder}"
    return None


def check_output_dir_writable(args) -> None:
    """Refuse an ``output_dir`` that cannot be written, before anything heavy (the first write is otherwise the first
    checkpoint, or with ``save_strategy no`` the export after the whole run). Every process that saves checks its own
    disk; all of them stop together (``hf_kd.sync.every_process``)."""
    from .sync import every_process

    problem = _write_problem(args.output_dir) if args.should_save else None
    problems = [p for p in every_process(problem) if p]
    if problems:
        raise PermissionError(f"output_dir {args.output_dir} cannot be written ({problems[0]}). Give an --output_dir "
                              "you can write to (missing parent folders are created), or fix its permissions.")


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_dir_apart(output_dir: str, teacher: Optional[str] = None, dataset: Optional[str] = None) -> None:
    """Refuse an ``output_dir`` that is the ``--teacher`` or ``--dataset`` folder or inside one, whatever the flags:
    the export would be written over the teacher (whose card would then name itself as the teacher) or into the
    data (an imagefolder would gain a class)."""
    for flag, folder in (("--teacher", teacher), ("--dataset", dataset)):
        if folder and os.path.isdir(os.path.expanduser(folder)) and _inside(output_dir, os.path.expanduser(folder)):
            where = "the" if _inside(folder, output_dir) else "inside the"
            raise ValueError(f"output_dir {output_dir} is {where} {flag} folder {folder}: the run's export and "
                             f"checkpoints would be written into it (also with --overwrite_output_dir). Give an "
                             f"--output_dir outside {folder}.")


# --- enough data for one step ----------------------------------------------------------------------------------------
def batches_per_epoch(num_examples: int, args) -> int:
    """Batches each process's training dataloader yields per epoch (``per_device_train_batch_size`` per process)."""
    per_step = args.per_device_train_batch_size * max(1, args.world_size)
    return num_examples // per_step if args.dataloader_drop_last else math.ceil(num_examples / per_step)


def check_enough_examples(num_examples: int, args, what: str = "training set") -> None:
    """Refuse a run whose training set gives no optimizer step (the run would "finish" having trained nothing)."""
    per_step = args.per_device_train_batch_size * max(1, args.world_size)
    if batches_per_epoch(num_examples, args) > 0:
        return
    accum = args.gradient_accumulation_steps
    raise ValueError(
        f"The {what} has {num_examples} examples, fewer than one batch of {per_step} (per_device_train_batch_size "
        f"{args.per_device_train_batch_size} x {max(1, args.world_size)} process(es); x gradient_accumulation_steps "
        f"{accum} = {per_step * accum} per optimizer step) and dataloader_drop_last is "
        f"{args.dataloader_drop_last}, so the run would train 0 steps. Use more data (--max_train_samples, another "
        f"--train_split) or a smaller --per_device_train_batch_size (at most {max(1, num_examples // max(1, args.world_size))})"
        + (" or --dataloader_drop_last false." if args.dataloader_drop_last and num_examples else "."))


# --- teacher and dataset names ---------------------------------------------------------------------------------------
def _offline() -> bool:
    from huggingface_hub import constants

    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(f, "").upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _close_folders(path: str) -> list[str]:
    """Existing folders whose names are close to ``path``'s last part, in the same parent folder."""
    parent, name = os.path.split(os.path.normpath(os.path.expanduser(path)))
    parent = parent or "."
    if not name or not os.path.isdir(parent):
        return []
    names = [n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n)) and not n.startswith(".")]
    return [os.path.join(parent, n) if parent != "." else n for n in difflib.get_close_matches(name, names, n=3)]


def _looks_local(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def _cached(repo_id: str, repo_type: str, cache_dir: Optional[str] = None) -> bool:
    from huggingface_hub import constants

    hub = os.path.join(cache_dir or constants.HF_HUB_CACHE, f"{repo_type}s--{repo_id.replace('/', '--')}")
    if os.path.isdir(hub):
        return True
    if repo_type == "dataset":  # datasets' own cache: <HF_DATASETS_CACHE>/<org>___<name>
        from datasets import config

        roots = [cache_dir] if cache_dir else []
        roots.append(str(config.HF_DATASETS_CACHE))
        return any(os.path.isdir(os.path.join(r, repo_id.replace("/", "___"))) for r in roots)
    return False


def _check_hub(repo_id: str, repo_type: str, what: str, extra: str, cache_dir: Optional[str] = None) -> None:
    """Raise at once if ``repo_id`` cannot be used: offline and not cached, Hub unreachable and not cached, or no
    such repo. One request without retries (transformers and datasets retry 5 times before they give up)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HTTPError, RepositoryNotFoundError

    if _offline():
        if _cached(repo_id, repo_type, cache_dir):
            return
        raise HubUnreachableError(f"{what} '{repo_id}' is neither a local folder nor cached, and the Hub is off "
                                  f"(HF_HUB_OFFLINE is set). {extra}")
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        return  # exists; the download says how to get access
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{what} '{repo_id}' is neither a local folder nor a {repo_type} repo on the Hub "
                                f"({constants.ENDPOINT}; a private repo needs `hf auth login`). {extra}") from None
    except (HTTPError, OSError) as e:  # no connection, DNS, proxy, timeout, a server error: "cannot reach"
        if _cached(repo_id, repo_type, cache_dir):
            return  # the loader falls back to the cached copy
        raise HubUnreachableError(f"{what} '{repo_id}' is not a local folder, and the Hub ({constants.ENDPOINT}) "
                                  f"cannot be reached: {type(e).__name__}: {e}. {extra}") from None


def check_teacher(name: str) -> None:
    """An existing export folder, or a Hub id that is reachable (or cached); else a clear error, at once."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"--teacher {name} is a folder but holds no exported model (no config.json). Give the folder a "
                "recipe exported to (its --output_dir, e.g. outputs/teacher), not a checkpoint-* folder.")
        return
    close = _close_folders(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if os.path.exists(path) or _looks_local(name):
        raise FileNotFoundError(f"--teacher {name}: no such folder.{hint} Give the output_dir of a teacher run "
                                "(accelerate launch recipes/train_teacher.py) or a Hub model id (org/name).")
    _check_hub(name, "model", "--teacher", f"Give an exported teacher folder or a reachable Hub id.{hint}")


def check_dataset(name: str, cache_dir: Optional[str] = None) -> None:
    """A preset, an existing folder or data file, or a Hub id that is reachable (or cached); else a clear error, at
    once."""
    from .data.loading import DATA_FILE_BUILDERS, PRESETS

    preset = PRESETS.get(name)
    if preset is not None and preset.path.startswith("sklearn:"):
        return
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return
    kinds = ", ".join(DATA_FILE_BUILDERS)
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() in DATA_FILE_BUILDERS:
            return
        raise ValueError(f"--dataset {name} is a file, but not one hf_kd reads as a dataset ({kinds}). Give such a "
                         "file, or a folder (imagefolder, save_to_disk, Hub-layout data files).")
    presets = sorted(k for k in PRESETS if "/" not in k)
    forms = (f"--dataset takes a preset ({', '.join(presets)}), a Hub dataset id (org/name), a local folder "
             f"(imagefolder, save_to_disk, or Hub-layout parquet shards) or a data file ({kinds}).")
    close = difflib.get_close_matches(name, presets, n=3) + _close_folders(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if preset is None and _looks_local(name):
        raise FileNotFoundError(f"--dataset {name}: no such folder or file, and not a preset or Hub id.{hint} "
                                f"{forms}")
    repo_id = preset.path if preset is not None else name
    _check_hub(repo_id, "dataset", "--dataset" if preset is None else f"--dataset {name} (preset for)",
               f"{forms}{hint} Offline: download it once (`hf download {repo_id} --repo-type dataset --local-dir "
               f"<folder>`) and pass the folder.", cache_dir)
