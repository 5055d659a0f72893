# The two commands of the README. Each bootstraps the environment (.venv) it needs, then runs.
#   make search   # main job: NB201 search on the embedded `digits` dataset (configs/search/default.yaml)
#   make test     # full environment (Detectron2 + MMSeg with compiled mmcv ops) + the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers, one per core; a file's tests stay in one worker (module fixtures train once)
PYTEST_WORKERS ?= 2

.PHONY: search test env env-core
search: env-core
	$(PY) genas/search.py $(ARGS)

test: env
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

env-core:
	GENAS_VENV=$(VENV) scripts/bootstrap.sh core

env:
	GENAS_VENV=$(VENV) scripts/bootstrap.sh all
