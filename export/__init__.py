"""The exporter: a model (PyTorch, ONNX, scikit-learn) → checked layer list →
calibrated fixed-point model → files.

``micromlp.export`` (the attribute of the ``micromlp`` package) is the API's export
function, ``micromlp.host.api.export``; this package is ``micromlp.export`` in
``sys.modules``, for ``from micromlp.export import modelfile``.
"""
