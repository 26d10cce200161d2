"""The playground page: MicroPython WebAssembly in headless Chromium, driven through the
DevTools protocol, agreeing with the host reference; its screenshot is the README's
(written to docs/ only by `make screenshot`: a test run leaves the tree as it was)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cdp import Browser, png_pixels
from micromlp.host import playground, reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _host(model, values):
    """The host reference's class and integers for the page's float inputs."""
    xq = model.quantize_input(np.array([values], dtype=np.float64))
    out = reference.run(model, xq).out[0]
    return int(np.argmax(out)), [int(v) for v in out]


def _page(b: Browser, key: str):
    return b.eval(f"document.getElementById('{key}').textContent")


@pytest.mark.slow
def test_playground_page_computes_what_the_host_does(digits, tmp_path):
    tr, ex = digits
    model = ex.model
    site = tmp_path / "site"
    playground.build(ex.paths["mlp"], site)
    data = np.load(tr.data_path)
    sample = data["x_test"][3]  # a real digit from the test split
    server, url = playground.serve(site)
    b = Browser()
    try:
        b.open(url + "?x=" + ",".join(f"{v:g}" for v in sample))
        b.wait_for("document.body.dataset.ready === '1'")
        assert _page(b, "selftest") == "self-test: 8/8 match the host reference"
        k, ints = _host(model, sample)
        assert int(_page(b, "prediction")) == k
        assert [int(v) for v in _page(b, "ints").split()] == ints
        assert _page(b, "speed").endswith("µs per inference")
        # draw a stroke on the canvas (the mouse, through DevTools), then check the page's
        # new inputs give what the host gives
        box = b.eval("(() => { const r = document.querySelector('canvas')"
                     ".getBoundingClientRect(); return [r.left, r.top, r.width]; })()")
        left, top, width = box
        b.eval("document.body.dataset.ready = '0'")
        points = [(left + width * (0.3 + 0.4 * t / 10), top + width * (0.2 + 0.6 * t / 10))
                  for t in range(11)]
        b.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0],
               y=points[0][1], button="left", clickCount=1)
        for x, y in points[1:]:
            b.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left",
                   buttons=1)
        b.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0],
               y=points[-1][1], button="left", clickCount=1)
        b.wait_for("document.body.dataset.ready === '1'")
        drawn = b.eval("Array.from(window.playground.values)")
        assert drawn != list(sample)  # the stroke changed the inputs
        k, ints = _host(model, drawn)
        assert int(_page(b, "prediction")) == k
        assert [int(v) for v in _page(b, "ints").split()] == ints
        # the README's screenshot, from this run: the real digit again
        b.call("Page.navigate", url=url + "?x=" + ",".join(f"{v:g}" for v in sample))
        b.wait_for("document.body && document.body.dataset.ready === '1'")
        png = b.screenshot(tmp_path / "playground.png")
    finally:
        b.close()
        server.shutdown()
    pixels = png_pixels(png)
    assert len(set(pixels)) > 50 and pixels.count(255) < 0.98 * len(pixels)  # not blank
    if os.environ.get("MICROMLP_SCREENSHOT"):  # `make screenshot`: the README's picture
        shutil.copy(tmp_path / "playground.png", DOCS / "playground.png")


def test_playground_command_serves_the_folder(digits, tmp_path):
    _, ex = digits
    proc = subprocess.Popen(
        [shutil.which("micromlp"), "playground", str(ex.paths["mlp"]), "-o",
         str(tmp_path / "site"), "--serve", "--port", "0"],
        stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith(f"wrote {tmp_path / 'site'}/")
        url = lines[1].split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/index.html")
        with urllib.request.urlopen(url.replace("index.html", "app.mjs")) as r:
            assert r.headers["Content-Type"].startswith("text/javascript")
        with urllib.request.urlopen(url.replace("index.html", "micropython.wasm")) as r:
            assert r.headers["Content-Type"] == "application/wasm"
            assert r.read(4) == b"\0asm"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
