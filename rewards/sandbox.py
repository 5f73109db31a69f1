"""Killable worker processes with a wall-clock and a memory limit per call.

``WorkerPool.map(function, argument_tuples)`` runs ``function(*arguments)`` for each tuple in up to
``workers`` processes at once and returns one ``Outcome`` per tuple, in order. A call that runs past
``timeout`` seconds is ended by killing its process (a replacement starts on demand); one that exceeds
``memory_mb`` of address space fails with MemoryError inside the worker (or the worker dies). Neither raises
into the caller.

Workers start lazily, on the first ``map``. Where the platform has it they are forked from multiprocessing's
fork server, a clean single-threaded process that imported the ``preload`` modules once (the verifier's
preload imports sympy and trains the parser), so every worker -- the first ones and each replacement of a
killed one -- starts in milliseconds and already warm; elsewhere they come from the ``spawn`` context (a fresh
interpreter each). Either way it is safe to use from a process with threads, and a later ``fork`` of the
caller -- DataLoader workers -- does not share them: a pool used in a forked child notices the new pid and
starts its own workers. ``function`` must be a module-level function (it is pickled by reference). The fork
server is one per process: the ``preload`` of the first pool that starts it applies to all.

Workers do not import the caller's ``__main__`` module, which multiprocessing otherwise re-imports in every
child of ``forkserver`` and ``spawn`` (``_without_main``): a training script's main imports torch and
Lightning, which cost a worker seconds to start and hundreds of MB of memory. ``function`` and ``warmup``
therefore must not live in ``__main__``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import forkserver, spawn
from multiprocessing.connection import Connection, wait
from typing import Any

STARTUP_TIMEOUT = 120.0
WORKER_NAME = "rewards-sandbox-worker"  # how ``_without_main`` tells our workers from other processes


def _without_main(get_preparation_data: Callable[[str], dict]) -> Callable[[str], dict]:
    """Wraps ``multiprocessing.spawn.get_preparation_data`` (what a ``forkserver`` or ``spawn`` child sets
    itself up from) so that for ``WORKER_NAME`` processes it leaves out the parent's ``__main__`` module.
    multiprocessing has no option for this; the wrapper changes nothing for any other process."""

    def preparation_data(name: str) -> dict:
        data = get_preparation_data(name)
        if name == WORKER_NAME:
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        return data

    preparation_data.wrapped = get_preparation_data  # type: ignore[attr-defined]
    return preparation_data


if not hasattr(spawn.get_preparation_data, "wrapped"):  # once, even if this module is reloaded
    spawn.get_preparation_data = _without_main(spawn.get_preparation_data)


@dataclass(frozen=True)
class Outcome:
    """The result of one call: ``value`` when ``error`` is None, else why it failed."""

    value: Any = None
    error: str | None = None  # None, "timeout", "memory", "crash: ..."
    seconds: float = 0.0


_fork_server_owner: int | None = None  # the process whose fork server this module's workers come from


def _context(preload: Sequence[str]) -> Any:
    """The multiprocessing context workers start from: the fork server (with ``preload``) where available and
    this process's own, else ``spawn``. A process forked from one that started a fork server (a DataLoader
    worker) inherits a handle on a server it cannot use (it is not the server's parent): it spawns."""
    global _fork_server_owner
    if "forkserver" in multiprocessing.get_all_start_methods():
        if _fork_server_owner is None:
            _fork_server_owner = os.getpid()
        if _fork_server_owner == os.getpid():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(list(preload))  # no effect once the server runs
            return context
    return multiprocessing.get_context("spawn")


def _serve(connection: Connection, memory_mb: int, warmup: Callable[[], Any] | None) -> None:
    """Worker loop: run ``warmup``, say ready, then receive ``(function, arguments)`` and send back
    ``(ok, value_or_error)``."""
    # Ctrl-C in a terminal signals the whole process group: each worker would print a KeyboardInterrupt
    # traceback; the parent, interrupted too, stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb > 0:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if warmup is not None:
        warmup()
    connection.send("ready")
    while True:
        try:
            function, arguments = connection.recv()
        except EOFError:
            return
        try:
            reply = (True, function(*arguments))
        except MemoryError:
            reply = (False, "memory")
        except BaseException as error:  # any failure on model text is a result, not a worker crash
            reply = (False, f"crash: {type(error).__name__}: {str(error)[:200]}")
        connection.send(reply)


class _Worker:
    """One worker process; the constructor returns once it is ready (imports done), which is not counted
    against any call's timeout."""

    def __init__(self, memory_mb: int, warmup: Callable[[], Any] | None, context: Any) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, memory_mb, warmup), name=WORKER_NAME, daemon=True
        )
        self.process.start()
        child.close()
        if not self.connection.poll(STARTUP_TIMEOUT) or self.connection.recv() != "ready":
            self.kill()
            raise RuntimeError(f"verifier worker did not start within {STARTUP_TIMEOUT} s")

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


class WorkerPool:
    """A lazily started, reusable pool of killable worker processes.

    Args:
        workers: processes running at once.
        timeout: wall-clock seconds allowed per call.
        memory_mb: address-space limit of each worker in MiB (0: none).
        warmup: module-level function each new worker runs before its first call (imports), untimed; a worker
            forked from a warm fork server finds it done (make it return at once when repeated).
        preload: modules the fork server imports once before forking workers (importing them may warm
            caches that every forked worker then shares).
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 3.0,
        memory_mb: int = 2048,
        warmup: Callable[[], Any] | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        if workers < 1 or timeout <= 0:
            raise ValueError("workers must be >= 1 and timeout > 0")
        self.workers, self.timeout, self.memory_mb, self.warmup = workers, timeout, memory_mb, warmup
        self.preload = tuple(preload)
        self._idle: list[_Worker] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()
        atexit.register(self.close)

    def start_fork_server(self) -> None:
        """Start the fork server (its ``preload`` imports) in a background thread now, so that the first
        ``map`` forks its workers at once instead of waiting for the imports. Nothing where workers are
        spawned, or where the server runs already."""
        if _context(self.preload).get_start_method() == "forkserver":
            name = "rewards-fork-server"
            threading.Thread(target=forkserver.ensure_running, name=name, daemon=True).start()

    def start(self) -> None:
        """Start (and warm up) all ``workers`` processes now instead of on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()
            while len(self._idle) < self.workers:
                self._idle.append(self._new_worker())

    def _new_worker(self) -> _Worker:
        context = _context(self.preload)
        try:
            return _Worker(self.memory_mb, self.warmup, context)
        except (ChildProcessError, OSError):  # a fork server this process cannot use (started by another)
            if context.get_start_method() == "spawn":
                raise
            return _Worker(self.memory_mb, self.warmup, multiprocessing.get_context("spawn"))

    def close(self) -> None:
        """Stop the workers (a later ``map`` starts new ones)."""
        if self._pid == os.getpid():
            for worker in self._idle:
                worker.kill()
        self._idle = []

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (e.g. into DataLoader workers) carry the settings, never the processes."""
        return {
            "workers": self.workers,
            "timeout": self.timeout,
            "memory_mb": self.memory_mb,
            "warmup": self.warmup,
            "preload": self.preload,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def map(self, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Outcome]:
        """``function(*arguments)`` for each tuple of ``calls``, in parallel, each under the limits."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's workers are not ours
                self._idle, self._pid = [], os.getpid()
            return self._map(function, calls)

    def _map(self, function: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(calls)
        pending = list(range(len(calls)))[::-1]
        busy: dict[Connection, tuple[_Worker, int, float]] = {}
        while pending or busy:
            while pending and len(busy) < self.workers:
                index = pending.pop()
                worker = self._idle.pop() if self._idle else self._new_worker()
                try:
                    worker.connection.send((function, calls[index]))
                except (OSError, ValueError) as error:
                    worker.kill()
                    outcomes[index] = Outcome(error=f"crash: cannot send to worker: {error}")
                    continue
                busy[worker.connection] = (worker, index, time.monotonic())
            earliest = min(start for _, _, start in busy.values()) if busy else time.monotonic()
            for connection in wait(list(busy), timeout=max(0.0, earliest + self.timeout - time.monotonic())):
                worker, index, start = busy.pop(connection)
                try:
                    ok, value = connection.recv()
                except (EOFError, OSError):
                    worker.kill()
                    outcomes[index] = Outcome(error="crash: worker died", seconds=time.monotonic() - start)
                    continue
                self._idle.append(worker)
                elapsed = time.monotonic() - start
                outcomes[index] = Outcome(value, None, elapsed) if ok else Outcome(None, value, elapsed)
            now = time.monotonic()
            for connection, (worker, index, start) in list(busy.items()):
                if now - start >= self.timeout:
                    del busy[connection]
                    worker.kill()
                    outcomes[index] = Outcome(error="timeout", seconds=now - start)
        return [outcome if outcome is not None else Outcome(error="crash: lost") for outcome in outcomes]
