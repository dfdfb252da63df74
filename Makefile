# fleetwm: `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean redis-server prometheus

setup: $(STAMP) redis-server prometheus

# The fleet bus (`wm serve` and `wm demo` start their own by default) and its tests need a real
# redis-server (Debian's package). Installed with apt-get when missing and run as root; otherwise this
# says how, the Redis tests skip saying the same, and `wm serve`/`wm demo` say it too (or take --redis none).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else \
	    echo "redis-server is missing: install it (Debian/Ubuntu: sudo apt-get install -y redis-server;" \
	         "macOS: brew install redis), or run make setup as root; until then the Redis tests skip" \
	         "and wm serve / wm demo need --redis none"; \
	  fi; }

# The monitoring tests check the alert rules with promtool and fire them in a real Prometheus (Debian's
# prometheus package has both; the tests start their own server on a free port). Installed with apt-get
# when missing and run as root; otherwise this says how, and those tests skip saying the same.
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	  else \
	    echo "prometheus/promtool are missing: install them (Debian/Ubuntu: sudo apt-get install -y prometheus;" \
	         "macOS: brew install prometheus), or run make setup as root; until then the monitoring tests skip"; \
	  fi; }

# torch is pinned first: on these machines 2.13.0 is the CPU wheel on disk, while a
# plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP) redis-server
	$(BIN)/wm demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP) redis-server prometheus
	$(BIN)/python -m pytest

# Every benchmark (long: run it on an idle machine; `make bench ONLY=model_fit` runs one), then docs/ and
# README.md's results table rendered from benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
