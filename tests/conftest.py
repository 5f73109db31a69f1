"""Shared fixtures: paths to the shipped tiny policy and a small, fast variant of the default config."""

import os
from pathlib import Path

# Tests never touch the network; set before huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY_POLICY = ROOT / "models" / "arith-tiny"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a message when the folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data lives beside the project root in ../shared")
    return path


@pytest.fixture
def small_config(tmp_path: Path):
    """Write a few-step version of configs/<name>.yaml into tmp_path and return its path.

    Usage: ``small_config("rgra", **overrides)`` where overrides are ``{"model.init_args.x": value}``.
    """

    def make(name: str = "rgra", **overrides: object) -> Path:
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
        config["data"]["init_args"].update(batch_size=4, val_size=8, val_batch_size=8)
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
