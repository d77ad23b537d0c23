# RadTrack: `make demo` sets up and serves a demo on 127.0.0.1:8000; `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= var/demo-cohort
DEMO_PATIENTS ?= 16
DEMO_TIMEPOINTS ?= 3
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test lint format serve clean

install: $(VENV)/.installed

# torch goes in first, pinned to the CPU build found on disk here; the project's own
# range (pyproject.toml) is satisfied by it, so nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/python manage.py migrate --no-input -v0
	$(BIN)/python manage.py create_demo_user
	test -f $(DEMO_DIR)/truth.json || $(BIN)/python manage.py generate_cohort $(DEMO_DIR) \
		--patients $(DEMO_PATIENTS) --timepoints $(DEMO_TIMEPOINTS) --seed 7 --size small
	$(BIN)/python manage.py ingest --no-process $(DEMO_DIR)/dicom
	$(BIN)/python manage.py import_ehr $(DEMO_DIR)/ehr_bundle.json
	$(BIN)/python manage.py process --all
	$(BIN)/python manage.py fit_risk_model --model cox
	$(MAKE) serve

serve: install
	@echo "RadTrack at http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	$(BIN)/python manage.py runserver $(HOST):$(PORT) --insecure --noreload

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var .pytest_cache test-artifacts
