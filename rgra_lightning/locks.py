"""Locks between processes: an exclusive ``flock`` on a file that records its holder. A fit holds one on its
checkpoint directory (``checkpointing.RunDirectoryLock``), an ablation study on each run it runs
(``ablate.claimed``).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


def take_lock(path: str | Path) -> int | str:
    """An exclusive ``flock`` on the file at ``path`` (created, with its folder), taken without waiting: the
    open descriptor that holds it, the file recording this process (``process 123 on host``), or, where
    another process holds it, what that one recorded. Closing the descriptor releases the lock, and the
    kernel releases it when the process ends, however it ends (``kill -9`` included)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = recorded_holder(handle)
        os.close(handle)
        return holder
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return handle


def recorded_holder(handle: int) -> str:
    """The holder a lock file (open as ``handle``) records, ``process 123 on host``."""
    return os.pread(handle, 200, 0).decode(errors="replace").strip() or "another process"
