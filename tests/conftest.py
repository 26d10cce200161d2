"""Session fixtures: the default digits model, trained and exported once."""

from __future__ import annotations

import pytest
from micromlp.export.exporter import export_checkpoint
from micromlp.host.train import train


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The README's default: digits, hidden 32,16, 60 epochs, seed 0; exported."""
    out = tmp_path_factory.mktemp("digits")
    tr = train("digits", [32, 16], out=out / "model.pt", progress=False)
    ex = export_checkpoint(tr.model_path, out)
    return tr, ex
