"""Prompt data modules, one per source, over a shared base (``PromptDataModule``); choose one in YAML with
``data.class_path``:

- ``ArithmeticDataModule``: the embedded arithmetic task, generated in code (the default config's);
- ``JsonFilesDataModule``: local JSON/JSONL files, one per split;
- ``DatasetDataModule``: hub datasets, local files and dataset directories (split files, hub-layout
  shards, ``datasets.save_to_disk``), with presets for GSM8K and MATH-500.
"""

from rgra_lightning.data.arithmetic import ArithmeticDataModule
from rgra_lightning.data.base import PromptDataModule
from rgra_lightning.data.hf_datasets import DatasetDataModule
from rgra_lightning.data.json_files import JsonFilesDataModule
from rgra_lightning.data.records import DatasetError

__all__ = [
    "ArithmeticDataModule",
    "DatasetDataModule",
    "DatasetError",
    "JsonFilesDataModule",
    "PromptDataModule",
]
