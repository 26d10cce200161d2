"""Fuzzing the model file: hypothesis mutates fields of valid models, CRC recomputed.

Every mutated file goes through the host loader and every board loader (host/fuzz.py):
the full engine in RAM and streaming and the tiny engine on the 64-bit unix port, and
both engines on the 32-bit WASI port with the heap locked. Each must refuse with a named
error (the full engine with the host's very words) or run bit-exact with the host
reference, inputs past any machine word included; no value may reach 2**30.

CI runs a few derandomized batches; MICROMLP_FUZZ_EXAMPLES=N runs more, and
`micromlp fuzz -n 20000` is the long campaign (docs/robustness.md).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from micromlp.host import fuzz

CORPUS = Path(__file__).parent / "corpus"
BATCH = 30
BASES = fuzz.base_models()
SPOTS = {name: fuzz.fields(data) for name, data in BASES.items()}


def _value(fmt: str, current):
    """A value for a field: one of the interesting ones, or anything of its type."""
    if fmt == "<f":
        anything = st.floats(width=32, allow_nan=True, allow_infinity=True)
    else:
        anything = st.integers(*fuzz._LIMITS[fmt])
    return st.one_of(st.sampled_from(fuzz.candidates(fmt, current)), anything)


@st.composite
def edits(draw, name: str) -> tuple[bytes, str]:
    """One to three field edits of a valid model, the CRC recomputed."""
    data = BASES[name]
    out, what = data, []
    for spot in draw(st.lists(st.sampled_from(SPOTS[name]), min_size=1, max_size=3)):
        (cur,) = struct.unpack_from(spot.fmt, data, spot.offset)
        value = draw(_value(spot.fmt, cur))
        out = fuzz.put(out, spot, value)
        what.append(f"{spot.name} = {value!r}")
    return out, "; ".join(what)


@st.composite
def batches(draw) -> tuple[str, list[bytes], list[str]]:
    name = draw(st.sampled_from(sorted(BASES)))
    files, muts = [], []
    for _ in range(BATCH):
        if draw(st.integers(0, 4)):
            data, what = draw(edits(name))
        else:  # the structural kinds: understated bounds, consistent resizes, cuts
            import random

            data, m = fuzz.mutate(BASES[name], random.Random(draw(st.integers(0, 2**32))),
                                  SPOTS[name])
            what = str(m)
        files.append(data)
        muts.append(what)
    return name, files, muts


@settings(max_examples=int(os.environ.get("MICROMLP_FUZZ_EXAMPLES", "4")), deadline=None,
          derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(batches())
def test_mutated_files_are_refused_by_name_or_run_bit_exact_everywhere(batch):
    name, files, muts = batch
    report = fuzz.check_batch(name, files, muts, fuzz.inputs_for(BASES[name]))
    assert not report.findings, str(report)
    assert report.counts[("host", "crashed")] == 0


def test_the_regression_corpus_is_complete():
    # every class the adversarial review found, as a file (regenerate with
    # fuzz.regression_cases; a crash the fuzz finds goes here too)
    names = {p.stem for p in CORPUS.glob("*.mlp")}
    assert set(fuzz.regression_cases(BASES)) <= names


def test_regression_corpus():
    # every file was a crash or a silent wrong answer once; now the loaders agree on
    # each (one batch per base model's inputs; a finding names the file)
    paths = sorted(CORPUS.glob("*.mlp"))
    assert len(paths) >= 20
    data = [p.read_bytes() for p in paths]
    report = fuzz.check_batch("corpus", data, [p.stem for p in paths],
                              fuzz.inputs_for(BASES["relu8"]))
    assert not report.findings, str(report)
    # only the valid control runs; every other file is refused by every loader
    assert report.counts[("host", "ran")] == sum(p.stem.endswith("-ok") for p in paths)
