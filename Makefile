# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test install install-test chromium migrate seed serve lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP) chromium

# Debian's chromium for the browser tests (never a browser download: there is no internet here).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-wqy-microhei >/dev/null; \
	  else echo "chromium is missing and cannot be installed here: browser tests will $${CI:+fail}$${CI:-skip}"; fi; \
	fi

migrate: $(STAMP)
	$(VENV)/bin/cloudhall db upgrade

seed: migrate
	$(VENV)/bin/cloudhall seed

run: seed
	$(VENV)/bin/cloudhall serve

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var tests/artifacts .pytest_cache
