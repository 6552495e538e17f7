# audio-orchestrator: `make run` starts the fleet locally, `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed for the local fleet and the tests; each service adds its own extra in pyproject.toml.
EXTRAS ?= dev,tts,stt,preprocess,llm,flan,bark,guardrails,orchestrator
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma  := ,
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt

.DEFAULT_GOAL := help
.PHONY: help install run stop logs health-check-all test test-unit test-integration docs-config models clean

help:
	@echo "make run               install if needed, start the fleet on 127.0.0.1, print URLs (Ctrl-C stops)"
	@echo "make test              install if needed, run every test"
	@echo "make stop | logs | health-check-all | docs-config | models | clean"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[$(EXTRAS)]"
	$(if $(findstring preprocess,$(EXTRAS)),$(PIP) --no-deps speechbrain)
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

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
	$(BIN)/python scripts/make_models.py --ct2

docs-config: install
	$(BIN)/python scripts/gen_config_docs.py

clean:
	rm -rf $(VENV) .run .pytest_cache
