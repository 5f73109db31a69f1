"""The C library's malloc keeps freed tensor memory for reuse once the trainer runs on CPU."""

import platform
import subprocess
import sys

import pytest
from lightning import Trainer

import rgra_lightning.module as module_file
from rgra_lightning import RLModule
from tests.conftest import ROOT, TINY_POLICY

# 64 tensors of 1 MiB, freed together, eight times: glibc's default mostly hands the freed top of its heap
# back to the kernel, so that each round faults the 16,384 pages in again (on this machine in 4 runs of 5;
# in the fifth the blocks stayed from round 5 on); kept, every run reuses them from round 4 on.
ROUNDS = """
import resource, sys, torch
from rgra_lightning.host_memory import keep_freed_host_memory
print(keep_freed_host_memory())
faults = []
for _ in range(8):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(1 << 18) for _ in range(64)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(*faults)
"""


def rounds(**environment: str) -> tuple[bool, list[int]]:
    """Whether ``keep_freed_host_memory`` applied, and the page faults of each round, in a fresh process."""
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **environment}
    done = subprocess.run([sys.executable, "-c", ROUNDS], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, faults = done.stdout.splitlines()[-2:]
    return applied == "True", [int(count) for count in faults.split()]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_host_memory acts on glibc only")
def test_kept_freed_blocks_are_reused_without_page_faults():
    applied, faults = rounds()
    assert applied
    assert faults[0] >= 16_000  # the first round faults its 64 MiB in
    assert sum(faults[4:]) < 100  # the last four reuse them: no page is faulted in again


def test_the_allocator_is_left_alone_where_the_environment_configures_it():
    assert rounds(MALLOC_ARENA_MAX="2")[0] is False
    assert rounds(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")[0] is False


def test_the_trainer_keeps_freed_memory_when_it_runs_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(module_file, "keep_freed_host_memory", lambda: calls.append("kept"))
    module = RLModule(model_path=str(TINY_POLICY))
    module.setup("validate")  # no trainer: nothing to decide on
    assert calls == []
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    module.setup("validate")
    assert calls == ["kept"]
