# Two commands on a fresh machine with only Python 3.10+:
#   make demo   export the bundled all-MiniLM-L6-v2 and use it through Optimum
#   make test   run the test suite
# Both create .venv first. torch is pinned before anything else resolves: a looser
# requirement resolved first would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test bench env clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/minilm_demo.py demo-output/all-MiniLM-L6-v2

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test,bench]" "$(TORCH_PIN)"
	$(PY) benchmarks/export_vs_optimum.py

clean:
	rm -rf $(VENV) demo-output
