# The two set-up commands (see README): `make app` and `make test`. Both create .venv on first use and
# reinstall only when a requirements file changes. `make serve HOST=0.0.0.0` serves a team (sign-in required).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
ADDRESS ?= localhost
HOST ?= 127.0.0.1

.PHONY: app serve test bench

$(VENV)/.req-app: requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	# pip cannot say --no-deps for one line of a requirements file: these packages get their own step
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.req-dev: $(VENV)/.req-app requirements-dev.txt requirements-cluster.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

app: $(VENV)/.req-app
	$(PY) -m lora_core serve --host $(ADDRESS) --port $(PORT)

serve: $(VENV)/.req-app
	$(PY) -m lora_core serve --host $(HOST) --port $(PORT)

test: $(VENV)/.req-dev
	bash scripts/ensure_chromium.sh
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

bench: $(VENV)/.req-dev
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
