# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both install what they need into .venv first (Python 3.11+ is all it takes).
# Another Python: `make test PYTHON=python3.12 VENV=.venv312`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data

.PHONY: install test lint format demo fashion_mnist benchmark benchmark_resnets \
	benchmark_input gpu_wheels study clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

lint: install
	$(VENV)/bin/ruff format --check byol configs experiments tests
	$(VENV)/bin/ruff check byol configs experiments tests

format: install
	$(VENV)/bin/ruff format byol configs experiments tests
	$(VENV)/bin/ruff check --fix byol configs experiments tests

# The tests, and the examples in the library's docstrings.
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 --doctest-modules tests byol

# The main job: pre-train GN+WS BYOL on Fashion-MNIST and compare linear probes.
demo: install fashion_mnist
	$(PY) -m experiments.demo --workdir=workdirs/demo

# Train-step and input-pipeline throughput of the demo config on this machine.
benchmark: install fashion_mnist
	$(PY) -m experiments.benchmark --config=configs/fashion_mnist.py:gn_ws

# ResNet-18 (Imagenette, 128 px) and ResNet-50 (ImageNet, 224 px), BN and
# GN+WS, float32 and bfloat16, on synthetic batches (no dataset needed); one
# JSON per combination in benchmarks/. Small batches: sized for a CPU.
BENCH_BATCH ?= 8
benchmark_resnets: install
	@mkdir -p benchmarks
	@set -e; for cfg in imagenette.py:%s byol.py:epochs=300,norm=%s; do \
		for norm in bn gn_ws; do for dtype in float32 bfloat16; do \
			name=$$(echo "$$cfg" | cut -d. -f1)_$${norm}_$${dtype}; \
			$(PY) -m experiments.benchmark --config=configs/$$(printf "$$cfg" $$norm) \
				--config.model.compute_dtype=$$dtype \
				--config.training.batch_size=$(BENCH_BATCH) --synthetic \
				--steps=2 --windows=2 --json_out=benchmarks/$$name.json; \
		done; done; \
	done

# The JPEG input pipeline, stage by stage, on a folder of generated photo-like
# JPEGs (made once in workdirs/benchmark_input).
benchmark_input: install
	$(PY) -m experiments.benchmark_input

# What a CUDA jax image lacks for experiments/gpu_check.sh (pure-Python
# wheels, ~1 MiB): carry .whl/ to the GPU machine with the checkout.
GPU_WHEELS := dm-haiku==0.0.17 jmp==0.0.4 tabulate==0.10.0 ml-collections==1.1.0 dm-pix==0.4.5
gpu_wheels: install
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .whl $(GPU_WHEELS)
	@ls -la .whl

# The normalisation study at the small scale (docs/study.md): ~21 CPU hours;
# run it again to go on where it stopped.
study: install fashion_mnist
	$(PY) -m experiments.normalization_study --plan=main

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# Fashion-MNIST's four IDX files from the Debian package dataset-fashion-mnist,
# into $(DATA_DIR)/downloads/manual/fashion_mnist/ (tfds's manual-download
# layout); the first `byol.data.load` builds the tfds dataset from them.
# Does nothing when the files are there; runs `apt-get update` (root) only
# when `apt-get download` fails because the package lists are empty.
FASHION_MNIST_DIR := $(DATA_DIR)/downloads/manual/fashion_mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
	t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

fashion_mnist:
	@set -e; \
	missing=0; \
	for f in $(FASHION_MNIST_FILES); do test -s "$(FASHION_MNIST_DIR)/$$f" || missing=1; done; \
	if [ $$missing = 0 ]; then echo "fashion_mnist: files already in $(FASHION_MNIST_DIR)"; exit 0; fi; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if ! (cd "$$tmp" && apt-get download dataset-fashion-mnist); then \
		if ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then \
			echo "fashion_mnist: apt-get download dataset-fashion-mnist failed" >&2; exit 1; \
		fi; \
		if [ "$$(id -u)" != 0 ]; then \
			echo "fashion_mnist: apt package lists are empty; run 'sudo apt-get update' and retry" >&2; exit 1; \
		fi; \
		apt-get update -qq; \
		(cd "$$tmp" && apt-get download dataset-fashion-mnist); \
	fi; \
	dpkg -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/root"; \
	mkdir -p "$(FASHION_MNIST_DIR)"; \
	for f in $(FASHION_MNIST_FILES); do \
		cp "$$tmp/root/usr/share/datasets/fashion-mnist/$$f" "$(FASHION_MNIST_DIR)/"; \
	done; \
	echo "fashion_mnist: wrote $(FASHION_MNIST_FILES) to $(FASHION_MNIST_DIR)"
