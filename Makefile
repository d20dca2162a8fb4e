# `make run` and `make test` do all set-up on a fresh machine: a .venv with the package (editable,
# dev extra) and, offline on Debian/Ubuntu, the Fashion-MNIST files from `dataset-fashion-mnist`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench data setup clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Offline, torchvision cannot download Fashion-MNIST; Debian ships the official IDX files.
data:
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
		echo "note: could not install dataset-fashion-mnist; torchvision will try to download instead"; \
	fi

run: setup data
	$(PY) -m cnncomp.train $(ARGS)

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check cnncomp tests
	$(VENV)/bin/ruff format --check cnncomp tests

bench: setup
	$(PY) -m cnncomp.bench $(ARGS)

clean-venv:
	rm -rf $(VENV)
