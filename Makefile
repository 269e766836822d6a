# Two commands: `make demo` and `make test`. Each creates .venv if missing, installs torch 2.13.0 first
# (the local CPU build) and then the package, and re-installs only when pyproject.toml changed.
# `make test` also installs Debian's `chromium` (browser tests, static figure export) where it can: as
# root or with passwordless sudo, with apt-get. Elsewhere those tests are skipped, each with one line
# saying why (tests/conftest.py, fixture chromium_path); under CI (CI set) they fail instead.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechwork-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install system demo test lint bench circuits clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mechwork demo --out demo_out

system:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make: no chromium and no apt-get: the browser and static-export tests will be skipped"; \
	elif [ "$$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then \
	    echo "make: no chromium, and not root nor passwordless sudo to install it: the browser and" \
	         "static-export tests will be skipped (\`sudo apt-get install chromium\` enables them)"; \
	else \
	    SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo -n); \
	    echo "make: installing Debian's chromium (browser tests, static figure export)"; \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends chromium >/dev/null \
	    || echo "make: installing chromium failed: the browser and static-export tests will be skipped"; \
	fi

test: install system
	$(VENV)/bin/ruff check mechwork tests benchmarks notebooks
	$(VENV)/bin/mechwork zoo build  # once, before the two workers (cached in ~/.cache/mechwork afterwards)
	$(PY) -m pytest -n 2 --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check mechwork tests benchmarks notebooks

circuits: install
	$(VENV)/bin/mechwork circuits --out circuits

bench: install
	$(PY) benchmarks/patching.py
	$(PY) benchmarks/discovery.py

clean:
	rm -rf demo_out bench_out .pytest_cache
