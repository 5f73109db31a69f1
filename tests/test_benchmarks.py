"""The throughput benchmark against TRL runs end to end and reports what it claims (slow: two trainers)."""

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
