# The two set-up commands (see README): `make app` and `make test`. Both create .venv on first use and
# reinstall only when a requirements file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501
ADDRESS ?= localhost

.PHONY: app test bench

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
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --server.address $(ADDRESS)

test: $(VENV)/.req-dev
	bash scripts/ensure_chromium.sh
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

bench: $(VENV)/.req-dev
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
