# Two commands do all the set-up on a fresh machine (see README.md):
#   make run    create .venv, install, train model.npz if there is none, serve it with gunicorn
#   make test   create .venv, install with the test extra, lint, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= model.npz

.PHONY: run test train serve bench clean lock

# The stamps re-run pip when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.runtime

$(MODEL): | $(VENV)/.runtime
	$(BIN)/python -m trainer --out $(MODEL)

run: $(VENV)/.runtime $(MODEL)
	MODEL_PATH=$(MODEL) $(BIN)/gunicorn --config gunicorn.conf.py 'server:create_app()'

train: $(VENV)/.runtime
	$(BIN)/python -m trainer --out $(MODEL)

serve: $(VENV)/.runtime
	MODEL_PATH=$(MODEL) $(BIN)/python -m server

test: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: $(VENV)/.test
	$(BIN)/python -m bench.engine

# requirements.lock: the runtime dependencies the Docker image installs, exact versions with
# hashes, compiled for the image's Python (3.11 on Linux) whatever Python runs here. Run after
# changing dependencies in pyproject.toml (pins that still fit are kept); UPGRADE=1 moves every
# pin to the newest release. tests/test_docker.py fails while the lock and pyproject.toml differ.
lock: $(VENV)/.runtime
	$(BIN)/python -m pip install --quiet 'uv>=0.9'
	$(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	    --python-platform linux $(if $(UPGRADE),--upgrade) -o requirements.lock

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
