"""``run_process``: what the tests use instead of ``subprocess.run`` to start a process (a recipe under
``accelerate launch``, a fresh interpreter). The process gets its own process group, and the whole group (the
launcher and every process it started) is ended when the test is interrupted (Ctrl-C), times out or fails, so no
recipe is left running as an orphan. ``subprocess.run`` would only kill the direct child: ``accelerate launch``
dies, the training script it started runs on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def end_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM every process of the group, then SIGKILL what is still there after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_process(cmd, *, timeout: float, input=None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)`` in a new process group
    that is ended, children included, on any exception (``KeyboardInterrupt``, ``TimeoutExpired``) and on return."""
    kwargs.setdefault("text", True)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else None, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        end_group(proc.pid)
        proc.kill()
        proc.communicate()
        raise
    end_group(proc.pid, grace=1.0)  # anything the process left behind in its group
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
