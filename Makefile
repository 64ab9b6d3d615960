# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: pipelines-compile venv demo test test-fast lint bench-baselines bench-meta bench-nas bench-hpo bench-serving bench-import bench-train chromium clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[all,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## the main job, end to end on the real flights data: the 6 largest carriers, bootstrap (4 initial) then onboard (2 later), kfp.local, then one served request
demo: $(STAMP)
	$(BIN)/longtail pipelines demo --config configs/demo.yaml

## headless Chromium for the report test (Debian's chromium package)
chromium:
	bash scripts/install-chromium.sh

## every test tier (unit, data, model, slow)
test: $(STAMP) chromium
	$(BIN)/pytest -q

## the quick tiers only
test-fast: $(STAMP) chromium
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check longtail tests bench components pipelines serving feature_repo feature_store monitoring

## baselines on flights: global heavy, SinH, LightGBM global (plain and TPE-tuned) and per scenario, an MLP (QUICK=1 for a short run)
bench-baselines: $(STAMP)
	$(BIN)/python bench/baselines.py $(if $(QUICK),--quick,)

## SinH vs MeH per carrier on flights, LSTM and BERT heavy encoders (QUICK=1: 1 epoch, LSTM only)
bench-meta: $(STAMP)
	$(BIN)/python bench/meta.py $(if $(QUICK),--quick,)

## MeH vs MeL vs Ours per carrier (θu teachers from bench-meta, built first when missing), FLOPs, latency, ablations (QUICK=1: 3 small carriers)
bench-nas: $(STAMP)
	$(BIN)/python bench/nas.py $(if $(QUICK),--quick,)

## RACOS vs TPE vs random (3 seeds) and the Table VI analog: θ0 AUC vs initial carriers (QUICK=1: smaller)
bench-hpo: $(STAMP)
	$(BIN)/python bench/hpo.py $(if $(QUICK),--quick,)

## the serving service on loopback: light vs heavy single requests at 50/200/400 req/s (p50/p99, errors, server CPU), gRPC, forward backends, 1,000 scenarios in one service; then a schemathesis fuzz run (QUICK=1: < 2 min)
bench-serving: $(STAMP)
	$(BIN)/python bench/serving.py $(if $(QUICK),--quick,)

## training rows/s (heavy LSTM, BERT, light supernet, derived light) and preparation time, side by side with 5add9bb (QUICK=1: short)
bench-train: $(STAMP)
	$(BIN)/python bench/train.py $(if $(QUICK),--quick,)

## `longtail data import` on the flights raw files: rows/s from parquet and CSV, hourly vs per-event stamps (QUICK=1: January)
bench-import: $(STAMP)
	$(BIN)/python bench/import.py $(if $(QUICK),--quick,)

## compile bootstrap, onboard and retrain to KFP IR YAML (build/pipelines/)
pipelines-compile: $(STAMP)
	$(BIN)/longtail pipelines compile --out build/pipelines

clean:
	rm -rf runs .pytest_cache
