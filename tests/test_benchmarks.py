"""The benchmarks run end to end and report what they claim (slow: whole training runs)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_throughput_benchmark_times_both_trainers_and_reports_the_ratio():
    pytest.importorskip("trl", reason="the benchmark's TRL side needs pip install -e '.[bench]'")
    done = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--runs", "1", "--steps", "2", "--warmup", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    ours = float(re.search(r"\| rgra-lightning \| ([0-9.]+) \|", out).group(1))
    trl = float(re.search(r"\| TRL GRPOTrainer \| ([0-9.]+) \|", out).group(1))
    ratio = float(re.search(r"ratio ours / TRL = ([0-9.]+)", out).group(1))
    assert ours > 0 and trl > 0
    assert ratio == pytest.approx(ours / trl, abs=0.01)  # printed values are rounded
    fractions = dict(re.findall(r"(generation|verification|update) (\d+)%", out))
    assert set(fractions) == {"generation", "verification", "update"}
    assert 0 < int(fractions["generation"]) < 100 and int(fractions["update"]) > 0


@pytest.mark.slow
def test_micro_batches_lower_the_peak_memory_of_a_step_with_a_real_size_vocabulary():
    done = subprocess.run(
        [sys.executable, "benchmarks/peak_memory.py", "--micro", "0", "8", "--tokens", "32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    whole = float(re.search(r"\| none \(32 rows\) \| ([0-9.]+) \|", done.stdout).group(1))
    micro = float(re.search(r"\| 8 \| ([0-9.]+) \|", done.stdout).group(1))
    fp32_logits = 32 * 32 * 151_936 * 4 / 1e9  # GB, one copy for all 32 rows
    assert whole > 2 * fp32_logits  # the logits dominate the step, several copies at once...
    assert micro < whole / 2  # ...and a quarter of the rows per pass holds far fewer of them
