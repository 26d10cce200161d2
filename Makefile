# The two commands of the README:
#   make demo   install everything, then train -> export -> verify on digits
#   make test   install everything, then lint and run the whole test suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# Emulated boards for the deploy tests: a serial pty, and a BBC micro:bit in QEMU.
APT_PACKAGES = socat qemu-system-arm firmware-microbit-micropython

.PHONY: install install-boards demo test

install:
	$(PIP) install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]"

install-boards:
	@if ! command -v socat >/dev/null || ! command -v qemu-system-arm >/dev/null \
	    || [ ! -f /usr/share/firmware-microbit-micropython/firmware.hex ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

demo: install
	micromlp demo

test: install install-boards
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q
