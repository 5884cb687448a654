# tac2sol — two commands do all the set-up on a fresh machine:
#   make run    the local tour (CPU, tiny model, real QLoRA training end to end)
#   make test   the whole suite (installs tools, starts the servers the tests use)
SHELL := /bin/bash
# The repository's operator/ directory would shadow the stdlib `operator` module for any
# `python -m`/`-c` run from here: never put the working directory on sys.path.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# requirements.lock pins every Python package (with hashes) of these extras: `make lock`.
LOCK := requirements.lock
LOCK_EXTRAS := operator trainer laptop-model dev
PYTEST_ARGS ?=

.PHONY: venv lock run test test-fast lint typecheck tools generate check-generated cluster-up cluster-down cluster-demo images bench clean

# What the suite was tested with is what gets installed: the lock first (hash-checked, so
# every package must be in it; --no-deps: the lock is the whole set, and the dependencies
# hack/lock-excludes.txt leaves out stay out), then the project itself without resolving again.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -P -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

# lock: re-resolve requirements.lock after a change to pyproject.toml's dependencies, keeping
# every other pin; `make lock UPGRADE=1` moves all pins to the newest versions allowed.
lock: venv
	$(BIN)/uv pip compile --quiet pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) --universal \
		--python-version 3.11 --generate-hashes --custom-compile-command 'make lock' \
		--excludes hack/lock-excludes.txt \
		$(if $(UPGRADE),--upgrade) -o $(LOCK)

run: venv
	$(BIN)/tac2sol run runs/tiny-local.yaml

# tools: system packages and binaries the suite uses (etcd, kube-*, kwok, training-operator, Trainer v2, JobSet,
# helm, prometheus), each built or installed once and cached under ~/.cache/tac2sol by version.
tools:
	bash hack/install-tools.sh

test: venv tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	bash hack/mypy.sh
	$(BIN)/pytest $(PYTEST_ARGS)

# test-fast: no installed tools (`tools` covers the k8s, prom and image tests), no training runs.
test-fast: venv
	$(BIN)/pytest -m "not tools and not dist and not slow" $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	bash hack/mypy.sh

generate: venv
	bash hack/generate.sh

cluster-up: venv tools
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

cluster-demo: venv tools
	bash hack/cluster-demo.sh

images:
	bash hack/images.sh

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info out
