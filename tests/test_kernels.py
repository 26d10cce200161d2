"""The kernels are twins: the native one is the portable one, line for line."""

from __future__ import annotations

import ast
from pathlib import Path

from micromlp.host import vms


def _body(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return [ast.dump(stmt) for stmt in fn.body]


def test_native_kernel_is_the_portable_kernel():
    files = {f.stem: f for f in vms.firmware_files()}
    engine, fast = files["micromlp_portable"], files["micromlp_viper_layers"]
    portable = _body(engine, "linear")
    native = _body(fast, "linear_native")
    # the only difference allowed: the accumulator list's name
    norm = [s.replace("_ACC_N", "_ACC") for s in native]
    assert norm == portable


def _slots(path: Path) -> dict[str, int]:
    # the module's `_NAME = const(N)` assignments
    tree = ast.parse(path.read_text())
    return {n.targets[0].id: n.value.args[0].value for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
            and getattr(n.value.func, "id", "") == "const"
            and isinstance(n.targets[0], ast.Name)}


def test_the_parameter_slots_agree_in_every_module():
    # q's slots are named in each module that reads q (const() is per module): every
    # name a module defines has micromlp_net's number
    files = {f.stem: f for f in vms.firmware_files()}
    net = _slots(files["micromlp_net"])
    assert net["_Q"] == 16 and len(net) >= 17
    for stem in ("micromlp_load", "micromlp_build", "micromlp_portable", "micromlp_stream",
                 "micromlp_viper", "micromlp_viper_layers"):
        slots = {k: v for k, v in _slots(files[stem]).items() if k in net}
        assert slots, stem
        assert slots == {k: net[k] for k in slots}, stem


def test_engine_uses_only_old_micropython_syntax():
    for f in vms.firmware_files(viper=False):  # viper needs a newer port anyway
        _check_old_syntax(f.read_text())


def _check_old_syntax(source: str) -> None:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        assert not isinstance(node, ast.JoinedStr), "f-strings need MicroPython 1.17+"
        assert not isinstance(node, ast.NamedExpr), "no := on old MicroPython"
        assert not isinstance(node, (ast.AnnAssign,)), "no variable annotations"
