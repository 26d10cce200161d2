"""micromlp: train an MLP, export it to fixed point, run and verify it on MicroPython.

Commands:
  train     train a Linear/ReLU MLP on a bundled dataset (writes model.pt + model.npz)
  export    quantize a checkpoint to model.mlp, model_mlp.py and model_mlp.mpy
  inspect   print the layer table stored in a .mlp file
  run       run a .mlp on inputs with the reference or on a MicroPython VM
  verify    PyTorch vs reference vs every VM: bit-exactness, accuracy (or R²), error bound
  report    one HTML page on a model's fidelity: verify's checks, per layer, with plots
  bench     speed, fuel, allocation and RAM on the VMs, against a float baseline
  deploy    copy the engine and a model to a board, then self-test it there
  board     start an emulated board (serial or micro:bit) to deploy and bench on
  playground  a web page that runs a model on the engine in MicroPython WebAssembly
  firmware  MicroPython for an MCU board with the engine and a model frozen in
  fuzz      mutated model files through every loader: refused by name, or bit-exact
  demo      train -> export -> verify on a bundled dataset (the README's main job)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

from .vms import MCU_VMS

PROG = "micromlp"


class CLIError(Exception):
    """A user-facing failure: printed as 'micromlp: message', exit status 2."""


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 32,16, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("hidden sizes must be positive")
    return sizes


BENCH_VMS = ("unix", "webassembly", "wasm")
MCU_BENCH_VMS = MCU_VMS  # host/boards/mcubench.py


def _bench_vms(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    for n in names:
        _not_built(n)
        if n not in BENCH_VMS + MCU_BENCH_VMS:
            raise argparse.ArgumentTypeError(
                f"unknown VM {n!r} for bench; choose from "
                f"{', '.join(BENCH_VMS + MCU_BENCH_VMS)}")
    return names


def _not_built(name: str) -> None:
    from .boards.mcu import NOT_BUILT

    if name in NOT_BUILT:
        raise argparse.ArgumentTypeError(f"{name} is not built here: {NOT_BUILT[name]}")


def _vm_list(text: str) -> tuple[str, ...]:
    from .vms import ALL_FIRMWARE_VMS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    for n in names:
        _not_built(n)
        if n not in ALL_FIRMWARE_VMS:
            raise argparse.ArgumentTypeError(
                f"unknown VM {n!r}; choose from {', '.join(ALL_FIRMWARE_VMS)}"
            )
    return names


def do_train(args: argparse.Namespace) -> int:
    from .train import train

    r = train(
        args.dataset,
        args.hidden,
        bias=not args.no_bias,
        epochs=args.epochs,
        seed=args.seed,
        out=args.output,
        qat_epochs=args.qat_epochs if args.qat else 0,
    )
    print(
        f"trained {args.dataset}: {r.n_params} parameters, float accuracy "
        f"train {100 * r.train_accuracy:.2f} %, test {100 * r.test_accuracy:.2f} %"
    )
    print(f"wrote {r.model_path} and {r.data_path}")
    return 0


def _quant_kwargs(args: argparse.Namespace) -> dict:
    """The bit and input-range options, as the API's keyword arguments."""
    input_range = None
    if getattr(args, "input_range", None):
        try:
            input_range = tuple(int(v) for v in args.input_range.split(","))
            if len(input_range) != 2:
                raise ValueError
        except ValueError:
            raise CLIError(
                f"--input-range takes LO,HI integers, got {args.input_range!r}"
            ) from None
    return dict(weight_bits=args.weight_bits, act_bits=args.act_bits, out_bits=args.out_bits,
                per_tensor=args.per_tensor, input_range=input_range,
                input_bits=getattr(args, "input_bits", None), calib_method=args.calib_method,
                bias_correction=args.bias_correction, equalize=args.equalize,
                input_tail=args.input_tail)


def _floats(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    try:
        v = np.array([float(t) for t in text.split(",")])
    except ValueError:
        raise CLIError(f"expected comma-separated numbers, got {text!r}") from None
    if not np.all(np.isfinite(v)):
        raise CLIError(f"expected finite numbers, got {text!r}")
    return v


def do_export(args: argparse.Namespace) -> int:
    from .api import export

    mean, std = _normalization(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder (-o names the output folder)")
    exp = export(args.model, args.calib, out, input_mean=mean, input_std=std,
                 module=args.module, module_args=args.module_args, arch=args.arch,
                 trust_pickle=args.trust_pickle, max_size_mb=args.max_size,
                 **_quant_kwargs(args))
    if args.json:
        from ..export.report import layer_rows

        print(json.dumps({"notes": exp.notes, "layers": layer_rows(exp.model),
                          "error_bound": exp.error_bound, "n_inputs": exp.model.n_inputs,
                          "n_outputs": exp.model.n_outputs, "fidelity": exp.fidelity,
                          "files": {k: str(p) for k, p in exp.paths.items()}}, indent=2))
    else:
        print(exp)
    return 0


def do_inspect(args: argparse.Namespace) -> int:
    from ..export import modelfile
    from ..export.report import input_rows, input_table, layer_rows, layer_table

    model = modelfile.load(args.model)
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "n_inputs": model.n_inputs,
                    "n_outputs": model.n_outputs,
                    "input_range": [model.in_lo, model.in_hi],
                    "out_scale": model.out_scale,
                    "error_bound": model.error_bound,
                    "layers": layer_rows(model),
                    "inputs": input_rows(model),
                },
                indent=2,
            )
        )
    else:
        print(
            f"{args.model}: micromlp format v{modelfile.file_version(model)}, "
            f"{Path(args.model).stat().st_size} bytes, CRC ok"
        )
        print(layer_table(model))
        print(input_table(model))
        print(f"PyTorch agreement bound: {model.error_bound:.4g} per output")
    return 0


def do_run(args: argparse.Namespace) -> int:
    from .api import load
    from .verify import load_data

    x = load_data(args.input, label_column=args.label_column)[0]
    res = load(args.model).run(x, args.vm, args.int, args.input)
    out, deq = res.ints, res.floats
    if args.json:
        print(
            json.dumps(
                {
                    "vm": args.vm,
                    "outputs": out.tolist(),
                    "dequantized": deq.tolist(),
                    "predicted": res.predicted.tolist(),
                }
            )
        )
    else:
        for row, frow in zip(out, deq, strict=True):
            print(
                f"pred {int(np.argmax(row))}  ints {' '.join(map(str, row))}  "
                f"floats {' '.join(f'{v:.4g}' for v in frow)}"
            )
    return 0


def _normalization(args: argparse.Namespace):
    """--input-mean/--input-std as arrays (or None, None)."""
    mean, std = _floats(args.input_mean), _floats(args.input_std)
    if (mean is None) != (std is None):
        raise CLIError("--input-mean and --input-std go together")
    return mean, std


def _float_source(args: argparse.Namespace):
    """verify's and report's --float model, read as export reads a model, with the input
    normalization it expects (--input-mean/--input-std, as given to export)."""
    from ..export.sources import load_source

    source = load_source(args.float_model, module=args.module, module_args=args.module_args,
                         arch=args.arch, trust_pickle=args.trust_pickle)
    mean, std = _normalization(args)
    if mean is not None:
        source.mean, source.std = mean, std
    return source


def do_verify(args: argparse.Namespace) -> int:
    from .verify import format_report, verify

    float_model = None if args.float_model is None else _float_source(args)
    rep = verify(args.model, args.data, float_model, args.vm, args.split,
                 args.max_drop / 100, args.min_agreement / 100, args.label_column,
                 layers=args.layers, task=args.task,
                 max_mean_error=args.max_mean_error / 100)
    print(json.dumps(rep.to_dict(), indent=2) if args.json else format_report(rep))
    return 0 if rep.ok else 1


def do_report(args: argparse.Namespace) -> int:
    from .report_page import build
    from .verify import load_data

    source = _float_source(args)
    x, y = load_data(args.data, args.split, args.label_column)
    path, rep = build(args.model, x, y, source, args.output, args.vm,
                      args.max_drop / 100, args.min_agreement / 100)
    print(f"wrote {path} ({path.stat().st_size} bytes): "
          + ("OK" if rep.ok else "FAILED: " + "; ".join(rep.failures)))
    return 0 if rep.ok else 1


def do_playground(args: argparse.Namespace) -> int:
    import time

    from .playground import build, serve
    from .webassembly import WebAssemblyError

    try:
        index = build(args.model, args.output)
    except WebAssemblyError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {index.parent}/ (index.html, app.mjs, data.json, the engine's micromlp*.py, "
          f"{Path(args.model).name} as model.mlp, micropython.mjs/.wasm)")
    if not args.serve:
        print(f"serve it over http (ES modules need it): micromlp playground {args.model} "
              f"-o {args.output} --serve")
        return 0
    server, url = serve(index.parent, args.port)
    print(f"serving {url} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


def do_board(args: argparse.Namespace) -> int:
    from .boards import BoardError, emulate

    try:
        board = emulate(args.emulate, args.files, args.firmware)
    except BoardError as e:
        raise CLIError(str(e)) from None
    def terminated(signum, frame):  # `kill PID`: stop the emulator as Ctrl-C does
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        print(board.describe(), flush=True)
        print(f"PORT {board.port}", flush=True)  # one line a script can read
        print("Ctrl-C stops it.", flush=True)
        code = board.proc.wait()
        print(f"the emulator exited (status {code})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        board.stop()
        signal.signal(signal.SIGTERM, previous)


def do_firmware(args: argparse.Namespace) -> int:
    from .boards import BoardError
    from .boards.frozen import build

    try:
        res = build(args.board, args.output, args.model)
    except BoardError as e:
        raise CLIError(str(e)) from None
    print(f"wrote {res.manifest} (frozen: {', '.join(res.frozen)})")
    print(f"built {res.firmware} for {args.board}")
    model = "; import model_mlp; net = micromlp.load(model_mlp)" if args.model else ""
    print(f"try it: micromlp board --emulate {args.board} --firmware {res.firmware}, then "
          f"mpremote connect PORT exec \"import micromlp{model}\"")
    return 0


def do_fuzz(args: argparse.Namespace) -> int:
    from .fuzz import campaign

    if args.mutations < 1 or args.batch < 1:
        raise CLIError("--mutations and --batch must be at least 1")
    log = (lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    rep = campaign(args.mutations, seed=args.seed, batch=args.batch, log=log)
    if args.findings:
        out = Path(args.findings)
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(rep.findings):
            (out / f"{i:04d}-{f.base}-{f.loader}.mlp").write_bytes(f.data)
    if args.json:
        print(json.dumps({
            "files": rep.files, "seed": args.seed,
            "counts": {f"{ld} {k}": n for (ld, k), n in sorted(rep.counts.items())},
            "findings": [{"base": f.base, "mutation": f.mutation, "loader": f.loader,
                          "problem": f.problem} for f in rep.findings]}, indent=2))
    else:
        print(rep)
    return 1 if rep.findings else 0


def do_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy

    rep = deploy(
        args.outdir,
        args.port,
        resume=args.resume,
        fmt=args.format,
        stream=True if args.stream else None,
        main=args.main,
        log=(lambda m: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print("deploy: " + ("OK" if rep.test.ok else "FAILED: the board computed other integers"))
    return 0 if rep.test.ok else 1


def do_bench(args: argparse.Namespace) -> int:
    import tempfile

    if args.port:
        from .deploy import device_bench

        res = device_bench(args.port, resume=True, stream=args.stream)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(
                f"on the board at {args.port}: {res['us_per_inference']:.0f} us per inference "
                f"(on an emulated board, such as QEMU, times are not meaningful), "
                f"{res['free_after_load']} bytes free after load, "
                f"{res['alloc_per_inference']:.0f} bytes allocated per inference"
            )
        return 0

    from ..export import modelfile
    from .bench import bench, format_report, synthetic_model
    from .verify import load_data

    given = [Path(m) for m in args.model]
    models = list(given)
    tmp = tempfile.TemporaryDirectory(prefix="micromlp-synthetic-")
    for sizes in args.synthetic:
        models.append(synthetic_model(sizes, Path(tmp.name)))
    if not models:
        raise CLIError("give a model file or --synthetic SIZES")
    if args.load_cost:
        from .loadcost import format_costs, load_costs

        parts = []
        for path in models:
            m = modelfile.load(path)
            shape = "-".join(str(v) for v in [m.n_inputs] + [ly.n_out for ly in m.layers])
            weights = sum(ly.n_in * ly.n_out for ly in m.layers)
            parts.append(f"### {shape} ({weights} weights): {path}\n\n"
                         + format_costs(load_costs(path, args.rounds), weights) + "\n")
            print(parts[-1])
        if args.markdown:  # appended: this section follows the speed tables
            cmd = "micromlp " + " ".join(sys.argv[1:])
            with open(args.markdown, "a") as f:
                f.write(LOAD_COST_HEADER.format(cmd=cmd) + "\n".join(parts))
            print(f"appended to {args.markdown}")
        tmp.cleanup()
        return 0
    data = load_data(args.data)[0] if args.data else None
    host_vms = tuple(v for v in args.vm if v in BENCH_VMS)
    boards = [v for v in args.vm if v in MCU_BENCH_VMS]
    reports, board_reports = [], []
    for path in models if host_vms else []:
        inputs = data if path in given else None
        rep = bench(path, rounds=args.rounds, heap=not args.no_heap, inputs=inputs,
                    vms=host_vms)
        reports.append(rep)
        if not args.json:
            print(format_report(rep))
            print()
    if boards:
        board_reports = _bench_boards(boards, models, args.json, heap=not args.no_heap)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports + board_reports], indent=2))
    if args.markdown:
        from .boards.mcubench import format_report as format_board

        cmd = "micromlp " + " ".join(sys.argv[1:])
        body = BENCH_HEADER.format(cmd=cmd) if reports else ""
        body += "".join(format_report(r, markdown=True) + "\n" for r in reports)
        if board_reports:  # a section of its own (docs/benchmarks.md appends it)
            body += MCU_BENCH_HEADER.format(cmd=cmd) + "".join(
                format_board(r, markdown=True) + "\n" for r in board_reports)
        Path(args.markdown).write_text(body)
        print(f"wrote {args.markdown}")
    tmp.cleanup()
    return 0


def _bench_boards(boards: list[str], models: list[Path], quiet: bool, heap: bool = True
                  ) -> list:
    """The MCU boards' figures for every model (host/boards/mcubench.py)."""
    from tqdm import tqdm

    from .boards import BoardError
    from .boards.mcubench import FORMS, bench_board, format_report

    reports = []
    steps = [(b, m) for b in boards for m in models]
    bar = tqdm(total=len(steps) * len(FORMS), desc="bench on MCU boards", leave=False,
               disable=None)
    for board, path in steps:
        try:
            rep = bench_board(board, path, heap=heap, progress=lambda what: (
                bar.set_postfix_str(what), bar.update()))
        except BoardError as e:
            raise CLIError(str(e)) from None
        reports.append(rep)
        if not quiet:
            print(format_report(rep))
            print()
    bar.close()
    return reports


BENCH_HEADER = """# Benchmarks

Produced by:

```
{cmd}
```

Every engine configuration on the MicroPython unix port (64-bit) runs in one VM
process with a plain float nested-list implementation of the same network (the
baseline), on the same inputs; each round times every configuration and the baseline
in turn, so machine load affects them alike. The table shows the median time and its
range over the rounds; *x float* is the median over rounds of (baseline time / engine
time), with its range. *x C* compares with the same integer arithmetic written in C
(host/ckernel.py: one scalar multiply-add at a time, compiled by the system compiler,
outputs checked against the host reference), run just after: the physical reference.
Quote the ratios rather than the absolute figures (a shared machine). Kernel *c* is
`micromlp_c.mpy` (firmware/native/x64/, the kernels in C as a native module). *run()
gets*: an `array('i')` takes the one-call path of C and viper (`net8`: the clamp and
every layer), a list the checked clamp first. Fuel is wasmtime's count of executed
WebAssembly instructions on the 32-bit WASI MicroPython: deterministic, it does not
drift with machine load.
Allocation is `gc.mem_alloc()` growth per inference with the collector paused, which
nets out a block freed at once; *heap block/inf* catches those too: with
`gc.threshold(1)` any allocation runs a collection, which frees garbage made just
before ("none": no block at all, not even a bytecode frame; no `heap_lock` is involved
on viper's one-call path). The smallest heap is searched over `micropython -X
heapsize=N` on the unix port (objects are 64-bit: a 32-bit board needs less), and moved
up past every failing size in the 64 KB above (every 256 bytes up to 4 KB, then every
512), since the smallest working heap is not monotone.

"""


MCU_BENCH_HEADER = """
## On MCU instruction sets: MicroPython's own Cortex-M boards in QEMU

Produced by:

```
{cmd}
```

MicroPython v1.28.0 built from source for the qemu port's boards (host/boards/mcu.py)
and run under `qemu-system-arm -icount shift=0,sleep=off`: the board's clock advances 1 ns per
instruction, so these are instruction counts, the same on every run whatever the
host's load (QEMU does not model cycles: at one instruction per cycle, instructions /
MHz is a latency estimate; a Cortex-M7 issues up to two per cycle, flash wait states
add some). Kernels are timed with the engine as `.mpy` (MicroPython's own mpy-cross;
viper's machine code built for the core) beside the core's `micromlp_c.mpy` (kernel *c*,
firmware/native/), one `net.run(x, out)` per inference. The
heap figures are what stays allocated after a load and one run, per way the engine
reaches the board: `.py` compiled on the board, `.mpy` loaded into RAM (served by
`mpremote mount`, as a copied file is), `.mpy` in ROMFS (used in place from flash), the
same with `micromlp_c.mpy` (whose machine code is copied into RAM; the engine then
imports no viper code), frozen into the firmware with the model read from a file, and
frozen together with the model (`micromlp firmware`). The C reference
is host/ckernel.py's loops for this model, compiled for the core at `-Os` as a native
module and run on the board.

"""

LOAD_COST_HEADER = """
## What a load costs

Produced by:

```
{cmd}
```

Every loader checks the whole file on the board: each field, the sizes against the
real file size, and the 2\\*\\*30 proof recomputed from the weights (one pass over
every weight). *load* is one `micromlp.load()` of the file; *a load is* compares its
fuel with one inference's. The full engine imports its checked reader
(micromlp_load.py) at every load and drops it after, so that its RAM goes to the
model: on WASI, which runs the engine from source, most of a load's fuel is compiling
that reader (and, the first time, micromlp_net.py); from .mpy (the unix timings, and
what deploy sends to a board that takes .mpy) the import reads bytecode. The tiny
engine's first load compiles its loader scripts on the board (on WASI much of that
fuel is the byte-by-byte `readline` of the scripts through WASI calls); *again* is a
later load, where the port has `compile()` and room to keep the compiled statements (a
micro:bit has neither: each load compiles them). Both engines ask `gc.mem_free()` once
per load (the full engine to collect on a small heap once its reader is dropped),
which scans the whole heap: 8 MB in these runs, much of *again*. On the
emulated micro:bit, which does not model time, what counts is RAM: see the README.

"""


def do_demo(args: argparse.Namespace) -> int:
    from ..export.exporter import export_checkpoint
    from .api import Exported, quant_options
    from .train import train
    from .verify import format_report, verify

    out = Path(args.output)
    print(f"[1/3] train {args.dataset}, hidden {args.hidden}")
    r = train(args.dataset, args.hidden, epochs=args.epochs, seed=args.seed, out=out / "model.pt")
    print(f"      float test accuracy {100 * r.test_accuracy:.2f} %, {r.n_params} parameters")
    print("[2/3] export to fixed point")
    res = export_checkpoint(r.model_path, out, opts=quant_options(**_quant_kwargs(args)))
    print(Exported(res.model, res.paths, res.source))  # what export (and a notebook) prints
    print("[3/3] verify on the test split: PyTorch, host reference, MicroPython VMs")
    rep = verify(res.paths["mlp"], r.data_path, r.model_path)
    print(format_report(rep))
    return 0 if rep.ok else 1


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    from ..export.quantize import BIAS_CORRECTION, CALIB_METHODS

    p.add_argument("--weight-bits", type=int, default=8, choices=(8, 16))
    p.add_argument("--act-bits", type=int, default=8, choices=(8, 16))
    p.add_argument("--out-bits", type=int, default=16, help="bits of the last layer's output")
    p.add_argument("--per-tensor", action="store_true",
                   help="one weight scale per layer instead of one per output channel")
    p.add_argument("--calib-method", choices=CALIB_METHODS, default="minmax",
                   help="hidden activation ranges: the largest value seen (+10%%), the "
                   "99.99th percentile, or the clip point of least squared error")
    p.add_argument("--bias-correction", choices=BIAS_CORRECTION, default="bias",
                   help="absorb the weights' mean rounding error into the bias: layers "
                   "that have one (default), all (bias-free layers get one), or off")
    p.add_argument("--equalize", choices=("auto", "on", "off"), default="auto",
                   help="per-channel activation equalization; auto keeps it where it "
                   "lowers the error on the calibration data")
    p.add_argument("--input-tail", type=float, metavar="SIGMAS",
                   help="float inputs: a feature side whose calibration data has a tail "
                   "(past 2 standard deviations) reaches this many from the mean, so "
                   "samples past a small calibration set's range do not clip (default 5 "
                   "with 8-bit activations, 10 with 16-bit; 0: only the 10%% headroom)")


def _add_normalization_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--input-mean", help="per-input means (comma-separated, or one for all) "
                   f"{what}, with --input-std")
    p.add_argument("--input-std", help="per-input standard deviations (see --input-mean)")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """How to read a model file that needs more than itself (export's MODEL, --float)."""
    p.add_argument("--module", metavar="FILE.py[:CLASS]",
                   help="the class of a state dict (FILE.py:Class), or the file that defines a "
                   "pickled module's class (with --trust-pickle)")
    p.add_argument("--module-args", metavar="JSON",
                   help="constructor arguments for --module: a JSON object or list")
    p.add_argument("--arch", metavar="SIZES",
                   help="a state dict of a Linear+ReLU stack with these sizes, e.g. 64,32,10")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a fully pickled nn.Module (unpickling runs the file's code)")


def build_parser() -> argparse.ArgumentParser:
    from .boards.emulate import KINDS
    from .datasets import NAMES
    from .vms import FIRMWARE_VMS, VM_NAMES

    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an MLP on a bundled dataset")
    p.add_argument("--dataset", choices=NAMES, default="digits")
    p.add_argument("--hidden", type=_hidden, default=[32, 16], help="hidden sizes (32,16)")
    p.add_argument("--no-bias", action="store_true", help="every Linear layer bias=False")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qat", action="store_true", help="then fine-tune through the "
                   "exporter's 8-bit grids (quantization-aware; export with --equalize off)")
    p.add_argument("--qat-epochs", type=int, default=20)
    p.add_argument("-o", "--output", default="model.pt")
    p.set_defaults(func=do_train)

    p = sub.add_parser("export", help="export a model to fixed point", description=EXPORT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .pt/.pth (checkpoint, state dict, TorchScript, "
                   "pickle), .pt2 (torch.export) or .onnx")
    p.add_argument("-o", "--output", default="out", help="output folder")
    p.add_argument("--calib", help="calibration inputs, raw as the board sees them: "
                   ".npz (X_train/x_train/X/x), .npy or .csv (default: the .npz next to MODEL)")
    _add_source_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_normalization_args(p, "to fold into the first layer")
    p.add_argument("--input-range", metavar="LO,HI",
                   help="inputs are raw integers in [LO, HI], fed to the board as they are")
    p.add_argument("--input-bits", type=int,
                   help="inputs are raw unsigned N-bit integers (e.g. 12 for a 12-bit ADC)")
    p.add_argument("--max-size", type=float, metavar="MB",
                   help="refuse a model whose file would be larger (default 16 MB, the "
                   "largest board flash; more for a model streamed from an SD card)")
    _add_quant_args(p)
    p.set_defaults(func=do_export)

    p = sub.add_parser("inspect", help="print the layer table of a .mlp file")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=do_inspect)

    p = sub.add_parser("run", help="run a .mlp on inputs")
    p.add_argument("model")
    p.add_argument("--input", required=True, help="float inputs: .npy, .npz (X_test/x/...) "
                   "or .csv (header optional)")
    p.add_argument("--vm", choices=VM_NAMES, default="reference")
    p.add_argument("--label-column", help="a column of the .csv that is not an input (a "
                   "header name or an index; -1 for the last)")
    p.add_argument("--int", action="store_true", help="inputs are already quantized integers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=do_run)

    p = sub.add_parser("verify", help="check the VMs against the reference and PyTorch")
    p.add_argument("model")
    p.add_argument("--float", "--torch", dest="float_model", metavar="MODEL",
                   help="the float model it was exported from, any form export takes (ONNX "
                   "runs in onnxruntime)")
    p.add_argument("--data", required=True, help="test data: .npz (X_test/x_test/X/x with "
                   "y_test/y, any case), .npy, or .csv (see --label-column)")
    p.add_argument("--label-column", help="the label column of a .csv (a header name or an "
                   "index; -1 for the last)")
    _add_source_args(p)
    _add_normalization_args(p, "the float model expects (as given to export)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="fail when fixed-point accuracy is more than this below float (1)")
    p.add_argument("--min-agreement", type=float, default=99.0, metavar="PERCENT",
                   help="fail when top-1 agreement with the float model is below this (99)")
    p.add_argument("--split", default="test", help="which split of the .npz (test)")
    p.add_argument("--max-mean-error", type=float, default=2.0, metavar="PERCENT",
                   help="regression: fail when an output's mean |fixed - float| is above "
                   "this percentage of its span (2)")
    p.add_argument("--task", choices=("auto", "classification", "regression"),
                   default="auto", help="what to check against the float model: accuracy "
                   "and top-1 agreement, or R² and the error per output (auto: regression "
                   "for a scikit-learn regressor or targets that are not class labels)")
    p.add_argument("--layers", action="store_true", help="where the error comes from, per "
                   "layer: SQNR, max/p99 error against the layer's bound, clipping, grid "
                   "levels used, the output error with only that layer quantized (needs "
                   "--float)")
    p.add_argument(
        "--vm",
        type=_vm_list,
        default=FIRMWARE_VMS,
        help="comma-separated VMs (default: " + ",".join(FIRMWARE_VMS) + ")",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=do_verify)

    p = sub.add_parser("report", help="one HTML page on a model's fidelity: plots, "
                       "per-layer table, confusion matrix (verify's checks included)")
    p.add_argument("model", help="a .mlp file")
    p.add_argument("--float", "--torch", dest="float_model", metavar="MODEL", required=True,
                   help="the float model it was exported from, any form export takes")
    p.add_argument("--data", required=True, help="test data, as verify takes it")
    p.add_argument("--label-column", help="the label column of a .csv")
    p.add_argument("--split", default="test", help="which split of the .npz (test)")
    _add_source_args(p)
    _add_normalization_args(p, "the float model expects (as given to export)")
    p.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS")
    p.add_argument("--min-agreement", type=float, default=99.0, metavar="PERCENT")
    p.add_argument("--vm", type=_vm_list, default=FIRMWARE_VMS,
                   help="comma-separated VMs (default: " + ",".join(FIRMWARE_VMS) + ")")
    p.add_argument("-o", "--output", default="report.html", help="(default report.html)")
    p.set_defaults(func=do_report)

    p = sub.add_parser("bench", help="speed, fuel, allocation and RAM against a float baseline")
    p.add_argument("model", nargs="*", help=".mlp files")
    p.add_argument("--data", help=".npz whose test inputs drive the given models")
    p.add_argument(
        "--synthetic",
        type=_hidden,
        action="append",
        default=[],
        metavar="SIZES",
        help="also bench a random model, e.g. 784,256,128,10",
    )
    p.add_argument("--rounds", type=int, default=7, help="timing rounds (median is reported)")
    p.add_argument("--no-heap", action="store_true", help="skip the smallest-heap search")
    p.add_argument("--vm", type=_bench_vms, default=BENCH_VMS, metavar="VMS",
                   help="comma-separated, of " + ",".join(BENCH_VMS) + " (default: all; the "
                   "C reference and the heap search go with unix)")
    p.add_argument("--load-cost", action="store_true",
                   help="instead: what loading (with every check) costs, against an inference")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", help="also write the tables to this Markdown file")
    p.add_argument("--port", help="instead: bench the model deployed on this board")
    p.add_argument("--stream", action="store_true", help="with --port: streaming weights")
    p.set_defaults(func=do_bench)

    p = sub.add_parser("deploy", help="copy the engine and a model to a board, then self-test")
    p.add_argument("outdir", help="export folder (with model.mlp), or a .mlp file")
    p.add_argument("--port", required=True, help="serial device, or socket://host:port")
    p.add_argument("--resume", action="store_true", help="skip the soft reset")
    p.add_argument("--format", choices=("mpy", "py"), help="engine form (default: what fits)")
    p.add_argument("--stream", action="store_true", help="keep the weights in the file")
    p.add_argument("--main", action="store_true", help="also install the example main.py")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=do_deploy)

    p = sub.add_parser("board", help="start an emulated board to deploy and bench on")
    p.add_argument("--emulate", required=True, choices=KINDS,
                   help="serial: the MicroPython unix port behind a pty (socat); microbit: "
                   "a BBC micro:bit v1 in QEMU (Debian's MicroPython 1.9.2); cortex-m3, "
                   "cortex-m7, cortex-m55, cortex-m0: MicroPython's own qemu boards, built "
                   "from source "
                   "on first use")
    p.add_argument("--files", metavar="DIR", help="serial: where copied files land "
                   "(default: a temporary folder)")
    p.add_argument("--firmware", metavar="ELF", help="an MCU board: boot this firmware (from "
                   "micromlp firmware) instead of the plain build")
    p.set_defaults(func=do_board)

    p = sub.add_parser("firmware", help="MicroPython with the engine (and a model) frozen "
                       "in, for an emulated MCU board; its manifest serves real boards too")
    p.add_argument("--board", required=True, choices=KINDS[2:],
                   help="the emulated board to build for")
    p.add_argument("--model", help="a .mlp file to freeze as model_mlp (weights used in place "
                   "from flash)")
    p.add_argument("-o", "--output", default="firmware", help="folder for manifest.py, the "
                   "frozen sources and firmware.elf (default firmware)")
    p.set_defaults(func=do_firmware)

    p = sub.add_parser("playground", help="a web page that runs the model on the engine, "
                       "in MicroPython WebAssembly")
    p.add_argument("model", help="a .mlp file")
    p.add_argument("-o", "--output", default="site", help="the folder to write (default site)")
    p.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="with --serve (0: any free port)")
    p.set_defaults(func=do_playground)

    p = sub.add_parser("fuzz", help="mutated model files through every loader and VM")
    p.add_argument("-n", "--mutations", type=int, default=2000,
                   help="CRC-valid mutated files, each through every loader (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=500, help="files per VM process")
    p.add_argument("--findings", metavar="DIR", help="write each file a loader got wrong here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=do_fuzz)

    p = sub.add_parser("demo", help="train -> export -> verify on a bundled dataset")
    p.add_argument("--dataset", choices=NAMES, default="digits")
    p.add_argument("--hidden", type=_hidden, default=[32, 16])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="micromlp-demo")
    _add_quant_args(p)
    p.set_defaults(func=do_demo)
    return ap


# Options whose values may start with '-' (negative numbers): argparse would take
# "--input-mean -0.3,0.1" for two options, so the value is joined with '='.
_VALUE_OPTIONS = ("--input-mean", "--input-std", "--input-range", "--label-column")


def _join_values(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("micromlp")
    except PackageNotFoundError:
        return "unknown"


EXPORT_HELP = """Export a model to fixed point: model.mlp, model_mlp.py, model_mlp.mpy.

Model forms: a 'micromlp train' checkpoint; a state dict (torch.save(model.state_dict()))
with --module FILE.py:Class [--module-args JSON] or --arch SIZES; a pickled module
(torch.save(model)) with --trust-pickle [--module FILE.py]; TorchScript; torch.export
(.pt2); ONNX from PyTorch (either exporter), skl2onnx or any producer.
Calibration and data files: .npz (keys X_train, x_train, X, x in any case), .npy, .csv
(header optional). Negative option values work: --input-mean -0.5,1.2
"""


def main(argv: list[str] | None = None) -> int:
    from ..export.layers import ExportError
    from ..export.modelfile import ModelFileError
    from .deploy import DeployError
    from .vms import VMError

    args = build_parser().parse_args(_join_values(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except BrokenPipeError:  # `micromlp run --json | head`
        sys.stderr.close()
        return 0
    except (
        CLIError,
        ExportError,
        ModelFileError,
        VMError,
        DeployError,
        OSError,
        ValueError,
    ) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
