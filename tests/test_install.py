"""The boards' install step asks apt only for what is missing, and what it asks for
resolves on a fresh machine (Node and npm from NodeSource, none of the boards' tools)."""

from __future__ import annotations

import shutil

from micromlp.host.boards import tools


def _which(present: set[str]):
    return lambda cmd: f"/usr/bin/{cmd}" if cmd in present else None


def test_a_fresh_machines_request_resolves_with_apt():
    # the boards' tools hidden, as a fresh machine has none of them; Node as it is here
    packages, _ = tools.missing_packages(tools.hidden_which())
    assert {t.package for t in tools.TOOLS if t.command} <= set(packages)
    if shutil.which("node") and shutil.which("npm"):
        assert "nodejs" not in packages and "npm" not in packages
    r = tools.simulate(packages)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_node_and_npm_are_asked_for_only_where_both_are_missing():
    none = set()
    packages, notes = tools.missing_packages(_which(none), tools=())
    assert packages == ["nodejs", "npm"] and not notes
    packages, notes = tools.missing_packages(_which({"node", "npm"}), tools=())
    assert packages == [] and not notes
    packages, notes = tools.missing_packages(_which({"node"}), tools=())
    assert packages == [] and notes == [
        "npm is missing but node is not: install npm from where node came (Debian's "
        "nodejs/npm would conflict with it)"]


def test_only_missing_tools_are_asked_for():
    have = {t.command for t in tools.TOOLS if t.command} | {"node", "npm"}
    files = tuple(t for t in tools.TOOLS if t.path)
    packages, _ = tools.missing_packages(_which(have), tools=tools.TOOLS)
    assert packages == [t.package for t in files if not t.present()]
    packages, _ = tools.missing_packages(_which(have - {"socat"}))
    assert "socat" in packages and "qemu-system-arm" not in packages
