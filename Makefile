# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-cluster test lint unit e2e bench venv system-deps clean

demo: venv system-deps
	$(BIN)/python -m pynet.demo

# The cluster journey on local EC2-like hosts: two chat hosts and a Redis host provisioned by
# site.yml; clients on different hosts talk; Redis restarted; `fab deploy` of a new release, one
# chat host at a time, under connected clients; a chat host removed while a client moves to the
# other (docs/cluster.md).
demo-cluster: venv system-deps
	$(BIN)/python -m pytest -s -q -p no:cacheprovider tests/ansible/test_cluster_e2e.py

# Lint runs inside the tests too (tests/test_lint.py).
test: venv system-deps
	$(BIN)/python -m pynet.local engine
	$(BIN)/pytest

# The fast part: no Docker engine needed.
unit: venv
	$(BIN)/pytest -m "not e2e and not molecule"

e2e: venv system-deps
	$(BIN)/pytest -m "e2e or molecule"

# The one list of checks (scripts/lint.py), also run by tests/test_lint.py and pre-commit.
lint: venv
	$(BIN)/python scripts/lint.py

bench: venv system-deps
	$(BIN)/python -m bench.chat_load
	$(BIN)/python -m bench.idle_connections
	$(BIN)/python bench/deploy_bench.py

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip==26.3"
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

system-deps:
	@bash scripts/system-deps.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
