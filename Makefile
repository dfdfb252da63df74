# fleetwm: `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch is pinned first: on these machines 2.13.0 is the CPU wheel on disk, while a
# plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wm demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest

# Every benchmark (long: run it on an idle machine; `make bench ONLY=model_fit` runs one), then docs/ and
# README.md's results table rendered from benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
