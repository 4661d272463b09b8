# Two commands from a fresh clone: `make quickstart` (the main job) and `make test` (the suite).
# Both build .venv from requirements.txt first; nothing depends on what is installed globally.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test lint bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m gatesearch.quickstart

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -x --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check gatesearch tests benchmarks jobs

bench: $(STAMP)
	$(BIN)/python benchmarks/skip_speed.py

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs ray_results
