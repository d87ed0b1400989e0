# Two commands on a fresh machine with only Python 3.10+:
#   make demo   export the bundled all-MiniLM-L6-v2 and use it through Optimum
#   make test   run the test suite in both supported environments
# Each creates the environments it needs first. torch is pinned before anything else resolves: a
# looser requirement resolved first would pull a multi-GB CUDA build.
#   .venv      transformers 4.57 with Optimum (optimum-onnx 0.1 requires transformers<4.58)
#   .venv-tf5  the newest transformers 5, without Optimum

PYTHON ?= python3
VENV ?= .venv
VENV5 ?= .venv-tf5
PY := $(VENV)/bin/python
PY5 := $(VENV5)/bin/python
TORCH_PIN := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-tf5 test-optimum bench env env-tf5 clean browser

env: $(VENV)/.installed
env-tf5: $(VENV5)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,optimum]" "$(TORCH_PIN)"
	touch $@

$(VENV5)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV5)
	$(PY5) -m pip install --quiet "$(TORCH_PIN)"
	$(PY5) -m pip install --quiet -e ".[test]" "$(TORCH_PIN)" "transformers>=5,<6"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/minilm_demo.py demo-output/all-MiniLM-L6-v2

# Both environments; the Optimum one also loads, in Optimum's classes, folders exported under
# transformers 5 (MODELEXPORT_TF5_PYTHON: the cross-environment tests).
test: test-tf5 test-optimum

test-tf5: $(VENV5)/.installed browser
	$(PY5) -m pytest

test-optimum: $(VENV)/.installed $(VENV5)/.installed browser
	MODELEXPORT_TF5_PYTHON=$(abspath $(PY5)) $(PY) -m pytest

# The HTML report tests open pages in Debian's headless Chromium; installed here when missing
# and this is a Debian machine where we may (root). Elsewhere those tests say what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
		echo "note: chromium is not installed; the HTML report tests will fail (apt-get install chromium)"

bench: $(VENV)/.installed
	$(PY) benchmarks/export_vs_optimum.py
	$(PY) benchmarks/dynamo_vs_torchscript.py

clean:
	rm -rf $(VENV) $(VENV5) demo-output
