"""Child processes of the local stack, each in a session of its own so that it is stopped as a group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)


def kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, for fault injection and for a group that ignored SIGTERM."""
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
