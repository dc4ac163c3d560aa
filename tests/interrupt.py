"""Ctrl-C in a test: run a command, and once a line of its output says it is at work, send it SIGINT."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

# a hang guard only: the command runs with one thread and a busy machine makes it slower, never red
HANG_S = 3600


def interrupt_when(command: list[str], marker: str, **options) -> tuple[int, str]:
    """Start ``command`` (one thread), read its output (standard output and error together) until
    a line holds ``marker``, send SIGINT as a terminal's Ctrl-C does, and return its exit status
    and its whole output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **options.pop("env", {})}
    # its own process group, which the signal goes to: a terminal's Ctrl-C reaches the processes
    # the command started too
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True, **options)
    try:
        seen = []
        for line in process.stdout:  # ends if the command exits before it says it is at work
            seen.append(line)
            if marker in line:
                os.killpg(process.pid, signal.SIGINT)
                break
        rest, _ = process.communicate(timeout=HANG_S)
    finally:  # whatever is left of the group (nothing, when the command exits as it should)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, "".join(seen) + rest
