"""A model larger than the heap runs by streaming its weights from the file."""

from __future__ import annotations

import numpy as np
import pytest
from micromlp.export import modelfile
from micromlp.host import reference, vms
from micromlp.host.bench import synthetic_model


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = synthetic_model([784, 256, 128, 10], tmp_path_factory.mktemp("big"))
    return path, modelfile.load(path)


@pytest.mark.slow
def test_784_256_128_10_streams_in_a_96k_heap(big):
    # micromlp bench puts the smallest heap from which every larger one runs it at
    # ~90 KB (the smallest working heap is not monotone below that)
    path, model = big
    assert sum(ly.w.size for ly in model.layers) > 200_000  # ~235 KB of int8 weights
    rng = np.random.default_rng(0)
    xq = rng.integers(model.in_lo, model.in_hi + 1, size=(6, model.n_inputs))
    xq[:, ::3] = 0  # some sparsity, as ReLU'd data has
    ref = reference.run(model, xq).out
    for kernel in ("viper", "portable"):
        out = vms.run_unix(path, xq, model.n_outputs, kernel=kernel, stream=True, heapsize="96k")
        assert np.array_equal(out, ref), kernel
    # the control: the same model kept in RAM does not fit that heap
    with pytest.raises(vms.VMError, match="MemoryError"):
        vms.run_unix(path, xq, model.n_outputs, kernel="viper", stream=False, heapsize="96k")
    # and in RAM with room, it computes the same integers
    assert np.array_equal(vms.run_unix(path, xq, model.n_outputs, kernel="viper"), ref)


@pytest.mark.slow
def test_streaming_on_32bit_wasm_allocates_nothing(big):
    path, model = big
    xq = np.random.default_rng(1).integers(0, model.in_hi + 1, size=(2, model.n_inputs))
    out = vms.run_wasm(path, xq, model.n_outputs, kernel="portable", stream=True)
    assert np.array_equal(out, reference.run(model, xq).out)
