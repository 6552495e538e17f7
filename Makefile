# audio-orchestrator: `make run` starts the fleet locally, `make test` runs every test.
# Python 3.11: lock/ is resolved for it (scripts/lock.py).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every version comes from lock/all.txt (make lock regenerates it); scripts/install_deps.py installs it.
INSTALL_INPUTS := pyproject.toml lock/all.txt lock/build.txt scripts/install_deps.py

.DEFAULT_GOAL := help
.PHONY: help install lock run stop logs health-check-all test test-unit test-integration docs-config models clean

help:
	@echo "make run               install if needed, start the fleet on 127.0.0.1, print URLs (Ctrl-C stops)"
	@echo "make test              install if needed, run every test"
	@echo "make lock              re-resolve lock/*.txt (UPGRADE=<package> or UPGRADE=all moves versions)"
	@echo "make stop | logs | health-check-all | docs-config | models | clean"

$(STAMP): $(INSTALL_INPUTS)
	@rm -f $(STAMP)
	$(PYTHON) scripts/install_deps.py --venv $(VENV) --lock lock/all.txt
	@touch $@

install: $(STAMP)

lock: install
	$(BIN)/python scripts/lock.py $(if $(filter all,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))

run: install
	$(BIN)/python scripts/run_fleet.py

stop:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/run_fleet.py --stop

logs:
	@test -f .run/fleet.log || { echo "no .run/fleet.log: start the fleet with make run"; exit 1; }
	tail -n 200 -F .run/fleet.log

health-check-all:
	@$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/health_check.py --procfile Procfile --timeout 5

test: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m "not integration"

test-integration: install
	$(BIN)/python -m pytest -m integration

models: install
	$(BIN)/python scripts/make_models.py --ct2 $(if $(GGUF),--gguf $(GGUF)) $(if $(SHA256),--sha256 $(SHA256))

docs-config: install
	$(BIN)/python scripts/gen_config_docs.py

clean:
	rm -rf $(VENV) .run .pytest_cache .cache/llama-wheels
