"""The manifest in every training checkpoint: which method and which teacher wrote it.

A checkpoint holds the trainable state (student, auxiliary modules, optimizer, schedule) but never the teacher, and
a checkpoint's state dict alone does not say which loss it was trained with: KD and plain cross-entropy keep the same
student keys. Resuming with another teacher or another method would then continue the run silently under a different
objective. ``MANIFEST_NAME`` records the method and the teacher (name, Hub revision, a hash of its weights) so that a
resume can be checked before any training.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import torch
import torch.nn as nn

from .sync import write_atomically

__all__ = ["MANIFEST_NAME", "weights_sha256", "teacher_identity", "write_manifest", "read_manifest",
           "resume_mismatch"]

MANIFEST_NAME = "hf_kd_manifest.json"


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the module's state dict (parameters and persistent buffers): each tensor's name, dtype, shape and
    bytes, in name order, one pass over the weights.

    The tensors are hashed as they are, so the same weights in another dtype hash differently. The trainer hashes the
    teacher as it was given, before it casts it for mixed precision: a float32 teacher gets the same hash under
    ``--bf16`` and without (the recipes load it afresh each run), so a run may resume with another precision."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # raw bytes: bfloat16 included
    return digest.hexdigest()


def teacher_identity(teacher: Optional[nn.Module]) -> Optional[dict]:
    """What the manifest records about a teacher: its name (Hub id or folder, as loaded), the Hub revision it was
    loaded at (None for a local folder or a teacher built in code) and ``weights_sha256``. None without a teacher."""
    if teacher is None:
        return None
    config = getattr(teacher, "config", None)
    name = getattr(teacher, "name", None) or getattr(config, "_name_or_path", None) or None
    return {"name": name, "revision": getattr(config, "_commit_hash", None), "weights_sha256": weights_sha256(teacher)}


def write_manifest(folder: str, manifest: dict) -> None:
    """Write ``manifest`` as ``MANIFEST_NAME`` into ``folder``, atomically (a reader sees the whole file or none)."""

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, MANIFEST_NAME), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)

    write_atomically(folder, write, prefix=".manifest-")


def read_manifest(folder: str) -> Optional[dict]:
    """The checkpoint's manifest, or None when it has none (written before checkpoints had one). A file that is not
    valid JSON raises (``json.JSONDecodeError``)."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def describe(manifest: dict) -> str:
    """'method kd (KDTrainer), teacher org/name at revision abc (weights sha256 0123456789ab)', for messages."""
    method = f"method '{manifest.get('method')}'" + (f" ({manifest['trainer']})" if manifest.get("trainer") else "")
    teacher = manifest.get("teacher")
    if not teacher:
        return f"{method}, no teacher"
    name = f"teacher '{teacher['name']}'" if teacher.get("name") else "an unnamed teacher"
    revision = f" at revision {teacher['revision']}" if teacher.get("revision") else ""
    return f"{method}, {name}{revision} (weights sha256 {str(teacher.get('weights_sha256'))[:12]})"


def resume_mismatch(checkpoint: str, saved: dict, current: dict) -> Optional[str]:
    """The error message when a checkpoint's manifest (``saved``) does not fit this run's (``current``): another
    method or another teacher (told apart by the weights' hash, so a teacher moved to another folder still fits).
    None when the run may resume."""
    saved_teacher, current_teacher = saved.get("teacher") or {}, current.get("teacher") or {}
    same_method = saved.get("method") == current.get("method")
    same_teacher = saved_teacher.get("weights_sha256") == current_teacher.get("weights_sha256")
    if same_method and same_teacher:
        return None
    what = " and ".join(w for w, same in (("method", same_method), ("teacher", same_teacher)) if not same)
    return (f"Checkpoint {checkpoint} comes from a run with another {what}: it was written with "
            f"{describe(saved)}; this run has {describe(current)}. Resuming would continue its optimizer and schedule "
            "under another objective. Resume with the same method and teacher as the run that wrote it, or start a "
            "new run: another --output_dir, or --overwrite_output_dir (drop --resume_from_checkpoint).")
