# Two commands: `make demo` and `make test`. Each creates .venv if missing, installs torch 2.13.0 first
# (the local CPU build) and then the package, and re-installs only when pyproject.toml changed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechwork-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint bench circuits clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mechwork demo --out demo_out

test: install
	$(VENV)/bin/ruff check mechwork tests benchmarks notebooks
	$(PY) -m pytest; rc=$$?; \
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
