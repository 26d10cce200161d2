"""`micromlp report`: the HTML page, opened in headless Chromium (Debian's), whose
images must decode and whose screenshot must not be blank."""

from __future__ import annotations

import numpy as np
import pytest
from cdp import Browser, png_pixels
from micromlp.host import verify
from micromlp.host.cli import main


@pytest.mark.slow
def test_report_page_opens_in_chromium_with_every_plot(digits, tmp_path, capsys):
    tr, ex = digits
    page = tmp_path / "report.html"
    rc = main(["report", str(ex.paths["mlp"]), "--float", str(tr.model_path), "--data",
               str(tr.data_path), "--vm", "unix", "-o", str(page)])
    out = capsys.readouterr().out
    assert rc == 0 and f"wrote {page}" in out and out.rstrip().endswith("OK")
    text = page.read_text()
    assert "<script" not in text and "http" not in text.split("<body>")[1]  # self-contained
    rep = verify.verify(ex.paths["mlp"], tr.data_path, tr.model_path, ("unix",), layers=True)
    b = Browser()
    try:
        b.open(page.as_uri())
        b.wait_for("document.title.startsWith('micromlp report') && document.images.length"
                   " > 0 && Array.from(document.images).every(i => i.complete)")
        sizes = b.eval("Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                       "i.naturalHeight])")
        heads = b.eval("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        cells = b.eval("Array.from(document.querySelectorAll('table tr')).slice(1).map("
                       "r => Array.from(r.cells).map(c => c.textContent))")
        png = b.screenshot(tmp_path / "report.png")
    finally:
        b.close()
    # scatter, per-layer bars, activations, confusion (no input clipped on digits)
    assert len(sizes) == 4 and all(ok and w > 200 and h > 100 for ok, w, h in sizes), sizes
    for h in ("Fixed point against float", "Per layer", "Activations", "Confusion matrix",
              "Layer table"):
        assert h in heads
    # the page's per-layer table is verify's
    assert len(cells) == len(ex.model.layers)
    for row, r in zip(cells, rep.layers, strict=True):
        assert row[1] == r["shape"] and float(row[2]) == pytest.approx(r["sqnr_db"], abs=0.05)
        assert row[8] == f"{r['levels_used']} / {r['grid_levels']}"
    pixels = png_pixels(png)
    assert len(set(pixels)) > 50 and pixels.count(255) < 0.98 * len(pixels)  # not blank


def test_report_names_bad_data(digits, tmp_path, capsys):
    tr, ex = digits
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 5)))
    rc = main(["report", str(ex.paths["mlp"]), "--float", str(tr.model_path), "--data",
               str(bad), "--vm", "cpython", "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "64" in err and "5" in err, err
    assert not (tmp_path / "r.html").exists()
