"""micromlp: export an MLP (PyTorch, ONNX, scikit-learn) to fixed point and run it,
bit-exact, on MicroPython boards.

    import micromlp
    q = micromlp.export(model, calib=X_train, out="out")
    print(q)
    print(micromlp.format_report(q.verify(X_test, y_test)))
"""

import sys
import types
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("micromlp")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

_API = ("export", "load", "finetune", "Exported", "RunResult", "format_report")


def __getattr__(name):
    # the API pulls in torch and onnx: import it on first use, so `micromlp --help`
    # and the firmware tools stay quick
    if name in _API:
        from .host import api

        value = getattr(api, name)
    elif name == "ExportError":
        from .export.layers import ExportError as value
    else:
        raise AttributeError(f"module 'micromlp' has no attribute {name!r}")
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    # micromlp.export is the export function (help() shows its parameters), though the
    # exporter package micromlp.export shares its name: importing that package would
    # bind it here, so the binding is refused (`from micromlp.export import X` still
    # finds the package in sys.modules).
    def __setattr__(self, name, value):
        if name == "export" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["export", "finetune", "load", "Exported", "RunResult", "format_report",
           "ExportError", "__version__"]
