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

.PHONY: demo test bench env clean browser

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test]" "$(TORCH_PIN)"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/minilm_demo.py demo-output/all-MiniLM-L6-v2

test: $(VENV)/.installed browser
	$(PY) -m pytest

# The HTML report tests open pages in Debian's headless Chromium; installed here when missing
# and this is a Debian machine where we may (root). Elsewhere those tests say what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
		echo "note: chromium is not installed; the HTML report tests will fail (apt-get install chromium)"

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[test,bench]" "$(TORCH_PIN)"
	$(PY) benchmarks/export_vs_optimum.py
	$(PY) benchmarks/dynamo_vs_torchscript.py

clean:
	rm -rf $(VENV) demo-output
