"""micromlp: export a PyTorch/ONNX/scikit-learn MLP to fixed point and run it on MicroPython."""
