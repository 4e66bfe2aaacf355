VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test backfill source-given doctor

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
backfill: source-given install
	$(BIN)/ingest backfill $(SOURCE) $(ARGS)

# Before the install, which takes minutes on a fresh machine.
source-given:
ifndef SOURCE
	@echo 'make backfill needs SOURCE: a channel, playlist, feed URL, file or folder, e.g.' >&2
	@echo '  make backfill SOURCE="https://www.youtube.com/@handle/videos" ARGS="--limit 10"' >&2
	@echo 'Several sources: SOURCE="URL1 URL2". Check the set-up first: make doctor' >&2
	@exit 2
endif

# Checks the database, disk, ffmpeg, yt-dlp and the models before a long run.
doctor: install
	$(BIN)/ingest doctor $(ARGS)
