# The commands the README names. Only Python 3.11 is needed: the first target creates .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test soak demo migrate worker beat web clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

## Start web + worker + beat on the embedded default (or on DATABASE_URL / CELERY_BROKER_URL).
run: $(VENV)/.installed
	$(PY) manage.py migrate --no-input
	$(PY) manage.py ensure_admin
	$(PY) manage.py seed_demo --if-empty
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m project.run start -f Procfile

## Seed, run every workflow once through a real worker in data-flow order, print a table (embedded default).
demo: $(VENV)/.installed
	$(PY) manage.py migrate --no-input
	$(PY) manage.py demo

## Run the whole test suite.
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## Ten minutes of faults on workers and beats in network namespaces (root, PostgreSQL + Redis:
## set DATABASE_URL and CELERY_BROKER_URL). See the module docstrings of tests/reliability/.
soak: $(VENV)/.installed
	SOAK_SECONDS=600 $(PY) -m pytest -m reliability -k soak -s $(PYTEST_ARGS)

migrate: $(VENV)/.installed
	$(PY) manage.py migrate --no-input

clean:
	rm -rf var/broker var/test*.sqlite3*
