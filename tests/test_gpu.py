"""The GPU path (CuPy on a CUDA device) against the CPU path.

Run with ``python -m pytest -m gpu tests/test_gpu.py -q`` on a machine with CuPy
and a CUDA device; everywhere else every test here is skipped with the reason.

- every layer's forward and backward on the GPU equals the CPU's (float32,
  relative error <= 1e-5 of the largest CPU value);
- float64 gradient checks pass on the GPU (every layer, and a small VGG);
- a few training steps of a small VGG give the same losses on both devices
  (same seed: weights are drawn on the host; dropout 0, because dropout masks
  are drawn on the device that holds the activations and differ between
  devices);
- a checkpoint saved on the GPU loads on the CPU, and the reverse;
- the CUDA kernels of :mod:`tinyvgg.ops.gpu.kernels` equal their NumPy twins,
  64-bit indexing included;
- an out-of-memory error is recognised and explained;
- a training step copies only its batch to the GPU and nothing back.

Float32 tolerances assume full float32 GEMMs: with ``CUPY_TF32=1`` CuPy's
products use TF32 (10-bit mantissa) and the 1e-5 comparisons fail.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyvgg import backend, checkpoint
from tinyvgg import layers as L
from tinyvgg.gradcheck import check_gradients
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.ops import col2im, im2col, maxpool2d_backward, maxpool2d_forward
from tinyvgg.ops import gpu as ops_gpu
from tinyvgg.ops.gpu import kernels as ck
from tinyvgg.ops.gpu.twins import (col2im_twin, im2col_twin, maxpool2d_backward_twin,
                                      maxpool2d_forward_twin)
from tinyvgg.optim import SGD
from tests.test_kernel_twins import _pool_input, window_case
from tests.test_layers import TOL as GRADCHECK_TOL
from tests.test_layers import layer_cases

pytestmark = pytest.mark.gpu

F32_TOL = 1e-5
on_gpu_settings = settings(max_examples=25, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def gpu():
    """The GPU device, or a skip that says why there is none."""
    try:
        dev = backend.use("gpu")
    except backend.GPUUnavailableError as e:
        pytest.skip(f"no GPU: {e}")
    yield dev
    backend.use("cpu")


def _rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    return float(np.abs(got - want).max(initial=0.0) / scale)


def _assert_close(got, want, what, tol=F32_TOL):
    err = _rel_err(got, want)
    assert err <= tol, f"{what}: relative error {err:.2e} > {tol:g}" + (
        " (CUPY_TF32=1 is set: TF32 products are not float32-exact)" if os.environ.get("CUPY_TF32") == "1" else "")


def _is_gpu_array(a):
    return backend.is_device_array(a) and type(a).__module__.startswith("cupy")


# --------------------------------------------------------------------------
# every layer: GPU == CPU in float32
# --------------------------------------------------------------------------

F32_LAYERS = {
    "conv3x3_p1": (lambda: L.Conv2d(3, 8, 3, padding=1), (4, 3, 12, 12)),
    "conv_vgg_64_28": (lambda: L.Conv2d(64, 64, 3, padding=1), (8, 64, 28, 28)),
    "conv_nonsquare_strided": (lambda: L.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0)), (2, 4, 9, 7)),
    "conv1x1": (lambda: L.Conv2d(8, 16, 1), (2, 8, 5, 5)),
    "conv_no_bias": (lambda: L.Conv2d(2, 3, 3, bias=False), (2, 2, 6, 6)),
    "maxpool2x2": (lambda: L.MaxPool2d(2, 2), (4, 8, 12, 12)),
    "maxpool2x2_odd": (lambda: L.MaxPool2d(2, 2), (2, 3, 7, 9)),
    "maxpool3x3_s1_p1": (lambda: L.MaxPool2d(3, 1, 1), (2, 3, 7, 6)),
    "maxpool_nonsquare": (lambda: L.MaxPool2d((3, 2), (2, 1)), (2, 3, 9, 7)),
    "relu": (lambda: L.ReLU(), (4, 5, 6)),
    "dropout_p0": (lambda: L.Dropout(0.0), (4, 10)),
    "linear": (lambda: L.Linear(20, 7), (6, 20)),
    "flatten": (lambda: L.Flatten(), (2, 3, 4, 4)),
    "lrn": (lambda: L.LocalResponseNorm(5), (2, 7, 4, 4)),
    "batchnorm2d": (lambda: L.BatchNorm2d(6), (4, 6, 5, 5)),
    "batchnorm1d": (lambda: L.BatchNorm1d(10), (8, 10)),
}


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("case", sorted(F32_LAYERS))
def test_layer_forward_and_backward_match_the_cpu(gpu, case, train):
    make, shape = F32_LAYERS[case]
    r = np.random.default_rng(1)
    x = r.standard_normal(shape).astype(np.float32)
    backend.use("cpu")
    backend.seed(0)
    cpu_layer = make()
    y_cpu = cpu_layer.forward(x, train=train)
    dy = r.standard_normal(y_cpu.shape).astype(np.float32)
    dx_cpu = cpu_layer.backward(dy)

    backend.use(gpu)
    backend.seed(0)
    gpu_layer = make()  # the same initial weights: drawn on the host, then moved
    xg = backend.to_device(x)
    y_gpu = gpu_layer.forward(xg, train=train)
    assert _is_gpu_array(y_gpu) and y_gpu.dtype == np.float32
    dx_gpu = gpu_layer.backward(backend.to_device(dy))
    assert _is_gpu_array(dx_gpu) and dx_gpu.dtype == np.float32
    _assert_close(backend.to_host(y_gpu), y_cpu, f"{case} forward")
    _assert_close(backend.to_host(dx_gpu), dx_cpu, f"{case} dx")
    for k, g in cpu_layer.grads.items():
        assert _is_gpu_array(gpu_layer.grads[k])
        _assert_close(backend.to_host(gpu_layer.grads[k]), g, f"{case} d{k}")
    for k, b in cpu_layer.buffers.items():
        _assert_close(backend.to_host(gpu_layer.buffers[k]), b, f"{case} {k}")


def test_dropout_on_the_gpu_masks_and_scales(gpu):
    # The masks are drawn on the GPU (they differ from the CPU's): check what they do.
    p = 0.4
    x = backend.to_device(np.random.default_rng(0).uniform(1, 2, (64, 128)).astype(np.float32))
    d = L.Dropout(p)
    y = backend.to_host(d.forward(x, train=True))
    xh = backend.to_host(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], xh[kept] / (1 - p), rtol=1e-6)
    assert abs(1 - kept.mean() - p) < 0.02
    dx = backend.to_host(d.backward(backend.to_device(np.ones_like(xh))))
    np.testing.assert_array_equal(dx != 0, kept)
    assert d.forward(x, train=False) is x


def test_loss_matches_the_cpu_and_stays_on_the_gpu(gpu):
    r = np.random.default_rng(2)
    z = r.standard_normal((16, 10)).astype(np.float32)
    y = r.integers(0, 10, 16)
    backend.use("cpu")
    cpu = SoftmaxCrossEntropy()
    l_cpu = cpu.forward(z, y)
    g_cpu = cpu.backward()
    backend.use(gpu)
    dev = SoftmaxCrossEntropy()
    l_gpu = dev.forward(backend.to_device(z), backend.to_device(y))
    assert _is_gpu_array(l_gpu) and l_gpu.ndim == 0  # read back only when logged
    assert abs(float(l_gpu) - l_cpu) <= F32_TOL * abs(l_cpu)
    _assert_close(backend.to_host(dev.backward()), g_cpu, "dlogits")


def test_a_host_input_to_a_gpu_layer_is_a_type_error(gpu):
    conv = L.Conv2d(1, 2, 3)
    with pytest.raises(TypeError, match=r"host array \(numpy.ndarray\).*device arrays"):
        conv.forward(np.zeros((1, 1, 4, 4), np.float32))


# --------------------------------------------------------------------------
# float64 gradient checks on the GPU
# --------------------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("case", sorted(layer_cases()))
def test_gradient_check_on_the_gpu(gpu, case, train):
    make, shape = layer_cases()[case]
    layer = make()
    if isinstance(layer, L._BatchNorm):
        r = np.random.default_rng(5)
        for d in (layer.params, layer.buffers):
            for k in d:
                d[k][...] = backend.to_device(r.uniform(0.5, 1.5, d[k].shape))
    x = backend.to_device(np.random.default_rng(7).standard_normal(shape))
    for p in layer.params.values():
        assert _is_gpu_array(p) and p.dtype == np.float64
    report = check_gradients(layer, x, train=train)
    assert {r.name for r in report.results} == {"input"} | set(layer.params)
    assert report.max_error <= GRADCHECK_TOL, str(report)


def test_gradient_check_of_a_small_vgg_on_the_gpu(gpu):
    backend.seed(0)
    m = vgg("vgg11", num_classes=5, input_size=32, width=1 / 16, hidden=16, dropout=0.0,
            dtype=np.float64, init="glorot")
    x = backend.to_device(np.random.default_rng(10).standard_normal((2, 3, 32, 32)))
    report = check_gradients(m, x, train=True, max_coords=6, seed=0, h=1e-5)
    assert report.max_error <= 1e-6, str(report)


# --------------------------------------------------------------------------
# training: the same losses on both devices
# --------------------------------------------------------------------------

def _train(device, steps=5):
    backend.use(device)
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=32, batch_norm=True,
                dropout=0.0, init="glorot")
    opt = SGD(model, lr=0.02, momentum=0.9, weight_decay=5e-4)
    loss_fn = SoftmaxCrossEntropy()
    r = np.random.default_rng(3)
    losses = []
    for _ in range(steps):
        x = backend.to_device(r.standard_normal((8, 3, 32, 32)).astype(np.float32))
        y = backend.to_device(r.integers(0, 4, 8))
        loss = loss_fn.forward(model.forward(x, train=True), y)
        model.backward(loss_fn.backward())
        opt.step()
        losses.append(float(loss))
    return losses, model.state_dict()


def test_training_steps_give_the_same_losses_on_both_devices(gpu):
    cpu_losses, cpu_state = _train("cpu")
    gpu_losses, gpu_state = _train(gpu)
    np.testing.assert_allclose(gpu_losses[0], cpu_losses[0], rtol=1e-5)
    # Round-off differences grow a little with every step; still float32-close.
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    # The weights too, loosely: a value within float32 round-off of a ReLU's or a
    # max-pool's kink can take the other branch on the other device and send one
    # gradient entry elsewhere (seen in a CPU dry run: 1e-3 on the first conv's
    # weights after 5 steps). Conv biases right before BatchNorm have gradient 0,
    # so their updates are pure round-off: not compared.
    for k, v in cpu_state.items():
        if v.dtype.kind == "f" and not (k.startswith("features.") and k.endswith(".bias")
                                        and v.shape == cpu_state[k.replace(".bias", ".weight")].shape[:1]
                                        and cpu_state[k.replace(".bias", ".weight")].ndim == 4):
            _assert_close(gpu_state[k], v, k, tol=1e-2)


def test_a_training_step_copies_only_the_batch(gpu):
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, batch_norm=True,
                dropout=0.5, init="glorot")
    opt, loss_fn = SGD(model, lr=0.01), SoftmaxCrossEntropy()
    x_host = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y_host = np.arange(4)
    for _ in range(2):
        backend.reset_transfer_counts()
        x, y = backend.to_device(x_host), backend.to_device(y_host)
        loss_fn.forward(model.forward(x, train=True), y)
        model.backward(loss_fn.backward())
        opt.step()
        assert backend.transfer_counts() == {"host_to_device": 2, "device_to_host": 0}


# --------------------------------------------------------------------------
# checkpoints move between devices
# --------------------------------------------------------------------------

def test_checkpoint_saved_on_the_gpu_loads_on_the_cpu_and_back(gpu, tmp_path):
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, batch_norm=True,
                dropout=0.0, init="glorot")
    opt = SGD(model, lr=0.01)
    x_host = np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32)
    x = backend.to_device(x_host)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(model.forward(x, train=True), backend.to_device(np.arange(4)))
    model.backward(loss_fn.backward())
    opt.step()
    want = backend.to_host(model.forward(x, train=False))
    checkpoint.save(tmp_path / "gpu.npz", model, opt, epoch=1)

    backend.use("cpu")
    on_cpu = checkpoint.load(tmp_path / "gpu.npz")
    assert all(type(p) is np.ndarray for p in on_cpu.model.parameters())
    _assert_close(on_cpu.model.forward(x_host, train=False), want, "GPU checkpoint on the CPU")
    checkpoint.save(tmp_path / "cpu.npz", on_cpu.model, on_cpu.optimizer_state)

    backend.use(gpu)
    back = checkpoint.load(tmp_path / "cpu.npz")
    assert all(_is_gpu_array(p) for p in back.model.parameters())
    _assert_close(backend.to_host(back.model.forward(x, train=False)), want, "CPU checkpoint on the GPU")
    opt2 = SGD(back.model, lr=0.01)
    opt2.load_state_dict(back.optimizer_state)
    assert all(_is_gpu_array(v) for v in opt2.buffers.values())


# --------------------------------------------------------------------------
# the kernels equal their twins
# --------------------------------------------------------------------------

@on_gpu_settings
@given(case=window_case(), dtype=st.sampled_from([np.float32, np.float64]), knp=st.booleans())
def test_im2col_and_col2im_kernels_equal_their_twins(gpu, case, dtype, knp):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    layout = "knp" if knp else "nkp"
    x = r.standard_normal((n, c, h, w)).astype(dtype)
    cols = ck.im2col_gpu(backend.to_device(x), k, s, p, layout=layout)
    assert _is_gpu_array(cols) and cols.dtype == dtype
    np.testing.assert_array_equal(backend.to_host(cols), im2col_twin(x, k, s, p, layout))
    cc = r.standard_normal(cols.shape).astype(dtype)
    dx = backend.to_host(ck.col2im_gpu(backend.to_device(cc), x.shape, k, s, p, layout=layout))
    tol = 1e-6 if dtype == np.float32 else 1e-13  # the GPU may fuse a multiply-add: not bit-exact
    np.testing.assert_allclose(dx, col2im_twin(cc, x.shape, k, s, p, layout), rtol=tol, atol=tol)
    if layout == "nkp":
        np.testing.assert_allclose(dx, col2im(cc, x.shape, k, s, p), rtol=tol, atol=tol)


@on_gpu_settings
@given(case=window_case(pool=True), dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans())
def test_maxpool_kernels_equal_their_twins(gpu, case, dtype, ties):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = _pool_input(r, (n, c, h, w), ties).astype(dtype)
    y, cache = ck.maxpool2d_forward_gpu(backend.to_device(x), k, s, p)
    y_t, arg_t = maxpool2d_forward_twin(x, k, s, p)
    np.testing.assert_array_equal(backend.to_host(y), y_t)
    np.testing.assert_array_equal(backend.to_host(cache[1]), arg_t)
    dy = r.standard_normal(y.shape).astype(dtype)
    dx = ck.maxpool2d_backward_gpu(backend.to_device(dy), cache[1], x.shape, k, s, p)
    np.testing.assert_allclose(backend.to_host(dx), maxpool2d_backward_twin(dy, arg_t, x.shape, k, s, p),
                               rtol=1e-6, atol=1e-6)
    # The CPU's cache and the GPU's are interchangeable.
    _, cache_cpu = maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(backend.to_host(cache[1]), cache_cpu[1])
    np.testing.assert_allclose(backend.to_host(dx), maxpool2d_backward(dy, cache_cpu), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", [((8, 64, 28, 28), 3, 1, 1), ((2, 3, 33, 31), (5, 3), (2, 1), (2, 0)),
                                          ((4, 16, 7, 7), 1, 1, 0)])
def test_gpu_convolution_equals_the_cpu(gpu, dtype, shape, k, s, p):
    r = np.random.default_rng(6)
    kk = (k, k) if isinstance(k, int) else k
    x = r.standard_normal(shape).astype(dtype)
    wt = (r.standard_normal((12, shape[1]) + kk) / np.sqrt(shape[1] * kk[0] * kk[1])).astype(dtype)
    b = r.standard_normal(12).astype(dtype)
    backend.use("cpu")
    conv = L.Conv2d(shape[1], 12, kk, s, p, dtype=dtype)
    conv.params["weight"][...], conv.params["bias"][...] = wt, b
    y_cpu = conv.forward(x)
    dy = r.standard_normal(y_cpu.shape).astype(dtype)
    dx_cpu = conv.backward(dy)
    backend.use(gpu)
    tol = F32_TOL if dtype == np.float32 else 1e-12
    for chunk in (None, 1):
        y, cache = ops_gpu.conv2d_forward_gpu(backend.to_device(x), backend.to_device(wt), backend.to_device(b),
                                         s, p, chunk_bytes=chunk)
        _assert_close(backend.to_host(y), y_cpu, "conv forward", tol)
        dx, dw, db = ops_gpu.conv2d_backward_gpu(backend.to_device(dy), cache)
        _assert_close(backend.to_host(dx), dx_cpu, "conv dx", tol)
        _assert_close(backend.to_host(dw), conv.grads["weight"], "conv dw", tol)
        _assert_close(backend.to_host(db), conv.grads["bias"], "conv db", tol)


def test_ops_on_gpu_arrays_equal_the_kernels(gpu):
    # Whatever tinyvgg.ops dispatches to on the GPU, it computes what the kernels do.
    x = backend.to_device(np.random.default_rng(8).standard_normal((2, 3, 9, 8)).astype(np.float32))
    np.testing.assert_array_equal(backend.to_host(im2col(x, 3, 2, 1)), backend.to_host(ck.im2col_gpu(x, 3, 2, 1)))
    y, cache = maxpool2d_forward(x, 3, 2, 1)
    yk, cache_k = ck.maxpool2d_forward_gpu(x, 3, 2, 1)
    np.testing.assert_array_equal(backend.to_host(y), backend.to_host(yk))
    np.testing.assert_array_equal(backend.to_host(cache[1]), backend.to_host(cache_k[1]))


def test_kernels_index_past_two_to_the_31(gpu):
    cp = gpu.xp
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 16 * 2**30:
        pytest.skip(f"needs 16 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    # cols of (80, 576, 50176) float32: 2.3e9 elements, flat indices beyond 2**31.
    cp.random.seed(0)
    x = cp.random.standard_normal((80, 64, 224, 224), dtype=cp.float32)
    cols = ck.im2col_gpu(x, 3, 1, 1)
    assert cols.size > 2**31
    r = np.random.default_rng(0)
    flat = r.integers(2**31, cols.size, 2000)
    n, rest = np.divmod(flat, cols.shape[1] * cols.shape[2])
    row, q = np.divmod(rest, cols.shape[2])
    c, ij = np.divmod(row, 9)
    i, j = np.divmod(ij, 3)
    oh, ow = np.divmod(q, 224)
    hh, ww = oh + i - 1, ow + j - 1
    inside = (hh >= 0) & (hh < 224) & (ww >= 0) & (ww < 224)
    xs = backend.to_host(x[cp.asarray(n), cp.asarray(c), cp.asarray(np.clip(hh, 0, 223)),
                           cp.asarray(np.clip(ww, 0, 223))])
    got = backend.to_host(cols.reshape(-1)[cp.asarray(flat)])
    np.testing.assert_array_equal(got, np.where(inside, xs, 0))
    # col2im(im2col(x)) = x times the number of windows that read each pixel.
    back = ck.col2im_gpu(cols, x.shape, 3, 1, 1)
    del cols
    count = cp.asarray(col2im(im2col(np.ones((1, 1, 224, 224), np.float32), 3, 1, 1), (1, 1, 224, 224), 3, 1, 1))
    err = float(cp.abs(back - x * count).max() / cp.abs(x * count).max())
    assert err <= 1e-6


# --------------------------------------------------------------------------
# out of memory
# --------------------------------------------------------------------------

def test_out_of_memory_is_recognised_and_explained(gpu):
    cp = gpu.xp
    with pytest.raises(Exception) as e:
        cp.empty(1 << 52, dtype=cp.uint8)  # 4 PiB
    assert ops_gpu.is_out_of_memory(e.value), f"{type(e.value).__module__}.{type(e.value).__name__}: {e.value}"
    msg = ops_gpu.oom_message(256, e.value)
    assert "batch size 256" in msg and "--batch-size 128" in msg and type(e.value).__name__ in msg
    assert not ops_gpu.is_out_of_memory(ValueError("not memory"))
