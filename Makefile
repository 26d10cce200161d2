# The two commands of the README:
#   make demo   install everything, then train -> export -> verify on digits
#   make test   install everything, then lint and run the whole test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install install-boards demo test screenshot native

install:
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
	@# MicroPython's WebAssembly port (npm, pinned) where Node is present
	@if command -v npm >/dev/null; then $(PYTHON) -m micromlp.host.webassembly >/dev/null; fi

# The emulated boards' tools from Debian, only those missing (host/boards/tools.py; as
# root), then a check that apt resolves a fresh machine's request; the WebAssembly port.
install-boards:
	$(PYTHON) -m micromlp.host.boards.tools install
	$(PYTHON) -m micromlp.host.boards.tools check
	$(PYTHON) -m micromlp.host.webassembly >/dev/null

demo: install
	micromlp demo

test: install install-boards
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

# The README's playground picture (docs/playground.png), from the playground test's run
screenshot: install install-boards
	MICROMLP_SCREENSHOT=1 $(PYTHON) -m pytest -q tests/test_playground.py -k page

# firmware/native/<arch>/micromlp_c.mpy from firmware/native/micromlp_c.c, for every
# architecture whose compiler is here (tests/test_native.py checks the committed ones)
native:
	$(PYTHON) -m micromlp.host.boards.native build
