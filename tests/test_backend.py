"""The backend: device selection, GPU error messages, the mixing rule, transfer counts, seeding."""

import numpy as np
import pytest

from tinyvgg import backend
from tinyvgg import layers as L
from tests.standin import StandInArray, make_device


def test_cpu_is_default_and_numpy():
    assert backend.current() == "cpu"
    assert backend.xp() is np
    assert backend.get_array_module(np.zeros(2)) is np


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.use("tpu")


def test_gpu_error_says_what_is_missing_and_how_to_fix(monkeypatch):
    if backend.gpu_available():
        pytest.skip("a GPU is available here: the no-GPU error cannot be provoked")
    with pytest.raises(RuntimeError) as e:
        backend.use("gpu")
    msg = str(e.value)
    assert ("CuPy is not installed" in msg and "cupy-cuda12x" in msg) or "no CUDA device" in msg
    assert backend.current() == "cpu"  # a failed switch leaves the CPU in place


def test_device_env_variable_selects_the_device_at_import():
    import os
    import subprocess
    import sys
    code = "from tinyvgg import backend; print(backend.current())"
    env = dict(os.environ, TINYVGG_DEVICE="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "cpu", out.stderr
    env["TINYVGG_DEVICE"] = "tpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown device 'tpu'" in out.stderr


def test_to_device_and_to_host_on_cpu_are_free():
    backend.reset_transfer_counts()
    a = np.arange(3.0)
    assert backend.to_device(a) is a and backend.to_host(a) is a
    assert backend.transfer_counts() == {"host_to_device": 0, "device_to_host": 0}


def test_standin_device_counts_transfers():
    backend.use(make_device())
    backend.reset_transfer_counts()
    d = backend.to_device(np.arange(4.0))
    assert isinstance(d, StandInArray) and backend.is_device_array(d)
    assert backend.to_device(d) is d  # already there: no copy
    h = backend.to_host(d)
    assert type(h) is np.ndarray
    assert backend.transfer_counts() == {"host_to_device": 1, "device_to_host": 1}


def test_mixing_host_input_with_device_parameters_is_a_type_error():
    backend.use(make_device())
    conv = L.Conv2d(1, 2, 3)
    assert isinstance(conv.params["weight"], StandInArray)
    with pytest.raises(TypeError, match=r"Conv2d\(1, 2.*host array.*numpy.ndarray.*device arrays.*StandInArray"):
        conv.forward(np.zeros((1, 1, 4, 4), np.float32))


def test_mixing_device_input_with_host_parameters_is_a_type_error():
    conv = L.Linear(3, 2)  # built on the CPU
    backend.use(make_device())
    x = backend.to_device(np.zeros((1, 3), np.float32))
    with pytest.raises(TypeError, match=r"Linear\(3, 2\).*device array.*host arrays"):
        conv.forward(x)


def test_layer_to_moves_parameters_and_buffers():
    bn = L.BatchNorm2d(2)
    dev = make_device()
    backend.use(dev)
    bn.to()
    assert all(isinstance(a, StandInArray) for a in list(bn.params.values()) + list(bn.buffers.values()))
    bn.to("cpu")
    assert backend.current() == "cpu"
    assert all(type(a) is np.ndarray for a in bn.params.values())


def test_layer_runs_on_the_standin_device():
    backend.use(make_device())
    conv = L.Conv2d(2, 3, 3, padding=1)
    x = backend.to_device(np.ones((1, 2, 4, 4), np.float32))
    y = conv.forward(x)
    assert y.shape == (1, 3, 4, 4)


def test_seed_makes_initialisation_reproducible():
    backend.seed(42)
    a = L.Conv2d(3, 4, 3).params["weight"].copy()
    backend.seed(42)
    b = L.Conv2d(3, 4, 3).params["weight"]
    np.testing.assert_array_equal(a, b)
    backend.seed(43)
    assert not np.array_equal(a, L.Conv2d(3, 4, 3).params["weight"])


@pytest.mark.gpu
def test_gpu_backend_layers_match_cpu():
    if not backend.gpu_available():
        pytest.skip("no GPU: CuPy missing or no CUDA device visible (tests/test_gpu.py covers the GPU)")
    backend.seed(0)
    conv = L.Conv2d(3, 4, 3, padding=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y_cpu = conv.forward(x)
    conv.to("gpu")
    y_gpu = backend.to_host(conv.forward(backend.to_device(x)))
    np.testing.assert_allclose(y_gpu, y_cpu, rtol=1e-5, atol=1e-6)
