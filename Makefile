# tinyvgg: two commands do everything on a fresh machine.
#   make demo   train a narrow VGG-11 on Fashion-MNIST (sets itself up, gets the data)
#   make test   run the whole test suite (sets itself up)
# Both create or reuse the virtual environment .venv and install requirements.txt into it.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
FASHION_DIR := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv fashion-mnist clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

# Fashion-MNIST from Debian's package when we can (root and apt present, offline-friendly);
# otherwise tinyvgg downloads it from the official mirror on first use.
fashion-mnist:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || [ -n "$$TINYVGG_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Fashion-MNIST from Debian's package dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get failed: tinyvgg will try to download Fashion-MNIST instead"; \
	else echo "No Debian package manager as root: tinyvgg will download Fashion-MNIST"; fi

demo: $(STAMP) fashion-mnist
	$(PY) -m tinyvgg demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis lessons/out
