"""Run a launcher (``accelerate launch``, a script) in its own process group, so that a test that is interrupted
(Ctrl-C, pytest's timeout, an assertion in between) or times out kills the launcher and every worker it started,
instead of leaving torchrun workers behind."""

import os
import signal
import subprocess


def run_group(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)`` in a new session; on any
    exit other than the command's own (timeout, KeyboardInterrupt, ...) the whole group gets SIGKILL."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # still running: we are leaving early
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this Popen created: launcher and workers
            except ProcessLookupError:
                pass
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
