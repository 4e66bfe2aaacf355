VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test backfill

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest

# Usage: make backfill SOURCE="https://www.youtube.com/@handle/videos" ARGS="--limit 10"
backfill: install
	$(BIN)/ingest backfill $(SOURCE) $(ARGS)
