# The README's two commands: `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test test-fast lint typecheck bench

install:
	scripts/install.sh

install-dev:
	scripts/install.sh --dev

# Replays the shipped two-person phone call at real-time pace, on the embedded defaults.
run: install
	$(BIN)/emomon run --source file:tests/data/phone-call-2spk.wav --num-speakers 2 --realtime

test: install-dev
	$(BIN)/ruff check streamer model services tests benchmarks
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q tests/unit

lint: install-dev
	$(BIN)/ruff check streamer model services tests benchmarks
	$(BIN)/ruff format --check streamer model services tests benchmarks

# mypy reads a regular (non-editable) install, where the emomon.* names resolve as for users.
typecheck: install-dev
	rm -rf build/typecheck && $(BIN)/pip install -q --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p emomon.streamer -p emomon.services -p emomon.model

bench: install-dev
	$(BIN)/python benchmarks/bench_pipeline.py
