"""micromlp: export an MLP (PyTorch, ONNX, scikit-learn) to fixed point and run it,
bit-exact, on MicroPython boards.

    import micromlp
    q = micromlp.export(model, calib=X_train, out="out")
    print(q)
    print(micromlp.format_report(q.verify(X_test, y_test)))
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("micromlp")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"


def __getattr__(name):
    # the API pulls in torch and onnx: import it on first use, so `micromlp --help`
    # and the firmware tools stay quick
    if name == "export":  # the exporter package, which is callable: export(model, ...)
        import importlib

        return importlib.import_module(__name__ + ".export")
    if name in ("load", "finetune", "Exported", "RunResult", "format_report"):
        from .host import api

        return getattr(api, name)
    raise AttributeError(f"module 'micromlp' has no attribute {name!r}")


__all__ = ["export", "finetune", "load", "Exported", "RunResult", "format_report",
           "__version__"]
