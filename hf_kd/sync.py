"""Files that one process writes and the others then read, under ``accelerate launch`` / ``torchrun``.

Only the main process writes an export (the student, an auto-trained teacher, their model cards and curves); the
other processes must not read it before it is complete. ``main_process_writes`` is the one way hf_kd orders this:
the main process writes into a temporary folder beside the target and renames each file into place (``config.json``
last), then every process meets at accelerate's barrier (``PartialState().wait_for_everyone()``). When it returns, on
any process, the files are whole. ``write_atomically`` is its writer half, for code that only the main process
reaches (an export pushed from a checkpoint, ``Trainer.create_model_card``): no other process waits there, so there is
no barrier. ``every_process`` is how processes that look at the same folder agree on what is there before any of them
changes it (each looks at its own disk: on several machines without a shared filesystem they may see different things).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Optional, Sequence

from accelerate import PartialState
from accelerate.utils import gather_object

__all__ = ["write_atomically", "main_process_writes", "every_process"]


def write_atomically(folder: str, write: Callable[[str], None], last: Sequence[str] = ("config.json",),
                     prefix: str = ".tmp-") -> None:
    """Run ``write(tmp)`` on a fresh temporary folder inside ``folder``, then move what it wrote into ``folder``.

    Each name is moved with ``os.replace`` (atomic on one filesystem), the names in ``last`` after all others, and a
    previous export's ``last`` files are removed before the first move: a reader never sees a half-written file, and a
    folder holding ``config.json`` holds the weights and card it goes with, also when an interrupted export was
    replacing an earlier one (the folder is then without ``config.json``, not a mix that looks complete). If ``write``
    fails, ``folder`` keeps its previous files and the temporary folder is removed.
    """
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=folder)
    try:
        write(tmp)
        names = sorted(os.listdir(tmp), key=lambda n: n in last)  # stable: the `last` names at the end
        for name in names:
            if name in last and os.path.isfile(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))  # the old export is incomplete from here until the end
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main_process_writes(folder: str, write: Callable[[str], None], writer: Optional[bool] = None,
                        last: Sequence[str] = ("config.json",), prefix: str = ".tmp-") -> None:
    """Collective: the writing process fills ``folder`` with ``write_atomically``; every process waits for it.

    Every process must call it (it ends at a barrier). ``writer`` says whether this process writes (default: the main
    process; a Trainer passes ``args.should_save``). If the writer fails it still reaches the barrier before raising,
    so the others are released (and fail on the missing files) instead of waiting for the collective timeout.
    """
    state = PartialState()
    writer = state.is_main_process if writer is None else writer
    try:
        if writer:
            write_atomically(folder, write, last=last, prefix=prefix)
    finally:
        state.wait_for_everyone()


def every_process(value: Any) -> list:
    """Collective: ``value`` from every process, in process order, on every process (``[value]`` with one process).

    Every process must call it; no process returns before all have called it, so what each one looked at before the
    call is its view from before any process acts on the result."""
    return gather_object([value])
