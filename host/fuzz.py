"""Mutation fuzzing of model files: CRC-valid edits of every field, through every loader.

Each mutated file goes to the host loader (export/modelfile.py), the full engine
(firmware/micromlp.py, in RAM and streaming) and the tiny engine (8-bit models) on
the 64-bit unix port and the 32-bit WASI port, where a value past 2**30 would be a
heap bignum (and the runs hold the heap locked, so it is a MemoryError). The
property: every loader refuses with a named error (the full engine with the host's
very words; the tiny engine at least when the host does) or runs bit-exact with the
host reference on the same inputs, including ints far past the input range.

`micromlp fuzz -n 20000` runs a long campaign; tests/test_fuzz.py drives the same
machinery from hypothesis and replays tests/corpus/.
"""

from __future__ import annotations

import random
import struct
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..export import modelfile
from . import reference, vms

# (name, offset within the header, struct format)
HEADER_FIELDS = [
    ("magic", 0, "<I"), ("version", 4, "<H"), ("header size", 6, "<H"), ("file size", 8, "<I"),
    ("layers", 12, "<H"), ("inputs", 14, "<H"), ("outputs", 16, "<H"), ("widest", 18, "<H"),
    ("in_lo", 20, "<i"), ("in_hi", 24, "<i"), ("out scale", 28, "<f"),
    ("error bound", 32, "<f"), ("reserved", 36, "<I"),
]
LAYER_FIELDS = [
    ("size", 0, "<I"), ("n_in", 4, "<H"), ("n_out", 6, "<H"), ("weight bits", 8, "<B"),
    ("flags", 9, "<B"), ("activation", 10, "<B"), ("reserved 11", 11, "<B"), ("lo", 12, "<i"),
    ("hi", 16, "<i"), ("acc bound", 20, "<I"), ("in scale", 24, "<f"),
    ("out scale", 28, "<f"), ("error bound", 32, "<f"), ("slope mult", 36, "<H"),
    ("slope shift", 38, "<B"), ("reserved 39", 39, "<B"),
]
# inputs for every accepted file: the range's corners, random values in it, and ints
# past any machine word (the engines must clamp them, not wrap them)
BIG = [2**64 + 3, 2**63, -(2**64) - 3, 2**31, -(2**31) - 1, 2**40]


@dataclass(frozen=True)
class Field:
    """One mutable spot of a model file."""

    name: str
    offset: int
    fmt: str


@dataclass
class Mutation:
    """What was done to a file, for the report."""

    kind: str
    field: str = ""
    value: object = None

    def __str__(self) -> str:
        return f"{self.kind} {self.field} = {self.value!r}" if self.field else self.kind


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def fields(data: bytes) -> list[Field]:
    """Every header and layer-header field of a valid file, and its arrays' entries."""
    model = modelfile.from_bytes(data)
    out = [Field("header " + n, o, f) for n, o, f in HEADER_FIELDS]
    n_in = model.n_inputs
    out += [Field(f"in_scale[{i}]", 40 + 4 * i, "<f") for i in range(n_in)]
    out += [Field(f"in_zero[{i}]", 40 + 4 * (n_in + i), "<i") for i in range(n_in)]
    at = 40 + 8 * n_in
    for k, layer in enumerate(model.layers):
        out += [Field(f"layer {k} {n}", at + o, f) for n, o, f in LAYER_FIELDS]
        pos = at + 40
        wsize = layer.w_bits // 8
        nw = layer.n_in * layer.n_out
        out += [Field(f"layer {k} w[{i}]", pos + wsize * i, "<B" if wsize == 1 else "<h")
                for i in range(nw)]
        pos += (nw * wsize + 3) & ~3
        if layer.b is not None:
            out += [Field(f"layer {k} b[{c}]", pos + 4 * c, "<i") for c in range(layer.n_out)]
            pos += 4 * layer.n_out
        out += [Field(f"layer {k} mult[{c}]", pos + 4 * c, "<i") for c in range(layer.n_out)]
        pos += 4 * layer.n_out
        out += [Field(f"layer {k} shift[{c}]", pos + c, "<B") for c in range(layer.n_out)]
        at += modelfile.layer_size(layer.n_in, layer.n_out, layer.w_bits, layer.b is not None)
    return out


_LIMITS = {"<B": (0, 255), "<H": (0, 65535), "<h": (-32768, 32767), "<I": (0, 2**32 - 1),
           "<i": (-(2**31), 2**31 - 1)}


def candidates(fmt: str, current) -> list:
    """Values worth trying in a field: its type's edges, powers of two around the
    engine's limits (2**13..2**16, 2**29..2**31), and the current value's neighbours."""
    if fmt == "<f":
        return [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -current, current * 2,
                current / 2, 1e-45, 3.4e38, 1.0]
    lo, hi = _LIMITS[fmt]
    vals = {lo, hi, 0, 1, current - 1, current + 1, current * 2, current // 2, -current}
    for k in (7, 8, 13, 14, 15, 16, 20, 29, 30, 31):
        vals |= {2**k, 2**k - 1, -(2**k), -(2**k) + 1}
    return sorted(v for v in vals if lo <= v <= hi)


def put(data: bytes, f: Field, value) -> bytes:
    """data with value written into field f, the CRC recomputed."""
    body = bytearray(data[:-4])
    struct.pack_into(f.fmt, body, f.offset, value)
    return with_crc(bytes(body))


def mutate(data: bytes, rng: random.Random, spots: list[Field]) -> tuple[bytes, Mutation]:
    """One CRC-valid mutation of a valid file: a field edit (most), an understated
    accumulator bound with the largest multiplier, a consistent size change, a
    truncation or extension, or random bytes."""
    r = rng.random()
    if r < 0.7:
        f = rng.choice(spots)
        (cur,) = struct.unpack_from(f.fmt, data, f.offset)
        value = rng.choice(candidates(f.fmt, cur)) if rng.random() < 0.8 else (
            rng.uniform(-1e6, 1e6) if f.fmt == "<f" else rng.randint(*_LIMITS[f.fmt]))
        return put(data, f, value), Mutation("field", f.name, value)
    if r < 0.8:  # the review's first finding: a bound understated, a multiplier raised
        k = rng.randrange(len(modelfile.from_bytes(data).layers))
        bound = next(f for f in spots if f.name == f"layer {k} acc bound")
        mults = [f for f in spots if f.name.startswith(f"layer {k} mult[")]
        (cur,) = struct.unpack_from("<I", data, bound.offset)
        new = put(data, bound, max(1, cur // rng.choice([2, 4, 16, 1000])))
        m = rng.choice(mults)
        return put(new, m, rng.choice([16383, 2**20, 2**30 - 1])), Mutation(
            "understated bound", f"layer {k}")
    if r < 0.88:  # consistent: n_out (or n_in) and the size fields changed together
        k = rng.randrange(len(modelfile.from_bytes(data).layers))
        which = f"layer {k} {rng.choice(['n_out', 'n_in'])}"
        f = next(f for f in spots if f.name == which)
        value = rng.choice([1, 2, 1000, 65535])
        new = bytearray(put(data, f, value)[:-4])
        at = f.offset - (4 if f.name.endswith("n_out") else 2) - 2
        n_in, n_out, bits, flags = struct.unpack_from("<HHBB", new, at + 4)
        struct.pack_into("<I", new, at, modelfile.layer_size(n_in, n_out, bits, bool(flags & 1)))
        struct.pack_into("<I", new, 8, len(new) + 4)
        return with_crc(bytes(new)), Mutation("consistent size", f.name, value)
    if r < 0.94:  # cut or grown, the CRC (and maybe the size field) made to match
        body = bytearray(data[:-4])
        if rng.random() < 0.5:
            body = body[: rng.randrange(len(body))]
        else:
            body += bytes(rng.randrange(1, 64))
        if rng.random() < 0.5 and len(body) >= 12:
            struct.pack_into("<I", body, 8, len(body) + 4)
        return with_crc(bytes(body)), Mutation("resized", "", len(body) + 4)
    body = bytearray(data[:-4])
    for _ in range(rng.randint(1, 3)):
        body[rng.randrange(len(body))] = rng.randrange(256)
    return with_crc(bytes(body)), Mutation("random bytes")


def base_models() -> dict[str, bytes]:
    """Small valid models, one per engine feature the fuzz must cover."""
    import torch
    from torch import nn

    from .api import export

    def mlp(sizes, act=nn.ReLU, bias=True, seed=0):
        torch.manual_seed(seed)
        mods = []
        for i in range(len(sizes) - 1):
            mods.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
            if i < len(sizes) - 2:
                mods.append(act())
        return nn.Sequential(*mods).eval()

    x = np.random.default_rng(1).normal(size=(64, 5))
    out = {}
    specs = {
        "relu8": (mlp([5, 6, 3]), {}),
        "w16": (mlp([5, 4, 3]), {"weight_bits": 16, "act_bits": 16}),
        "leaky": (mlp([5, 4, 3], act=lambda: nn.LeakyReLU(0.1)), {}),
        "relu6-nobias": (mlp([5, 4, 3], act=nn.ReLU6, bias=False), {}),
        "ints": (mlp([5, 4, 2], seed=2), {"input_range": (-100, 100)}),
    }
    for name, (module, kw) in specs.items():
        calib = np.round(x * 40) if "input_range" in kw else x
        out[name] = modelfile.to_bytes(export(module, calib=calib, out=None, **kw).model)
    return out


@dataclass
class Outcome:
    """What one loader made of one file: refused (message), ran (outputs) or crashed."""

    kind: str  # "refused", "ran", "crashed"
    text: str = ""
    outputs: list = field(default_factory=list)


def inputs_for(data: bytes, n: int = 4, seed: int = 0) -> list[list[int]]:
    """Input rows for a base model: corners, random values in range, ints past any word."""
    m = modelfile.from_bytes(data)
    rng = np.random.default_rng(seed)
    rows = [[m.in_lo] * m.n_inputs, [m.in_hi] * m.n_inputs]
    rows += rng.integers(m.in_lo, m.in_hi + 1, size=(n, m.n_inputs)).tolist()
    rows.append([BIG[i % len(BIG)] * (-1) ** i for i in range(m.n_inputs)])
    return rows


def host_outcome(data: bytes, rows: list[list[int]]) -> Outcome:
    try:
        model = modelfile.from_bytes(data)
    except modelfile.ModelFileError as e:
        return Outcome("refused", str(e))
    except Exception as e:  # noqa: BLE001 - a crash is what we look for
        return Outcome("crashed", f"{type(e).__name__}: {e}")
    clamped = [[min(max(v, model.in_lo), model.in_hi) for v in row] for row in rows]
    try:
        out = reference.run(model, np.array(clamped, dtype=np.int64)).out.tolist()
    except reference.BoundViolation as e:
        return Outcome("crashed", f"host accepted a file whose values reach 2**30: {e}")
    return Outcome("ran", outputs=out)


_DRIVER = vms.DRIVER_PREAMBLE + """import micromlp
X = {rows!r}
for i in range({n}):
    try:
        net = micromlp.load({dir!r} + '/%d.mlp' % i{opts})
    except micromlp.ModelError as e:
        print('R', i, e)
        continue
    except Exception as e:
        print('C', i, repr(e))
        continue
    out = array('i', bytes(4 * net.n_outputs))
    res = []
    try:
        for x in X:
            lock()
            try:
                net.run(x, out)
            finally:
                unlock()
            res.append(' '.join([str(v) for v in out]))
        print('O', i, ';'.join(res))
    except Exception as e:
        print('C', i, repr(e))
    if hasattr(net, 'close'):
        net.close()
    net = None
print('END')
"""

LOADERS = ("full-unix", "full-unix-stream", "tiny-unix", "full-wasm", "tiny-wasm")


def board_outcomes(loader: str, files: list[bytes], rows: list[list[int]]) -> list[Outcome]:
    """Run every file through one board loader, in one VM process."""
    engine, vm = loader.split("-")[0], loader.split("-")[1]
    opts = ", stream=True" if loader.endswith("stream") else ""
    with tempfile.TemporaryDirectory(prefix="micromlp-fuzz-") as tmp:
        tmp = Path(tmp)
        vms.stage_firmware(tmp, tiny=engine == "tiny")
        for i, data in enumerate(files):
            (tmp / f"{i}.mlp").write_bytes(data)
        where = "/input" if vm == "wasm" else str(tmp)
        code = _DRIVER.format(dir=where, rows=rows, n=len(files), opts=opts)
        if vm == "wasm":  # a heap that never needs collecting in a batch
            stdout = vms.wasm_run(code, readonly_dir=tmp, heapsize="64m").stdout
        else:
            import subprocess

            (tmp / "driver.py").write_text(code)
            proc = subprocess.run([vms.unix_exe(), "-X", "heapsize=1m", "driver.py"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
            stdout = proc.stdout
            if "END" not in stdout:
                raise vms.VMError(f"{loader}: the batch did not finish: "
                                  f"{(proc.stderr or stdout)[-300:]}")
    results = [Outcome("crashed", "no output")] * len(files)
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag not in ("R", "C", "O"):
            continue
        idx, _, text = rest.partition(" ")
        if tag == "R":
            results[int(idx)] = Outcome("refused", text)
        elif tag == "C":
            results[int(idx)] = Outcome("crashed", text)
        else:
            out = [[int(v) for v in r.split()] for r in text.split(";")]
            results[int(idx)] = Outcome("ran", outputs=out)
    return results


@dataclass
class Finding:
    """A file a loader got wrong."""

    base: str
    mutation: str
    loader: str
    problem: str
    data: bytes = b""


@dataclass
class Report:
    """Counts per loader and everything found."""

    files: int = 0
    counts: Counter = field(default_factory=Counter)  # (loader, kind) -> files
    findings: list[Finding] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.files} CRC-valid mutated files"]
        for loader in ("host",) + LOADERS:
            c = {k: self.counts[(loader, k)] for k in ("refused", "ran", "crashed")}
            if any(c.values()):
                lines.append(f"  {loader:17} refused {c['refused']:6}  ran bit-exact "
                             f"{c['ran']:6}  crashed {c['crashed']}")
        lines.append(f"findings: {len(self.findings)}")
        lines += [f"  [{f.base}] {f.mutation} -> {f.loader}: {f.problem}"
                  for f in self.findings[:20]]
        return "\n".join(lines)


def rows_for(data: bytes) -> list[list[int]]:
    """Input rows for any file: its own range's when the host accepts it."""
    try:
        return inputs_for(data)
    except modelfile.ModelFileError:
        return [[0]]


def check_batch(base: str, files: list[bytes], muts: list[str], rows: list[list[int]],
                loaders=LOADERS, report: Report | None = None) -> Report:
    """Every file through the host and the board loaders; findings where they differ.

    Agreement: the same verdict (the full engine with the host's very message), and
    for accepted files the reference's integers. The tiny engine takes version 1 files
    with 8-bit weights only, so it refuses a 16-bit or version 2 file the host accepts;
    that is not a finding.
    """
    report = report or Report()
    host = [host_outcome(d, rows) for d in files]
    board = {ld: board_outcomes(ld, files, rows) for ld in loaders}
    report.files += len(files)
    for i, data in enumerate(files):
        hk = host[i]
        report.counts[("host", hk.kind)] += 1

        def find(loader: str, problem: str, i=i) -> None:
            report.findings.append(Finding(base, muts[i], loader, problem, files[i]))

        if hk.kind == "crashed":
            find("host", hk.text)
        for loader, outs in board.items():
            bk = outs[i]
            report.counts[(loader, bk.kind)] += 1
            if bk.kind == "crashed":
                find(loader, bk.text)
            elif hk.kind == "ran" and bk.kind == "refused":
                if not (loader.startswith("tiny") and _beyond_tiny(data)):
                    find(loader, f"refused what the host accepts: {bk.text}")
            elif hk.kind == "refused" and bk.kind == "ran":
                find(loader, f"accepted what the host refuses ({hk.text})")
            elif hk.kind == "ran" and bk.outputs != hk.outputs:
                find(loader, f"outputs {bk.outputs} differ from the reference {hk.outputs}")
            elif (hk.kind == bk.kind == "refused" and loader.startswith("full")
                  and bk.text != hk.text):
                find(loader, f"message {bk.text!r} differs from the host's {hk.text!r}")
    return report


def _beyond_tiny(data: bytes) -> bool:
    """A file the host accepts that the tiny engine does not claim to read."""
    try:
        model = modelfile.from_bytes(data)
    except modelfile.ModelFileError:
        return False
    return data[4:6] != b"\x01\x00" or any(layer.w_bits != 8 for layer in model.layers)


def campaign(n: int, seed: int = 0, batch: int = 500, loaders=LOADERS, log=print) -> Report:
    """n mutations (spread over the base models), each through every loader."""
    rng = random.Random(seed)
    bases = base_models()
    report = Report()
    names = sorted(bases)
    done = 0
    while done < n:
        name = names[(done // batch) % len(names)]
        data = bases[name]
        spots = fields(data)
        k = min(batch, n - done)
        pairs = [mutate(data, rng, spots) for _ in range(k)]
        check_batch(name, [p[0] for p in pairs], [str(p[1]) for p in pairs],
                    inputs_for(data), loaders, report)
        done += k
        log(f"{done}/{n} files, {len(report.findings)} findings")
    return report


def regression_cases(bases: dict[str, bytes]) -> dict[str, bytes]:
    """The adversarial review's crafted files, one per class it found (tests/corpus/)."""
    relu8 = bases["relu8"]
    spots = {f.name: f for f in fields(relu8)}

    def edit(data: bytes, values: dict) -> bytes:
        for name, value in values.items():
            data = put(data, spots[name], value)
        return data

    (bound,) = struct.unpack_from("<I", relu8, spots["layer 0 acc bound"].offset)
    cases = {
        "understated-bound-big-mult": edit(relu8, {"layer 0 acc bound": bound // 8,
                                                   "layer 0 mult[0]": 2**20}),
        "last-clamp-at-2-30": edit(relu8, {"layer 1 lo": 2**30, "layer 1 hi": 2**30}),
        "last-clamp-hi-2-30": edit(relu8, {"layer 1 hi": 2**30}),
        "input-range-2-31": edit(relu8, {"header in_lo": -(2**31), "header in_hi": 2**31 - 1}),
        "out-scales-differ": edit(relu8, {"header out scale": 1.0}),
        "out-scale-nan": edit(relu8, {"header out scale": float("nan")}),
        "last-out-scale-nan": edit(relu8, {"layer 1 out scale": float("nan")}),
        "reserved-header": edit(relu8, {"header reserved": 1}),
        "reserved-layer": edit(relu8, {"layer 0 reserved 39": 255}),
        "widest-wrong": edit(relu8, {"header widest": 0}),
        "shift-46": edit(relu8, {"layer 1 shift[0]": 46, "layer 1 mult[0]": 8192}),
        "shift-45-ok": edit(relu8, {"layer 1 shift[0]": 45, "layer 1 mult[0]": 8192}),
        "folded-without-bias": edit(relu8, {"layer 0 flags": 2}),
        "in-scale-inf": edit(relu8, {"in_scale[0]": float("inf")}),
        "slope-on-relu": edit(relu8, {"layer 0 slope shift": 3}),
        # found by this fuzz: the tiny loader sized a table by the layer count, the
        # full one its input table by the input count, before checking the file
        "layer-count-20446": edit(relu8, {"header layers": 20446}),
        "input-count-64261": edit(relu8, {"header inputs": 64261}),
    }
    f = spots["layer 0 n_out"]
    for n_out in (65535, 7):  # n_out and every size field changed together
        body = bytearray(put(relu8, f, n_out)[:-4])
        struct.pack_into("<I", body, f.offset - 6, modelfile.layer_size(5, n_out, 8, True))
        struct.pack_into("<I", body, 8, len(body) + 4)
        cases[f"consistent-n-out-{n_out}"] = with_crc(bytes(body))
        struct.pack_into("<I", body, 8, 2**20)
        cases[f"consistent-n-out-{n_out}-size-1mb"] = with_crc(bytes(body))
    body = bytearray(relu8[:-4])
    body[f.offset] ^= 1  # one flipped n_out byte, the CRC made to match
    cases["n-out-flipped"] = with_crc(bytes(body))
    grown = bytearray(relu8[:-4])
    struct.pack_into("<I", grown, 8, len(grown) + 8)
    cases["data-after-crc"] = with_crc(bytes(grown)) + b"\0\0\0\0"
    leaky = bases["leaky"]
    lspots = {f.name: f for f in fields(leaky)}
    cases["leaky-slope-8192"] = put(leaky, lspots["layer 0 slope mult"], 8192)
    cases["leaky-slope-shift-21"] = put(leaky, lspots["layer 0 slope shift"], 21)
    return cases
