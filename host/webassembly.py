"""MicroPython's WebAssembly port (the npm package PyScript uses), run by Node.

The same build runs in a browser (`micromlp playground`); here Node loads it with
`loadMicroPython`, copies a folder into its in-memory file system at /work, runs a
script, and passes its output on. `make install` installs the pinned package with npm
into the cache folder (or $MICROMLP_WEBASSEMBLY): `python -m micromlp.host.webassembly`
does the same.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "@micropython/micropython-webassembly-pyscript"
VERSION = "1.27.0"

# Node side: load the port, copy the folder in, run the script; a Python exception
# ends the process with status 1 after its traceback.
RUNNER = r"""
import fs from "fs";
import path from "path";
import { pathToFileURL } from "url";
const [pkg, dir, script, heap] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(path.join(pkg, "micropython.mjs")));
const mp = await loadMicroPython({ heapsize: Number(heap), linebuffer: false,
  stdout: (d) => process.stdout.write(d), stderr: (d) => process.stderr.write(d) });
mp.FS.mkdir("/work");
for (const f of fs.readdirSync(dir)) {
  mp.FS.writeFile("/work/" + f, fs.readFileSync(path.join(dir, f)));
}
try {
  mp.runPython(fs.readFileSync(script, "utf8"));
} catch (e) {
  process.stderr.write(String(e && e.message ? e.message : e) + "\n");
  process.exit(1);
}
"""


class WebAssemblyError(RuntimeError):
    """Node or the package is missing, or the run failed."""


def home() -> Path:
    """Where the package is installed (npm --prefix)."""
    env = os.environ.get("MICROMLP_WEBASSEMBLY")
    return Path(env) if env else Path.home() / ".cache" / "micromlp" / "webassembly"


def package_dir() -> Path:
    """The folder holding micropython.mjs and micropython.wasm, checked."""
    d = home() / "node_modules" / PACKAGE
    meta = d / "package.json"
    if not (d / "micropython.wasm").exists() or not meta.exists() or (
            f'"version": "{VERSION}"' not in meta.read_text()):
        raise WebAssemblyError(
            f"webassembly: {PACKAGE}@{VERSION} is not installed in {home()} (make install "
            f"does it; or: npm install --prefix {home()} {PACKAGE}@{VERSION})")
    return d


def node() -> str:
    exe = shutil.which("node") or shutil.which("nodejs")
    if exe is None:
        raise WebAssemblyError("webassembly: Node.js is not installed (apt-get install nodejs)")
    return exe


def install() -> Path:
    """npm install the pinned package into home(); returns its folder. (A different
    version found there is replaced: package_dir() checks the pin.)"""
    npm = shutil.which("npm")
    if npm is None:
        raise WebAssemblyError("npm is not installed (apt-get install npm)")
    home().mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(home()),
                    f"{PACKAGE}@{VERSION}"], check=True)
    return package_dir()


def run(code: str, folder: Path, heapsize: int = 8 << 20, timeout: float = 600) -> str:
    """Run code on the WebAssembly MicroPython with folder's files at /work; its stdout."""
    pkg = package_dir()
    with tempfile.TemporaryDirectory(prefix="micromlp-webassembly-") as tmp:
        runner, script = Path(tmp) / "run.mjs", Path(tmp) / "main.py"
        runner.write_text(RUNNER)
        script.write_text(code)
        proc = subprocess.run([node(), str(runner), str(pkg), str(folder), str(script),
                               str(heapsize)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "BEGIN" not in proc.stdout:
        raise WebAssemblyError(f"webassembly: micropython exited with {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


if __name__ == "__main__":  # make install: the pinned package, once
    try:
        print(package_dir())
    except WebAssemblyError:
        print(install())
    sys.exit(0)
