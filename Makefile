# RadTrack: `make demo` sets up and serves a demo on 127.0.0.1:8000; `make test` runs the suite;
# `make run-prod` runs the production processes of one machine (Procfile; docs/deploy.md).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= var/demo-cohort
DEMO_PATIENTS ?= 16
DEMO_TIMEPOINTS ?= 3
# Patients processed before the site opens; the rest are processed behind it.
DEMO_FIRST_PATIENTS ?= 2
HOST ?= 127.0.0.1
PORT ?= 8000
# Processes `make test` runs the suite on (pytest-xdist); each test database is its own.
TEST_WORKERS ?= 2

# The static files as served (hashed, compressed), collected again when a source changes.
STATIC_MANIFEST := $(or $(RADTRACK_DATA_DIR),var)/static/staticfiles.json

.PHONY: install demo test lint format serve run-prod clean

install: $(VENV)/.installed

# torch goes in first, pinned to the CPU build found on disk here; the project's own
# range (pyproject.toml) is satisfied by it, so nothing pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "torch==2.13.0"
	# nnU-Net v2 without its timm/torchvision (pyproject.toml, extra "models", says why)
	$(BIN)/pip install --quiet --no-deps "nnunetv2==2.8.1" "dynamic-network-architectures==0.4.4"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: install $(STATIC_MANIFEST)
	$(BIN)/python manage.py migrate --no-input -v0
	$(BIN)/python manage.py create_demo_user
	test -f $(DEMO_DIR)/truth.json || $(BIN)/python manage.py generate_cohort $(DEMO_DIR) \
		--patients $(DEMO_PATIENTS) --timepoints $(DEMO_TIMEPOINTS) --seed 7 --size small
	$(BIN)/python manage.py ingest --no-process $(DEMO_DIR)/dicom
	$(BIN)/python manage.py import_ehr $(DEMO_DIR)/ehr_bundle.json
	for id in $$($(BIN)/python -c "import json, sys; print(*[p['patient_id'] for p in \
		json.load(open(sys.argv[1]))['patients'][:int(sys.argv[2])]])" \
		$(DEMO_DIR)/truth.json $(DEMO_FIRST_PATIENTS)); do \
		$(BIN)/python manage.py process --patient $$id || exit 1; done
	@echo "The rest is processed behind the site (log: $(DEMO_DIR)/worker.log); the risk"
	@echo "model is fitted when it is done. The worklist and /pipeline/ show the progress."
	@setsid sh -c '$(BIN)/python manage.py process --all && $(BIN)/python manage.py fit_risk_model --model cox' \
		>$(DEMO_DIR)/worker.log 2>&1 & worker=$$!; \
	trap 'kill -- -$$worker 2>/dev/null' EXIT INT TERM; \
	$(MAKE) --no-print-directory serve

$(STATIC_MANIFEST): $(VENV)/.installed $(shell find radtrack/static -type f)
	$(BIN)/python manage.py collectstatic --no-input -v0

# The development server, with static files served by WhiteNoise as in production.
serve: install $(STATIC_MANIFEST)
	@echo "RadTrack at http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	$(BIN)/python manage.py runserver $(HOST):$(PORT) --noreload

# Web (gunicorn), worker, beat and the DICOM listener on this machine (Procfile, honcho),
# on Redis at CELERY_BROKER_URL; web on $(PORT), the listener on DICOM_PORT.
run-prod: export CELERY_BROKER_URL ?= redis://127.0.0.1:6379/0
run-prod: export DICOM_PORT ?= 11112
run-prod: export HOST := $(HOST)
run-prod: install $(STATIC_MANIFEST)
	$(BIN)/python manage.py migrate --no-input -v0
	$(BIN)/honcho start --no-colour -f Procfile -p $(PORT)

test: install
	$(BIN)/pytest -n $(TEST_WORKERS)

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
