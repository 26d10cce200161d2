# The two commands of the README:
#   make demo   install everything, then train -> export -> verify on digits
#   make test   install everything, then lint and run the whole test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# Emulated boards for the deploy tests: a serial pty, and a BBC micro:bit in QEMU; Node
# for MicroPython's WebAssembly port, and Chromium, which opens the playground page.
APT_PACKAGES = socat qemu-system-arm firmware-microbit-micropython nodejs npm chromium

.PHONY: install install-boards demo test

install:
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"
	@# MicroPython's WebAssembly port (npm, pinned) where Node is present
	@if command -v npm >/dev/null; then $(PYTHON) -m micromlp.host.webassembly >/dev/null; fi

install-boards:
	@if ! command -v socat >/dev/null || ! command -v qemu-system-arm >/dev/null \
	    || [ ! -f /usr/share/firmware-microbit-micropython/firmware.hex ] \
	    || ! command -v node >/dev/null || ! command -v npm >/dev/null \
	    || ! command -v chromium >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	$(PYTHON) -m micromlp.host.webassembly >/dev/null

demo: install
	micromlp demo

test: install install-boards
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q
