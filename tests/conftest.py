"""Shared fixtures and helpers: paths to the shipped tiny policy, a small variant of the default config,
the CLI's one-line errors, sampling with the default engine, and rounding tolerances."""

import contextlib
import io
import math
import os
import signal
from pathlib import Path

# Tests never touch the network; set before huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY_POLICY = ROOT / "models" / "arith-tiny"

FAST = {  # no validation: these tests are about the training loop, not accuracy
    "trainer.limit_val_batches": 0,
    "model.init_args.validate_before_training": False,
}


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a message when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data lives beside the project root in ../shared")
    return path


def rounding_rtol(dtype: torch.dtype, summed_terms: int, safety: float = 16.0) -> float:
    """A relative tolerance for two results of the same computation in ``dtype`` whose sums of up to
    ``summed_terms`` terms are taken in different orders (another CPU's kernels, a cached prompt, another
    micro-batch split).

    Rounding errors of a sum of n terms grow like sqrt(n) * unit roundoff for independent rounding (the
    probabilistic bound of Higham and Mary, SIAM J. Sci. Comput. 2019); ``safety`` covers the few layers of
    such sums a forward and backward pass stack. The bound is on a norm-wise relative error: compare norms
    of whole tensors, not single entries that cancel to near zero.
    """
    return safety * math.sqrt(summed_terms) * torch.finfo(dtype).eps / 2


# fp32 log-probs of the tiny models: sums over at most 128 features and 40 positions per layer.
LOGPROB_RTOL = rounding_rtol(torch.float32, 128 * 40)


def assert_close_normwise(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "") -> None:
    """``|actual - expected| <= rtol * |expected|`` in the Frobenius norm (see ``rounding_rtol``)."""
    error = (actual - expected).norm() / expected.norm().clamp(min=torch.finfo(expected.dtype).tiny)
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:.3g}"


def sample(policy, tokenizer, prompts: list[str], config, greedy: bool = False):
    """A ``Rollout`` of ``prompts`` from ``policy`` with the default engine (``HFEngine``)."""
    from rgra_lightning.rollout import HFEngine

    return HFEngine().bind(policy, tokenizer).generate(prompts, config, greedy=greedy)


@contextlib.contextmanager
def head_input_layouts(model: torch.nn.Module):
    """Yields a list that gets, for every call of ``model``'s output head, whether its input was contiguous.
    A strided slice of the hidden states reaches a frozen head's ``torch.matmul`` unfolded: a batched
    multiply that, on the CPU in bfloat16, copies the head's whole weight for every row."""
    layouts: list[bool] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous())
    )
    try:
        yield layouts
    finally:
        handle.remove()


def one_line_error(args: list[str], capsys, status: int = 2) -> str:
    """Run the CLI expecting a reported error: exit ``status`` (2: a config mistake, 3: training diverged)
    and a single ``error: ...`` line on stderr."""
    from rgra_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args, run=args[0] in ("fit", "validate", "test", "predict"))
    assert exit_info.value.code == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1
    return lines[0]


@pytest.fixture(autouse=True)
def sigterm_handler_restored():
    """``rgra ablate`` and ``rgra rehearse`` install SIGTERM and SIGHUP handlers (exit 143, 129) in their
    process, here the test process: left in place, Lightning would chain the SIGTERM one after its own in a
    later fit, and a test's SIGTERM would exit before the fit saves its state. Lightning ignores SIGINT
    once a ``KeyboardInterrupt`` stopped a fit."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture
def applied_learning_rates(monkeypatch) -> list[float]:
    """The learning rate of every ``AdamW.step`` from now on, as the optimizer applies it."""
    applied: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        applied.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return applied


@pytest.fixture
def small_config(tmp_path: Path):
    """Write a few-step version of configs/<name>.yaml into tmp_path and return its path.

    Usage: ``small_config("rgra", **overrides)`` where overrides are ``{"model.init_args.x": value}``;
    ``data_module="JsonFilesDataModule"`` swaps the embedded task for another data module class.
    """

    def make(name: str = "rgra", data_module: str | None = None, **overrides: object) -> Path:
        config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        config["trainer"].update(max_steps=4, val_check_interval=2, enable_progress_bar=False)
        config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "runs")
        for callback in config["trainer"]["callbacks"]:
            if callback["class_path"].endswith("ModelCheckpoint"):
                callback["init_args"].update(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2)
            if callback["class_path"].endswith("ExportHuggingFace"):
                callback["init_args"] = {"output_dir": str(tmp_path / "hf_model")}
        model = config["model"]["init_args"]
        model["model_path"] = str(TINY_POLICY)
        model["sampling"]["num_generations"] = 4
        data = config["data"]
        data["init_args"].update(batch_size=4, val_batch_size=8)
        if data_module is None:
            data["init_args"]["val_size"] = 8
        else:
            data["class_path"] = f"rgra_lightning.{data_module}"
            if data_module == "JsonFilesDataModule":  # validation comes from its own file
                del data["init_args"]["val_size"]
        for dotted, value in overrides.items():
            node = config
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def scalars_by_step(run_dir: Path, tag: str) -> dict[int, list[float]]:
    """Every logged value of ``tag`` under ``run_dir`` (all versions), keyed by step."""
    values: dict[int, list[float]] = {}
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                values.setdefault(event.step, []).append(event.value)
    return values


def scalar_tags(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar logged under ``run_dir`` (all versions), keyed by tag, in logging order."""
    values: dict[str, list[float]] = {}
    for path in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(event.value for event in accumulator.Scalars(tag))
    return values


def printed_config(*configs: str) -> dict:
    """What ``rgra fit --config ... --print_config`` prints, parsed."""
    from rgra_lightning.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *(f"--config={config}" for config in configs), "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(out.getvalue())
