"""`micromlp playground MODEL.mlp -o site/`: the model in a web page, on the board's engine.

The folder holds everything the page needs (no network at view time): MicroPython's
WebAssembly port (micropython.mjs, micropython.wasm, the pinned npm package), the
board's own engine (firmware/micromlp*.py, without viper), the model file, and
data.json (the input table as sliders' ranges, stored test vectors with the host
reference's outputs). The page
loads MicroPython, runs the engine's self-test on the stored vectors ("N/N match the
host reference"), and predicts as the inputs change: a slider or number per feature
over its calibrated range, or a drawing canvas when the inputs form a square image
(digits' 8x8). It shows the class, the probabilities (net.probabilities), the integer
outputs and the µs per inference in the browser. `?x=v1,v2,...` in the URL sets the
inputs on load (tests drive the page that way). ES modules need http: --serve.
"""

from __future__ import annotations

import functools
import http.server
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np

from ..export import modelfile
from ..export.report import input_rows
from . import reference, vms, webassembly


def _vectors(model, n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.integers(model.in_lo, model.in_hi + 1, size=(n, model.n_inputs))
    out = reference.run(model, x).out
    return [{"x": a.tolist(), "out": b.tolist()} for a, b in zip(x, out, strict=True)]


def build(model_path: str | Path, out_dir: str | Path, vectors: int = 8) -> Path:
    """Write the playground folder; returns its index.html."""
    model_path, out = Path(model_path), Path(out_dir)
    model = modelfile.load(model_path)  # checked, as every loader does
    out.mkdir(parents=True, exist_ok=True)
    pkg = webassembly.package_dir()
    for name in ("micropython.mjs", "micropython.wasm"):
        shutil.copy(pkg / name, out / name)
    engine = vms.firmware_files(viper=False)  # no viper on WebAssembly
    for f in engine:
        shutil.copy(f, out / f.name)
    shutil.copy(model_path, out / "model.mlp")
    side = math.isqrt(model.n_inputs)
    data = {
        "name": model_path.name,
        "engine": [f.name for f in engine],
        "n_inputs": model.n_inputs,
        "n_outputs": model.n_outputs,
        "features": [{"lo": r["real_range"][0], "hi": r["real_range"][1], "step": r["scale"]}
                     for r in input_rows(model)],
        "image": side if side * side == model.n_inputs and side >= 4 else None,
        "vectors": _vectors(model, vectors),
    }
    (out / "data.json").write_text(json.dumps(data))
    (out / "app.mjs").write_text(APP)
    (out / "index.html").write_text(INDEX)
    return out / "index.html"


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".json": "application/json"}

    def log_message(self, *args):  # quiet: the URL is what the user needs
        pass


def serve(folder: str | Path, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve folder on 127.0.0.1 (port 0: a free one) in a thread; (server, URL)."""
    handler = functools.partial(_Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>micromlp playground</title>
<style>
body { font: 15px system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }
h1 { font-size: 20px; margin: 0 0 4px; } .sub { color: #666; margin-bottom: 16px; }
#wrap { display: flex; gap: 28px; flex-wrap: wrap; }
#inputs { max-height: 560px; overflow: auto; }
.feat { display: flex; align-items: center; gap: 8px; margin: 3px 0; }
.feat label { width: 84px; color: #555; } .feat input[type=number] { width: 90px; }
canvas { border: 1px solid #888; cursor: crosshair; touch-action: none; }
#result { min-width: 320px; } #prediction { font-size: 40px; font-weight: 600; }
.bar { display: flex; align-items: center; gap: 6px; margin: 2px 0; font-size: 13px; }
.bar div.fill { background: #3b7dd8; height: 12px; } .bar span { width: 24px; }
#selftest { margin-top: 14px; padding: 6px 10px; background: #eef5ee; display: inline-block; }
#selftest.bad { background: #f8e1e1; } .mono { font-family: monospace; font-size: 12px; }
button { margin-top: 6px; }
</style></head>
<body>
<h1>micromlp playground</h1>
<div class="sub">the board's engine (firmware/micromlp.py) running in MicroPython WebAssembly
 in this page; model <span id="model"></span></div>
<div id="wrap">
 <div id="inputs"></div>
 <div id="result">
  <div>class</div><div id="prediction">&hellip;</div>
  <div id="probs"></div>
  <div>integer outputs</div><div id="ints" class="mono"></div>
  <div>speed in this browser: <span id="speed">&hellip;</span></div>
  <div id="selftest">loading MicroPython&hellip;</div>
 </div>
</div>
<script type="module" src="app.mjs"></script>
</body></html>
"""

APP = r"""
import { loadMicroPython } from "./micropython.mjs";

const data = await (await fetch("data.json")).json();
document.getElementById("model").textContent =
  `${data.name}: ${data.n_inputs} inputs, ${data.n_outputs} outputs`;
let lines = [];
const mp = await loadMicroPython({ heapsize: 4 * 1024 * 1024, linebuffer: true,
                                   stdout: (l) => lines.push(l) });
for (const f of data.engine.concat(["model.mlp"])) {
  mp.FS.writeFile(f, new Uint8Array(await (await fetch(f)).arrayBuffer()));
}
function py(code) {  // run code; the lines it printed
  lines = [];
  mp.runPython(code);
  return lines.join("\n");
}
py(`
import micromlp, time, json
from array import array
net = micromlp.load('model.mlp')
out = array('i', bytes(4 * net.n_outputs))
probs = [0.0] * net.n_outputs
`);

// the self-test: the stored vectors against the host reference's integers
const vec = JSON.stringify(data.vectors);
const ok = Number(py(`
ok = 0
for v in json.loads('${vec}'):
    net.run(array('i', v['x']), out)
    ok += list(out) == v['out']
print(ok)
`));
const st = document.getElementById("selftest");
st.textContent = `self-test: ${ok}/${data.vectors.length} match the host reference`;
if (ok !== data.vectors.length) st.className = "bad";

// the inputs: an image canvas for square inputs, else a slider per feature
const values = data.features.map((f) => (f.lo + f.hi) / 2);
const box = document.getElementById("inputs");
const given = new URLSearchParams(location.search).get("x");
if (given) given.split(",").forEach((v, i) => { if (i < values.length) values[i] = Number(v); });
if (data.image) {
  const n = data.image, cell = 36;
  const c = document.createElement("canvas");
  c.width = c.height = n * cell;
  box.append("draw (hold the mouse button):", document.createElement("br"), c);
  const clear = document.createElement("button");
  clear.textContent = "clear";
  box.append(document.createElement("br"), clear);
  if (!given) values.fill(0).forEach((_, i) => values[i] = data.features[i].lo);
  const draw = () => {
    const g = c.getContext("2d");
    values.forEach((v, i) => {
      const f = data.features[i], t = (v - f.lo) / ((f.hi - f.lo) || 1);
      const s = Math.round(255 * (1 - Math.max(0, Math.min(1, t))));
      g.fillStyle = `rgb(${s},${s},${s})`;
      g.fillRect((i % n) * cell, Math.floor(i / n) * cell, cell, cell);
    });
  };
  let down = false;
  const paint = (e) => {
    const r = c.getBoundingClientRect();
    const cx = Math.floor((e.clientX - r.left) / cell), cy = Math.floor((e.clientY - r.top) / cell);
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const x = cx + dx, y = cy + dy;
      if (x < 0 || y < 0 || x >= n || y >= n) continue;
      const i = y * n + x, f = data.features[i], w = dx || dy ? 0.45 : 1;
      values[i] = Math.min(f.hi, values[i] + w * (f.hi - f.lo) * 0.6);
    }
    draw(); predict();
  };
  c.onpointerdown = (e) => { down = true; paint(e); };
  c.onpointermove = (e) => { if (down) paint(e); };
  window.onpointerup = () => { down = false; };
  clear.onclick = () => {
    values.forEach((_, i) => values[i] = data.features[i].lo);
    draw(); predict();
  };
  draw();
} else {
  data.features.forEach((f, i) => {
    const row = document.createElement("div");
    row.className = "feat";
    const lab = document.createElement("label");
    lab.textContent = `feature ${i}`;
    const s = document.createElement("input"), num = document.createElement("input");
    s.type = "range"; num.type = "number";
    for (const el of [s, num]) {
      el.min = f.lo; el.max = f.hi; el.step = f.step;
      el.value = Number(values[i].toPrecision(5));
    }
    s.oninput = () => { values[i] = Number(s.value); num.value = s.value; predict(); };
    num.onchange = () => { values[i] = Number(num.value); s.value = num.value; predict(); };
    row.append(lab, s, num);
    box.append(row);
  });
}

function predict() {
  const r = JSON.parse(py(`
vals = [${values.map((v) => Number(v).toString()).join(",")}]
k = net.predict_float(vals)
net.run(net.x, out)
net.probabilities(out, probs)
n = 200
t = time.ticks_us()
for _ in range(n):
    net.run(net.x, out)
t = time.ticks_diff(time.ticks_us(), t) / n
print(json.dumps({'k': k, 'ints': list(out), 'p': probs, 'us': t}))
`));
  document.getElementById("prediction").textContent = r.k;
  document.getElementById("ints").textContent = r.ints.join(" ");
  document.getElementById("speed").textContent = `${r.us.toFixed(1)} µs per inference`;
  const pb = document.getElementById("probs");
  pb.innerHTML = "";
  r.p.forEach((p, i) => {
    const b = document.createElement("div");
    b.className = "bar";
    const w = Math.round(200 * p);
    b.innerHTML = `<span>${i}</span><div class="fill" style="width:${w}px"></div>` +
                  `${(100 * p).toFixed(1)} %`;
    pb.append(b);
  });
  document.body.dataset.ready = "1";
}
window.playground = { values, predict, data };
predict();
"""


__all__ = ["build", "serve"]
