# Two entry points on a fresh machine (no root, offline data):
#   make quickstart   set up .venv, train the quickstart model on the shipped Fashion-MNIST sample,
#                     evaluate it, write samples and a swap grid to runs/quickstart/
#   make test         set up .venv and run the test suite (what .ci/run calls)
#   make bench        the speed/memory benchmark against normflows' Glow (bench/benchmark.py)
#   make docs         build the documentation site into site/ (mkdocs, strict: a broken link or page fails)
#   make gpu-check    on a CUDA machine: tests, speed, memory, roofline and torchrun in ~6 minutes (bench/gpu_check.py)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/quickstart

.PHONY: setup test test-fast quickstart bench docs gpu-check gpu-check-cpu gpu-vendor-normflows clean

$(BIN)/.installed: pyproject.toml requirements/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements/cpu.txt
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

setup: $(BIN)/.installed

$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[docs]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

quickstart: setup
	$(BIN)/flowvae train --config configs/quickstart.yaml --out $(RUN) --resume
	$(BIN)/flowvae evaluate --checkpoint $(RUN)
	$(BIN)/flowvae sample --checkpoint $(RUN) --n 64 --temperature 0.7 --out $(RUN)/samples.png
	$(BIN)/flowvae swap --checkpoint $(RUN) --n 8 --out $(RUN)/swap.png
	$(BIN)/flowvae reconstruct --checkpoint $(RUN) --n 8 --out $(RUN)/reconstruct.png
	@echo "Three CPU minutes train a model that ranks, not one that draws well: the pictures below come from"
	@echo "the model shipped in the package (pretrained:fashion_mnist: 24,000 steps of configs/fashion_mnist_24k.yaml, about four hours of two threads)."
	$(BIN)/flowvae sample --checkpoint pretrained:fashion_mnist --n 64 --temperature 0.7 --out $(RUN)/pretrained_samples.png
	$(BIN)/flowvae swap --checkpoint pretrained:fashion_mnist --n 8 --out $(RUN)/pretrained_swap.png data.dataset=fashion_mnist_sample
	$(BIN)/flowvae reconstruct --checkpoint pretrained:fashion_mnist --n 8 --out $(RUN)/pretrained_reconstruct.png data.dataset=fashion_mnist_sample
	@echo "quickstart done: see $(RUN)/ (samples.png, swap.png, reconstruct.png, eval_k16.json from your 3-minute model;"
	@echo "pretrained_{samples,swap,reconstruct}.png from the shipped one; tensorboard --logdir $(RUN)/tb)"

# The documentation site: docs/ + mkdocs.yml -> site/; the CLI and API references are generated from the code
docs: $(BIN)/.docs-installed
	$(BIN)/mkdocs build --strict --site-dir site

# Speed and memory of flowvae's Glow, its hybrid and normflows' Glow of the same size (docs/benchmarks.md)
bench: setup
	$(BIN)/python bench/benchmark.py --out bench/results.json

# The GPU session: one command, results in $(GPU_OUT)/gpu_check.{json,md}. It runs with the machine's own python
# (its CUDA build of torch; no venv, no network). normflows (the comparison Glow and the flow prior) is not in
# GPU images: bring it, prepared where the network is, as a wheel:  pip download normflows --no-deps -d wheels/
# or, offline, as the package copied from this venv:               make gpu-vendor-normflows
GPU_PY ?= python3
GPU_OUT ?= bench/results/gpu_check
gpu-check:
	@if $(GPU_PY) -c "import normflows" 2>/dev/null; then echo "normflows: installed"; \
	elif ls wheels/normflows-*.whl >/dev/null 2>&1; then $(GPU_PY) -m pip install --no-deps --no-index --find-links wheels normflows; \
	elif [ -d wheels/normflows ]; then echo "normflows: from wheels/normflows"; \
	else echo "normflows: not in wheels/ (see the Makefile); its rows will be skipped"; fi
	PYTHONPATH=$(CURDIR)/wheels$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) bench/gpu_check.py --device cuda --out $(GPU_OUT)

gpu-vendor-normflows: setup
	mkdir -p wheels && cp -r "$$($(BIN)/python -c 'import normflows, os; print(os.path.dirname(normflows.__file__))')" wheels/

# The same stages at tiny sizes on CPU (what tests/test_gpu_check.py runs)
gpu-check-cpu: setup
	$(BIN)/python bench/gpu_check.py --device cpu --quick --out runs/gpu_check_cpu

clean:
	rm -rf $(VENV) runs site
