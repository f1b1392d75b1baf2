"""Processes the lab starts that must end with it: QEMU guests and the guests' sandbox."""

import ctypes
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

__all__ = ["spawn"]

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# The kernel sends PDEATHSIG when the *thread* that forked the child ends. Every such process is
# forked by this one long-lived thread, so it dies with the lab's process, however that ends,
# and never with the short-lived request thread that asked for it.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-spawner")


def spawn(command: List[str], **options: Any) -> subprocess.Popen:
    """Start ``command`` (Popen ``options``) so that it is killed when the lab's process ends."""
    return _SPAWNER.submit(subprocess.Popen, command, preexec_fn=_die_with_parent, **options).result()
