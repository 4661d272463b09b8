# Two commands from a fresh clone: `make quickstart` (the main job) and `make test` (the suite).
# Both build .venv from requirements.txt first; nothing depends on what is installed globally.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Ray token authentication stays on (Ray 2.60's default for a local `ray.init()`, which keeps its token in
# ~/.ray/auth_token); `RAY_AUTH_MODE=disabled make ...` is the opt-out, never a default here.

.PHONY: venv quickstart test compose-tool lint bench reproduce clean secrets

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Search the quick-start space on a local Ray (MLflow in ./mlflow.db), then write the best trial's
# device menus. --resume: a second run continues (or re-reports) the same study.
quickstart: $(STAMP)
	$(BIN)/gatesearch search --space search_spaces/quickstart.yaml --resume

# Debian's docker-compose validates docker-compose.yml without an engine; install it where we can
# (root + apt), else tests/test_jobs.py skips that one check and says so.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null 2>&1; } || \
	  echo "note: docker-compose not installed; the compose-file test will be skipped"

test: $(STAMP) compose-tool
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check gatesearch tests benchmarks jobs

# Issue #16's CIFAR-10 table (TABLE=stage) or issue #24's block-gating table, 3 seeds per recipe
# (TABLE=block) in the background: two workers, one thread and one core each, `nice`d; they split the
# runs (benchmarks/reproduce_cifar.py: running.pid), resume killed ones, skip finished ones. setsid: the
# workers outlive the shell (or agent job) that started them, whose process group may be ended with it.
# Logs: outputs/reproduce[_block]_worker{1,2}.log; then `python benchmarks/render_results.py`.
CIFAR10_ROOT ?= ../shared/data/cifar10
TABLE ?= stage
REPRODUCE_LOG = outputs/reproduce$(if $(filter stage,$(TABLE)),,_$(TABLE))_worker
reproduce: $(STAMP)
	@mkdir -p outputs
	@for w in 1 2; do \
	  setsid nohup nice -n 10 env OMP_NUM_THREADS=1 $(BIN)/python benchmarks/reproduce_cifar.py --table $(TABLE) \
	    --data-root $(CIFAR10_ROOT) > $(REPRODUCE_LOG)$$w.log 2>&1 < /dev/null & \
	  echo "worker $$w: pid $$!, log $(REPRODUCE_LOG)$$w.log"; sleep 3; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/skip_speed.py

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs ray_results

# The compose stack's secrets: .env from .env.example with every change-me-* placeholder replaced by a fresh
# random token, readable by you only. Refuses to overwrite an existing .env.
secrets:
	@test ! -e .env || { echo "make secrets: .env exists; not overwritten (remove it first)" >&2; exit 2; }
	@umask 077 && $(PY) -c "import re, secrets; text = open('.env.example').read(); \
	open('.env', 'w').write(re.sub(r'change-me-[A-Za-z0-9-]*', lambda m: secrets.token_hex(32), text))"
	@echo "wrote .env (mode 0600) with fresh secrets"
