"""Locks between processes: taken without waiting, naming their holder, released however the holder ends."""

import os
import socket
import subprocess
import sys

from rgra_lightning.locks import take_lock


def test_a_held_lock_names_its_holder_and_is_free_once_closed(tmp_path):
    path = tmp_path / "a" / "run.lock"  # its folder is created
    held = take_lock(path)
    assert isinstance(held, int)
    assert take_lock(path) == f"process {os.getpid()} on {socket.gethostname()}"  # another open file
    os.close(held)
    again = take_lock(path)
    assert isinstance(again, int)
    os.close(again)


def test_a_lock_is_released_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "run.lock"
    code = f"from rgra_lightning.locks import take_lock; take_lock({str(path)!r}); print('held', flush=True)"
    code += "; input()"  # holds the lock until killed
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "held\n"
        assert take_lock(path) == f"process {child.pid} on {socket.gethostname()}"
    finally:
        child.kill()
        child.wait()
    held = take_lock(path)
    assert isinstance(held, int)
    os.close(held)
