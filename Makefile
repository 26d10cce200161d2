# The two commands of the README:
#   make demo   install everything, then train -> export -> verify on digits
#   make test   install everything, then lint and run the whole test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install demo test

install:
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"

demo: install
	micromlp demo

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q
