# Two entry points on a fresh machine (no root, offline data):
#   make quickstart   set up .venv, train the quickstart model on the shipped Fashion-MNIST sample,
#                     evaluate it, write samples and a swap grid to runs/quickstart/
#   make test         set up .venv and run the test suite (what .ci/run calls)
#   make bench        the speed/memory benchmark against normflows' Glow (bench/benchmark.py)
#   make docs         build the documentation site into site/ (mkdocs, strict: a broken link or page fails)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/quickstart

.PHONY: setup test test-fast quickstart bench docs clean

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
	@echo "the model shipped in the package (pretrained:fashion_mnist, trained an hour by the same code)."
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

clean:
	rm -rf $(VENV) runs site
