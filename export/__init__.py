"""The exporter: a model (PyTorch, ONNX, scikit-learn) → checked layer list →
calibrated fixed-point model → files.

``micromlp.export`` is both this package and the API's export function: calling the
package, ``micromlp.export(model, calib=X, out="out")``, is ``micromlp.host.api.export``.
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..host.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
