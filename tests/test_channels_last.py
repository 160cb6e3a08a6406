"""The channels-last layout: activations keep their shape (N, C, H, W) and their
values, only their memory order changes, and every layer gives the same numbers
whichever order it is handed (see tinyvgg/ops/cpu/channels_last.py)."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from tinyvgg import layers as L
from tinyvgg.models import vgg
from tinyvgg.ops import channel_rows, conv2d_backward, conv2d_forward, maxpool2d_backward, maxpool2d_forward
from tinyvgg.ops.cpu import channels_last as cl
from tinyvgg.ops.cpu import conv as conv_mod
from tinyvgg.ops.cpu import parallel
from tinyvgg.reference import conv2d_backward_loop, conv2d_forward_loop

TIGHT = dict(rtol=1e-10, atol=1e-12)


def as_channels_last(a):
    """The same (N, C, H, W) array, stored (N, H, W, C)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def test_as_channels_last_keeps_shape_and_values():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    y = as_channels_last(x)
    assert y.shape == x.shape and cl.is_channels_last(y) and not cl.is_channels_last(x)
    np.testing.assert_array_equal(y, x)
    assert channel_rows(y).shape == (2 * 4 * 5, 3) and np.shares_memory(channel_rows(y), y)
    assert channel_rows(x) is None


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("weight_stored", ["nchw", "channels_last"])
@pytest.mark.parametrize("stored", ["nchw", "channels_last"])
@pytest.mark.parametrize("k,s,p", [((3, 3), 1, 1), ((3, 3), 2, 1), ((1, 1), 1, 0), ((2, 3), 1, (2, 1))])
def test_conv_takes_either_layout_and_returns_channels_last(stored, weight_stored, chunk_bytes, k, s, p):
    """Either layout of the input and of the weight, whole or in chunks (chunk_bytes=1:
    one row of one image per chunk where it can): the loops' numbers; the output and dx
    stored channels-last, dW stored as the weight is."""
    r = np.random.default_rng(1)
    x = r.standard_normal((3, 4, 7, 9))
    w = r.standard_normal((5, 4) + k)
    b = r.standard_normal(5)
    xin = as_channels_last(x) if stored == "channels_last" else x
    win = cl.channels_last_weight(w) if weight_stored == "channels_last" else w
    assert cl.is_channels_last(win) == (weight_stored == "channels_last" or k == (1, 1))
    y, cache = conv2d_forward(xin, win, b, s, p, chunk_bytes=chunk_bytes)
    assert isinstance(cache, cl.ChannelsLastConvCache) and cl.is_channels_last(y)
    np.testing.assert_allclose(y, conv2d_forward_loop(x, w, b, s, p), **TIGHT)
    dy = r.standard_normal(y.shape)
    for dy_in in (dy, as_channels_last(dy)):
        dx, dw, db = conv2d_backward(dy_in, cache)
        dx_r, dw_r, db_r = conv2d_backward_loop(dy, x, w, s, p)
        assert cl.is_channels_last(dx) and dw.shape == w.shape
        assert cl.is_channels_last(dw) == cl.is_channels_last(win)
        assert dw.flags.c_contiguous == win.flags.c_contiguous
        np.testing.assert_allclose(dx, dx_r, **TIGHT)
        np.testing.assert_allclose(dw, dw_r, **TIGHT)
        np.testing.assert_allclose(db, db_r, **TIGHT)


def test_channels_last_weight_keeps_values_and_leaves_other_arrays_alone(monkeypatch):
    w = np.random.default_rng(2).standard_normal((6, 3, 3, 2)).astype(np.float32)
    v = cl.channels_last_weight(w)
    assert v.shape == w.shape and v.dtype == w.dtype and cl.is_channels_last(v) and not v.flags.c_contiguous
    np.testing.assert_array_equal(v, w)
    assert cl.channels_last_weight(v) is v                      # stored so already: no copy
    w3 = w[:, :, 0]
    assert cl.channels_last_weight(w3) is w3                    # not 4-D: returned as it is
    monkeypatch.setattr(cl, "CHANNELS_LAST_WEIGHTS", False)
    assert cl.channels_last_weight(w) is w


def test_conv2d_stores_its_weight_and_gradient_channels_last():
    layer = L.Conv2d(3, 8, 3, padding=1)
    w = layer.params["weight"]
    assert cl.is_channels_last(w) and not w.flags.c_contiguous
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32)
    y = layer.forward(x, train=True)
    layer.backward(np.ones_like(y))
    assert layer.grads["weight"].strides == w.strides
    assert layer.to("cpu").params["weight"] is w                # not moved: the same array


@pytest.fixture(params=["plain", "row_slices"])
def bn_path(request, monkeypatch):
    """BatchNorm's plain passes, or the same passes in slices of rows on two worker
    threads (forced here even for tiny inputs)."""
    if request.param == "row_slices":
        old = parallel.workers()
        parallel.set_workers(2)
        monkeypatch.setattr(parallel, "MIN_TASK_BYTES", 1)
        yield request.param
        parallel.set_workers(old)
    else:
        yield request.param


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gives_the_same_numbers_in_both_layouts(train, bn_path):
    r = np.random.default_rng(2)
    x = r.standard_normal((4, 3, 5, 6)) * 3 + 1
    dy = r.standard_normal(x.shape)
    out = []
    for xin, dyin in ((x, dy), (as_channels_last(x), as_channels_last(dy))):
        bn = L.BatchNorm2d(3, dtype=np.float64)
        bn.params["weight"][...] = [0.5, 2.0, -1.0]
        bn.params["bias"][...] = [0.1, 0.0, -0.3]
        bn.buffers["running_mean"][...] = [0.2, -0.1, 0.4]
        bn.buffers["running_var"][...] = [1.5, 0.7, 2.0]
        y = bn.forward(xin, train=train)
        assert cl.is_channels_last(y) == cl.is_channels_last(xin)
        dx = bn.backward(dyin)
        out.append((y, dx, bn.grads["weight"], bn.grads["bias"], bn.buffers["running_mean"].copy(),
                    bn.buffers["running_var"].copy()))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, **TIGHT)


def test_batchnorm_in_row_slices_sums_through_the_reduction_seam(bn_path):
    """With ``reduce`` set (data-parallel training), the sliced passes hand their
    per-channel sums to it like the plain ones: a reduction that doubles every sum
    and count (two identical shares) leaves the means, so the numbers are unchanged."""
    r = np.random.default_rng(6)
    x = as_channels_last(r.standard_normal((4, 3, 5, 6)))
    dy = as_channels_last(r.standard_normal(x.shape))
    out, calls = [], []
    for reduce in (None, lambda s: (calls.append(s.size), s.__imul__(2))):
        bn = L.BatchNorm2d(3, dtype=np.float64)
        bn.reduce = reduce
        y = bn.forward(x, train=True)
        out.append((y, bn.backward(dy), bn.buffers["running_var"].copy()))
    assert calls == [4, 4, 7]  # mean, variance (C sums + count), then the two backward means
    np.testing.assert_allclose(out[0][0], out[1][0], **TIGHT)
    np.testing.assert_allclose(out[0][1], out[1][1], **TIGHT)
    assert not np.allclose(out[0][2], out[1][2])  # the unbiased factor m/(m-1) sees 2m values


def test_pool_and_relu_keep_the_layout_and_the_values():
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 3, 6, 8))
    xl = as_channels_last(x)
    y, c = maxpool2d_forward(x, 2, 2)
    yl, cl_cache = maxpool2d_forward(xl, 2, 2)
    assert cl.is_channels_last(yl)
    np.testing.assert_array_equal(y, yl)
    dy = r.standard_normal(y.shape)
    dxl = maxpool2d_backward(as_channels_last(dy), cl_cache)
    assert cl.is_channels_last(dxl)
    np.testing.assert_array_equal(maxpool2d_backward(dy, c), dxl)
    relu = L.ReLU()
    assert cl.is_channels_last(relu.forward(xl))
    assert cl.is_channels_last(relu.backward(as_channels_last(r.standard_normal(x.shape))))


def _step(model, x, y, input_grad=True):
    from tinyvgg.losses import SoftmaxCrossEntropy
    loss = SoftmaxCrossEntropy()
    logits = model.forward(x, train=True)
    loss.forward(logits, y)
    dx = model.backward(loss.backward(), input_grad=input_grad)
    return logits, dx, {(i, k): g.copy() for i, layer in enumerate(model.layers) for k, g in layer.grads.items()}


def _model():
    from tinyvgg import backend
    backend.seed(0)  # the same weights every time
    return vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, batch_norm=True,
               dropout=0.0, init="he", dtype=np.float64)


def test_a_whole_vgg_gives_the_same_numbers_channels_last_or_first(monkeypatch):
    r = np.random.default_rng(4)
    x = r.standard_normal((3, 3, 32, 32))
    y = np.array([0, 3, 1])
    first = _step(_model(), x, y)
    monkeypatch.setitem(conv_mod.OPTIMISATIONS, "channels_last", False)
    second = _step(_model(), x, y)
    np.testing.assert_allclose(first[0], second[0], **TIGHT)
    np.testing.assert_allclose(first[1], second[1], **TIGHT)
    assert first[2].keys() == second[2].keys()
    for key in first[2]:
        np.testing.assert_allclose(first[2][key], second[2][key], rtol=1e-9, atol=1e-11)


def test_model_backward_without_input_grad_skips_dx_and_keeps_every_gradient():
    r = np.random.default_rng(5)
    x = r.standard_normal((2, 3, 32, 32))
    y = np.array([1, 2])
    _, dx, grads = _step(_model(), x, y)
    _, none, grads2 = _step(_model(), x, y, input_grad=False)
    assert dx.shape == x.shape and none is None
    for key in grads:
        np.testing.assert_array_equal(grads[key], grads2[key])


def _blas_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_blas_is_single_threaded_while_the_workers_run_and_gets_its_threads_back():
    old = parallel.workers()
    try:
        parallel.set_workers(1)
        before = _blas_threads()
        parallel.set_workers(2)
        parallel.run(lambda i: None, [(0,), (1,)], np)
        assert _blas_threads() == [1] * len(before)
        parallel.set_workers(1)
        assert _blas_threads() == before
    finally:
        parallel.set_workers(old)


@pytest.mark.parametrize("stored", ["nchw", "channels_last", "strided_view"])
def test_relu_in_slices_equals_the_plain_relu(stored, bn_path):
    r = np.random.default_rng(7)
    x = r.standard_normal((3, 4, 5, 6))
    x[0, 0, 0, :3] = [0.0, -0.0, -1e-300]  # the gradient at 0 is 0; no -0.0 in the output
    dy = r.standard_normal(x.shape)
    if stored == "channels_last":
        x, dy = as_channels_last(x), as_channels_last(dy)
    elif stored == "strided_view":
        x, dy = np.concatenate([x, x], axis=3)[..., ::2], dy  # not dense: the plain version
    relu = L.ReLU()
    y = relu.forward(x)
    dx = relu.backward(dy)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert not np.signbit(y).any()
    np.testing.assert_array_equal(dx, dy * (x > 0))
    if stored == "channels_last":
        assert cl.is_channels_last(y) and cl.is_channels_last(dx)


@pytest.mark.parametrize("stored", ["nchw", "channels_last"])
def test_batchnorm_in_eval_mode_never_calls_the_reduction(stored, bn_path):
    """Running statistics are constants: evaluation (forward and backward) needs no
    sums from the other processes, on the plain path and the fast one."""
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 4))
    if stored == "channels_last":
        x = as_channels_last(x)
    calls = []
    bn = L.BatchNorm2d(3, dtype=np.float64)
    bn.reduce = lambda s: calls.append(s.size)
    y = bn.forward(x, train=False)
    dx = bn.backward(np.ones_like(y))
    assert calls == []
    np.testing.assert_allclose(dx, np.ones_like(x) / np.sqrt(1 + bn.eps), rtol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_columns_kept_from_forward_give_the_same_gradients_as_recomputed_ones(chunk_bytes, monkeypatch):
    """Small layers keep the forward's columns for backward (KEEP_COLUMNS_BYTES); the
    gradients equal those of columns built again, and a second backward on the same
    cache (the kept columns were used up) still gives them."""
    r = np.random.default_rng(9)
    x = as_channels_last(r.standard_normal((5, 3, 9, 8)))
    w, b = r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    dy = r.standard_normal((5, 4, 9, 8))
    out = {}
    for keep in (0, 1 << 30):
        monkeypatch.setattr(cl, "KEEP_COLUMNS_BYTES", keep)
        y, cache = conv2d_forward(x, w, b, 1, 1, chunk_bytes=chunk_bytes)
        assert (cache[-1] is None) == (keep == 0) and (keep == 0 or len(cache[-1]) >= 1)
        out[keep] = conv2d_backward(dy, cache)
        assert keep == 0 or cache[-1] == {}  # used up: the buffers go back to the scratch pool
        again = conv2d_backward(dy, cache)
        for a, e in zip(out[keep], again):
            np.testing.assert_allclose(a, e, **TIGHT)
    dx_r, dw_r, db_r = conv2d_backward_loop(dy, np.asarray(x), w, 1, 1)
    for keep, (dx, dw, db) in out.items():
        np.testing.assert_allclose(dx, dx_r, **TIGHT)
        np.testing.assert_allclose(dw, dw_r, **TIGHT)
        np.testing.assert_allclose(db, db_r, **TIGHT)


def test_conv2d_keeps_columns_only_when_training():
    """Evaluation (train=False) is followed by no backward: the layer keeps no columns,
    and a backward after it still works (built again from the input)."""
    r = np.random.default_rng(10)
    layer = L.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
    x = r.standard_normal((2, 3, 6, 6))
    layer.forward(x, train=True)
    assert layer._cache[0][-1]  # the kept columns
    y = layer.forward(x, train=False)
    assert layer._cache[0][-1] is None
    dx = layer.backward(np.ones_like(y))
    dx_r, dw_r, _ = conv2d_backward_loop(np.ones(y.shape), x, layer.params["weight"], 1, 1)
    np.testing.assert_allclose(dx, dx_r, **TIGHT)
    np.testing.assert_allclose(layer.grads["weight"], dw_r, **TIGHT)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("keep", [0, 1 << 30])
def test_bands_of_rows_when_one_image_is_over_the_budget(relu, keep, monkeypatch):
    """When one image's columns alone are over chunk_bytes, a stride-1 'same'
    convolution works on bands of output rows of one image (here 3 rows of 7, the
    last band shorter), forward, dW and dx's convolution alike; the numbers are
    the loop reference's, with or without the forward's columns kept."""
    monkeypatch.setattr(cl, "KEEP_COLUMNS_BYTES", keep)
    r = np.random.default_rng(11)
    n, c, f, h, w = 3, 4, 5, 7, 6
    x = as_channels_last(r.standard_normal((n, c, h, w)))
    wt, b = r.standard_normal((f, c, 3, 3)), r.standard_normal(f)
    row_bytes = 3 * 3 * max(c, f) * w * 8          # one output row's columns (dy's are wider: F > C)
    budget = 3 * row_bytes + 7
    g = cl._Geometry(x.shape, f, (3, 3), (1, 1), (1, 1), 8, budget)
    cl._dx_geometry(g, wt.shape, budget, 8)
    assert (g.chunk, g.band) == (1, 3) and [t[3:] for t in g.chunks()[:3]] == [(0, 3), (3, 6), (6, 7)]
    assert len(g.chunks()) == n * 3
    y, cache = conv2d_forward(x, wt, b, 1, 1, relu=relu, chunk_bytes=budget)
    y_r = conv2d_forward_loop(np.asarray(x), wt, b, 1, 1)
    if relu:
        y_r = np.maximum(y_r, 0)
    np.testing.assert_allclose(y, y_r, **TIGHT)
    dy = r.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    dy_r = dy * (y_r > 0) if relu else dy
    dx_r, dw_r, db_r = conv2d_backward_loop(dy_r, np.asarray(x), wt, 1, 1)
    np.testing.assert_allclose(dx, dx_r, **TIGHT)
    np.testing.assert_allclose(dw, dw_r, **TIGHT)
    np.testing.assert_allclose(db, db_r, **TIGHT)


def test_no_bands_where_dx_could_not_share_them():
    """Stride 2, or an output smaller than the input: whole images, however small the budget."""
    for shape, f, stride, padding in [((2, 3, 8, 8), 4, (2, 2), (1, 1)), ((2, 3, 8, 8), 4, (1, 1), (0, 0))]:
        g = cl._Geometry(shape, f, (3, 3), stride, padding, 8, 1)
        assert g.band == g.oh and g.chunk == 1
    g = cl._Geometry((2, 3, 8, 8), 4, (3, 3), (1, 1), (1, 1), 8, 1)
    assert g.band == 1 and len(g.chunks()) == 2 * 8  # a 'same' convolution: one row per chunk


def test_memory_order_names_the_axes_outermost_first():
    from tinyvgg.ops.shapes import memory_order
    w = np.zeros((4, 3, 2, 5), np.float32)
    assert memory_order(w) == (0, 1, 2, 3)
    assert memory_order(cl.channels_last_weight(w)) == (0, 2, 3, 1)
    assert memory_order(np.asfortranarray(w)) == (3, 2, 1, 0)
