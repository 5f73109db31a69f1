"""Hard limits: hostile answers return within the limit, without exceptions or side effects."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewards import MathVerifier
from rewards.sandbox import WorkerPool
from tests.rewards.helpers import expand_power, shared_path

needs_fork_server = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="no fork server on this platform: workers are spawned",
)


def _run_script(folder: Path, text: str) -> subprocess.CompletedProcess:
    """Runs ``text`` as the main script ``folder/main.py`` of a fresh interpreter that can import this
    project; its output is captured."""
    script = folder / "main.py"
    script.write_text(text)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def verifier():
    verifier = MathVerifier(timeout=1.0, workers=2)
    yield verifier
    verifier.pool.close()


def test_timeout_kills_and_replaces_the_worker():
    pool = WorkerPool(workers=1, timeout=0.5)
    try:
        start = time.monotonic()
        outcomes = pool.map(time.sleep, [(30,), (0,)])
        assert [o.error for o in outcomes] == ["timeout", None]
        assert time.monotonic() - start < 15  # includes starting two interpreters
    finally:
        pool.close()


@pytest.mark.parametrize("options", [{"workers": 0}, {"timeout": 0.0}, {"timeout": -1.0}])
def test_a_pool_refuses_limits_it_cannot_work_with(options):
    with pytest.raises(ValueError, match="workers must be >= 1 and timeout > 0"):
        WorkerPool(**options)


def test_workers_run_calls_at_the_same_time():
    """Two 2 s sleeps take about 2 s in two workers, 4 s one after the other: the bound leaves 1.5 s for a
    loaded machine's scheduling and pipes, far more than they take."""
    pool = WorkerPool(workers=2, timeout=30.0)
    try:
        pool.map(time.sleep, [(0.2,), (0.2,)])  # both workers started and answering before the clock
        start = time.monotonic()
        assert [o.error for o in pool.map(time.sleep, [(2,), (2,)])] == [None, None]
        assert time.monotonic() - start < 3.5
    finally:
        pool.close()


def test_a_worker_ignores_ctrl_c_which_the_parent_handles():
    """Ctrl-C signals the terminal's whole process group: a worker killed by it printed a KeyboardInterrupt
    traceback (two per interrupted fit) and lost its task."""
    pool = WorkerPool(workers=1, timeout=30.0)
    try:
        assert [o.value for o in pool.map(abs, [(-1,)])] == [1]  # the worker runs
        (worker,) = pool._idle
        os.kill(worker.process.pid, signal.SIGINT)
        time.sleep(0.5)
        assert worker.process.is_alive()
        assert [(o.value, o.error) for o in pool.map(abs, [(-2,)])] == [(2, None)]
    finally:
        pool.close()


def _warm(verifier: MathVerifier) -> None:
    """Make sure a worker is running, so a timed call measures verification, not interpreter start-up (which
    ``STARTUP_TIMEOUT`` bounds separately and which is paid once per killed worker)."""
    verifier._cache.clear()
    assert verifier.score("\\boxed{x+1}", "1+x").correct


def _hostile(marker) -> list[str]:
    return [
        "\\boxed{9^{9^{9^{9}}}}",
        "\\boxed{9^{9^{9^{9^{9}}}}}",
        "\\boxed{" + "9" * 20_000 + "}",
        "\\boxed{" + "(" * 5_000 + "1" + ")" * 5_000 + "}",
        "\\boxed{" + "{" * 5_000 + "}" * 5_000 + "}",
        "\\boxed{" + "\\frac{" * 300 + "1" + "}{2}" * 300 + "}",
        "\\boxed{(10^{10})! + 1}",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"\\boxed{{eval(\"open('{marker}', 'w')\")}}",
        f'{{}}.__class__.__base__.__subclasses__() \\boxed{{exec(\'open("{marker}","w")\')}}',
        f"$__import__('os').system('touch {marker}')$",
        f"The answer is __import__('subprocess').call(['touch', '{marker}'])",
    ]


@pytest.mark.parametrize("index", range(len(_hostile("marker"))))
def test_each_hostile_input_returns_within_the_limit_without_side_effects(verifier, tmp_path, index):
    marker = tmp_path / "pwned"
    completion = _hostile(marker)[index]
    _warm(verifier)
    start = time.monotonic()
    score = verifier.score(completion, "2")  # raising here fails the test
    assert time.monotonic() - start < verifier.pool.timeout + 1.0
    assert score.reward == 0.0 and not score.correct
    assert not marker.exists()


def test_memory_cap_stops_a_huge_expansion_and_the_pool_keeps_working():
    # (x+1)^100000 has 100001 coefficients of up to ~30000 digits: gigabytes, far past a 400 MiB cap
    pool = WorkerPool(workers=1, timeout=30.0, memory_mb=400)
    try:
        start = time.monotonic()
        huge, small = pool.map(expand_power, [(100_000,), (3,)])
        assert huge.error in ("memory", "crash: worker died") and huge.value is None
        assert huge.seconds < 10  # the cap, not the 30 s timeout, ended it
        assert (small.value, small.error) == (4, None)
        assert pool.map(expand_power, [(5,)])[0].value == 6
        assert time.monotonic() - start < 30
    finally:
        pool.close()


def test_huge_exact_numbers_are_compared_exactly():
    verifier = MathVerifier(timeout=5.0, memory_mb=400, workers=1)
    try:
        assert not verifier.score("\\boxed{2^{10^{10}}+1}", "2^{10^{10}}").correct  # relative gap 1e-3e9
        assert verifier.score("\\boxed{2^{10^{10}}+1}", "1+2^{10^{10}}").correct
    finally:
        verifier.pool.close()


def test_pathological_cases_return_within_the_limit(verifier):
    rows = [json.loads(line) for line in shared_path("verifier-cases", "pathological.jsonl").open()]
    for row in rows:
        start = time.monotonic()
        verifier.score(row["pred"], row["gold"])
        assert time.monotonic() - start < verifier.pool.timeout + 1.0, row["id"]


def test_start_launches_every_worker_up_front():
    pool = WorkerPool(workers=2, timeout=5.0)
    try:
        pool.start()
        assert len(pool._idle) == 2
        assert [o.value for o in pool.map(abs, [(-1,), (-2,)])] == [1, 2]
        assert len(pool._idle) == 2  # reused, none added
    finally:
        pool.close()


@needs_fork_server
def test_workers_are_forked_from_a_fork_server_that_preloaded_the_parser(tmp_path):
    """In a fresh interpreter (the fork server is one per process): a worker of a pool with ``preload`` finds
    sympy imported before its first call, so starting or replacing a worker costs no imports."""
    result = _run_script(
        tmp_path,
        "from rewards.sandbox import WorkerPool\n"
        "from tests.rewards.helpers import loaded\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(workers=1, timeout=30, preload=('rewards.preload',))\n"
        "    modules = [('sympy',), ('latex2sympy2_extended.latex2sympy2',)]\n"
        "    print([o.value for o in pool.map(loaded, modules)])\n"
        "    pool.close()\n",
    )
    assert result.stdout.strip() == "[True, True]", result.stderr


@needs_fork_server
def test_a_trainers_verifier_starts_the_fork_server_before_its_first_batch(tmp_path):
    """``MathVerifier(warm_start=True)`` (a trainer's) has the fork server import sympy and train the parser
    in the background from construction, so the first slow check does not stall a training step; a cold
    one (the batch CLI's default) starts nothing until it needs workers."""
    result = _run_script(
        tmp_path,
        "import threading\n"
        "from multiprocessing import forkserver\n"
        "from rewards import MathVerifier\n"
        "if __name__ == '__main__':\n"
        "    MathVerifier(warm_start=False)\n"
        "    print('cold', [t.name for t in threading.enumerate() if t.name == 'rewards-fork-server'])\n"
        "    MathVerifier(warm_start=True)\n"
        "    for thread in threading.enumerate():\n"
        "        if thread.name == 'rewards-fork-server':\n"
        "            thread.join(60)\n"
        "    print('warm', forkserver._forkserver._forkserver_pid is not None)\n",
    )
    assert result.stdout.split("\n")[:-1] == ["cold []", "warm True"], result.stderr


def test_workers_do_not_import_the_callers_main_module(tmp_path):
    """multiprocessing re-imports the parent's ``__main__`` in every forkserver or spawn child; a training
    script's main imports torch, which would cost each worker seconds and hundreds of MB. Neither kind of
    worker may import it."""
    methods = [m for m in ("forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]
    result = _run_script(
        tmp_path,
        "import multiprocessing\n"
        "from rewards.sandbox import WorkerPool, _Worker\n"
        "from tests.rewards.helpers import main_file\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(workers=1, timeout=30)\n"
        "    print('pool', pool.map(main_file, [()])[0].value)\n"
        "    pool.close()\n"
        f"    for method in {methods!r}:\n"
        "        worker = _Worker(0, None, multiprocessing.get_context(method))\n"
        "        worker.connection.send((main_file, ()))\n"
        "        print(method, worker.connection.recv()[1])\n"
        "        worker.kill()\n",
    )
    expected = ["pool None"] + [f"{method} None" for method in methods]
    assert result.stdout.split("\n")[:-1] == expected, result.stderr


def test_a_forked_child_of_a_pool_user_still_gets_workers_of_its_own(tmp_path):
    """A DataLoader-style ``fork`` of a process whose pool runs on its fork server: the child cannot use that
    server (it is not the server's parent) and spawns its own workers, for the parent's pool and a new one.
    The parent's idle workers would still answer the child, but calls from both would interleave on one pipe:
    the child's calls run in workers it started (their parent is the child)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    result = _run_script(
        tmp_path,
        "import os\n"
        "from rewards.sandbox import WorkerPool\n"
        "if __name__ == '__main__':\n"
        "    pool = WorkerPool(workers=1, timeout=30)\n"
        "    assert pool.map(abs, [(-1,)])[0].value == 1\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        values = [pool.map(abs, [(-2,)])[0].value, WorkerPool(1, 30).map(abs, [(-3,)])[0].value]\n"
        "        own = pool.map(os.getppid, [()])[0].value == os.getpid()\n"
        "        print(values, own, flush=True)\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    pool.close()\n",
    )
    assert result.stdout.strip() == "[2, 3] True", result.stderr
