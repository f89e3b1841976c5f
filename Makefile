# Set-up and entry points. `make demo` and `make test` work on a fresh machine: they create .venv,
# install torch 2.13.0 (the local CPU build) first, then the pinned stack, then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml vlmforge/curation/_jpegdct.c vlmforge/curation/_jpegsplice.c vlmforge/curation/_jpegsplice.h vlmforge/curation/_masks.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import vlmforge.curation._jpegdct" 2>/dev/null || echo "warning: vlmforge's libjpeg extension was not built (install a C compiler and libjpeg-dev, then 'rm $(STAMP)'); the occlusion builder needs --occluded-jpeg reencode until then" >&2
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), 'expected the local torch 2.13.0 CPU build, got ' + torch.__version__"
	! $(BIN)/python -m pip show -q torchvision 2>/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vlmforge build occlusion --source coco --out builds
	$(BIN)/vlmforge manifest query builds/occlusion/2.6.0 "SELECT label, count(*) AS n FROM samples GROUP BY 1 ORDER BY 2 DESC, 1"
	$(BIN)/vlmforge verify builds/occlusion/2.6.0

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/shards.py

clean:
	rm -rf builds .pytest_cache
