"""Every layer: float64 gradient checks, dtypes, semantics and clear errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyvgg import backend
from tinyvgg import layers as L
from tinyvgg.gradcheck import check_gradients

F64 = np.float64
TOL = 1e-6


def layer_cases():
    """(layer factory, input shape, whether train mode matters)."""
    return {
        "conv3x3": (lambda: L.Conv2d(3, 4, 3, padding=1, dtype=F64), (2, 3, 5, 5)),
        "conv1x1": (lambda: L.Conv2d(3, 4, 1, dtype=F64), (2, 3, 4, 4)),
        "conv_nonsquare_strided": (lambda: L.Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 0), dtype=F64),
                                   (2, 2, 6, 5)),
        "conv_no_bias": (lambda: L.Conv2d(2, 3, 3, bias=False, dtype=F64), (1, 2, 4, 4)),
        "maxpool2x2": (lambda: L.MaxPool2d(), (2, 3, 6, 6)),
        "maxpool3x3_s1_p1": (lambda: L.MaxPool2d(3, 1, 1), (2, 2, 5, 5)),
        "relu": (lambda: L.ReLU(), (3, 4, 5)),
        "dropout": (lambda: L.Dropout(0.4), (4, 10)),
        "linear": (lambda: L.Linear(6, 5, dtype=F64), (4, 6)),
        "flatten": (lambda: L.Flatten(), (2, 3, 2, 2)),
        "lrn": (lambda: L.LocalResponseNorm(5, alpha=0.5, beta=0.75, k=2.0), (2, 7, 3, 3)),
        "lrn_even_size": (lambda: L.LocalResponseNorm(4, alpha=0.3), (2, 6, 2, 2)),
        "batchnorm2d": (lambda: L.BatchNorm2d(3, dtype=F64), (4, 3, 3, 3)),
        "batchnorm1d": (lambda: L.BatchNorm1d(5, dtype=F64), (6, 5)),
    }


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("case", sorted(layer_cases()))
def test_gradient_check_input_and_every_parameter(case, train):
    make, shape = layer_cases()[case]
    layer = make()
    if isinstance(layer, L._BatchNorm):
        # Non-trivial gamma/beta and running statistics, so every term is exercised.
        r = np.random.default_rng(5)
        for d in (layer.params, layer.buffers):
            for k in d:
                d[k][...] = r.uniform(0.5, 1.5, d[k].shape)
    x = np.random.default_rng(7).standard_normal(shape)
    report = check_gradients(layer, x, train=train)
    names = {r.name for r in report.results}
    assert names == {"input"} | set(layer.params), names
    assert all(r.checked > 0 for r in report.results), str(report)
    assert report.max_error <= TOL, str(report)


def test_gradient_check_catches_a_wrong_backward():
    class BrokenLinear(L.Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["weight"] = self.grads["weight"] * 1.01  # 1% off
            return dx

    report = check_gradients(BrokenLinear(4, 3, dtype=F64), np.random.default_rng(0).standard_normal((5, 4)))
    assert report["weight"].max_error > 1e-3
    assert report["input"].max_error <= TOL


def test_relative_error_counts_only_differences_beyond_the_roundoff():
    from tinyvgg.gradcheck import relative_error

    a = np.array([1e-5, 1e-10])
    # 3e-15 on a coordinate 1e-5 below the largest: 3e-9 relative to the floor (1e-8)...
    assert relative_error(a, a + [0.0, 3e-15]) == pytest.approx(3e-7)
    # ...which is round-off when R is 1e-15 and 4 R are allowed; 1e-13 still counts.
    assert relative_error(a, a + [0.0, 3e-15], atol=4e-15) == 0.0
    assert relative_error(a, a + [0.0, 1e-13], atol=4e-15) == pytest.approx((1e-13 - 4e-15) / 1e-8)
    with pytest.raises(ValueError, match="atol"):
        relative_error(a, a, atol=-1.0)


def test_gradcheck_of_a_deep_narrow_vgg_still_catches_a_small_wrong_gradient():
    # VGG-16 at width 1/16 without BatchNorm: the last block's weight gradients are
    # ~1e-10, only ~1e4 times the round-off R; a 1 % error there is ~1e2 R and must fail,
    # while the correct network passes under any BLAS summation order (a 0.35 R
    # difference once read as 2e-6 and failed it on OpenBLAS's Haswell kernel).
    from tinyvgg import backend
    from tinyvgg.models import vgg

    backend.seed(0)
    model = vgg("vgg16", num_classes=10, input_size=32, width=0.0625, hidden=32, init="he", dtype=F64)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    report = check_gradients(model, x, max_coords=4, seed=0)
    assert report.passed(1e-6), report
    assert "not counted" in str(report)
    backward = model.backward

    def off_by_one_percent(dy, *args, **kwargs):
        dx = backward(dy, *args, **kwargs)
        g = model.features[24].grads["weight"]
        g *= 1.01
        return dx

    model.backward = off_by_one_percent
    report = check_gradients(model, x, max_coords=4, seed=0)
    assert report["features.24.weight"].max_error > 1e-3, report
    assert report["features.21.weight"].max_error <= 1e-6, report


@pytest.mark.parametrize("stored", ["c_order", "fortran", "channels_last"])
def test_numerical_gradient_perturbs_arrays_of_any_memory_order(stored):
    """Index i means position i of x flattened in C order, and the perturbation
    reaches x whatever its layout (a Conv2d weight is stored channels-last)."""
    from tinyvgg.gradcheck import numerical_gradient
    from tinyvgg.ops.cpu.channels_last import channels_last_weight
    r = np.random.default_rng(11)
    x0, c = r.standard_normal((3, 4, 2, 2)), r.standard_normal((3, 4, 2, 2))
    x = {"c_order": x0.copy(), "fortran": np.asfortranarray(x0), "channels_last": channels_last_weight(x0)}[stored]
    idx = np.arange(0, x.size, 5)
    num, kink = numerical_gradient(lambda: np.sum(c * x), x, np.ones(()), idx)
    np.testing.assert_allclose(num, c.reshape(-1)[idx], rtol=1e-7)
    assert not kink.any()
    np.testing.assert_array_equal(x, x0)  # restored


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        check_gradients(L.Linear(3, 2), np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("case", sorted(layer_cases()))
def test_float32_in_float32_out(case):
    make, shape = layer_cases()[case]
    layer = make()
    for d in (layer.params, layer.buffers):
        for k in d:
            d[k] = d[k].astype(np.float32)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = layer.forward(x, train=True)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads.values())


def test_grads_are_overwritten_not_accumulated():
    lin = L.Linear(3, 2)
    x = np.ones((4, 3), np.float32)
    lin.forward(x)
    lin.backward(np.ones((4, 2), np.float32))
    first = lin.grads["weight"].copy()
    lin.forward(x)
    lin.backward(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(lin.grads["weight"], first)


def test_layers_do_not_share_parameter_dicts():
    a, b = L.Conv2d(1, 1, 3), L.Conv2d(1, 1, 3)
    assert a.params is not b.params and a.grads is not b.grads
    assert a.params["weight"] is not b.params["weight"]


# --- semantics ----------------------------------------------------------------

def test_conv_layer_output_shape_formula():
    conv = L.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2))
    y = conv.forward(np.zeros((2, 3, 9, 7), np.float32))
    # OH = (9 + 2 - 3)//2 + 1 = 5, OW = (7 + 4 - 5)//1 + 1 = 7
    assert y.shape == (2, 8, 5, 7) == conv.output_shape((2, 3, 9, 7))


def test_dropout_is_inverted_and_identity_at_test_time():
    d = L.Dropout(0.25)
    x = np.ones((200, 500), np.float32)
    y = d.forward(x, train=True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02  # expectation preserved
    assert d.forward(x, train=False) is x
    np.testing.assert_array_equal(d.backward(np.full_like(x, 2.0)), np.full_like(x, 2.0))


def test_dropout_extremes_and_reproducibility():
    x = np.ones((3, 4), np.float32)
    assert np.all(L.Dropout(1.0).forward(x, train=True) == 0)
    np.testing.assert_array_equal(L.Dropout(0.0).forward(x, train=True), x)
    backend.seed(3)
    a = L.Dropout(0.5).forward(np.ones((50, 50), np.float32), train=True)
    backend.seed(3)
    b = L.Dropout(0.5).forward(np.ones((50, 50), np.float32), train=True)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="probability"):
        L.Dropout(1.5)


def test_relu_gradient_at_zero_is_zero():
    r = L.ReLU()
    r.forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(r.backward(np.array([1.0, 1.0, 1.0])), [0.0, 0.0, 1.0])


@pytest.mark.parametrize("shape,channels_last", [((2, 3, 4, 5), False),          # the plain version
                                                  ((64, 16, 32, 32), True),        # fast path, worker threads
                                                  ((64, 16, 32, 32), False)])
def test_relu_in_place_writes_over_its_input_and_gives_the_same_numbers(shape, channels_last):
    """``ReLU(inplace=True)`` returns x itself, holding max(x, 0), with the gradient
    of the out-of-place ReLU (same mask, ties at 0 included), on both paths."""
    r = np.random.default_rng(0)
    x = r.standard_normal(shape).astype(np.float32)
    x[(0,) * x.ndim] = 0.0  # a tie at the kink
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    dy = r.standard_normal(shape).astype(np.float32)
    plain, inplace = L.ReLU(), L.ReLU(inplace=True)
    y = plain.forward(x, train=True)
    x_before = x.copy()
    y_in = inplace.forward(x, train=True)
    assert y_in is x                                   # the input array, overwritten
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(y, np.maximum(x_before, 0))
    np.testing.assert_array_equal(inplace.backward(dy), plain.backward(dy))
    assert repr(inplace) == "ReLU(inplace=True)" and repr(plain) == "ReLU()"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_with_zero_is_numpys_maximum_bit_for_bit(monkeypatch, dtype):
    """The ReLU's blocked maximum against zeros: np.maximum(x, 0) exactly (signed
    zeros, NaN, infinities), across block edges and in place."""
    monkeypatch.setattr(L, "ZERO_BLOCK", 7)
    monkeypatch.setattr(L, "_zero_blocks", {})
    x = np.random.default_rng(3).standard_normal(50).astype(dtype)
    x[:5] = [-0.0, 0.0, np.nan, np.inf, -np.inf]
    want = np.maximum(x, 0)
    out = np.empty_like(x)
    L._max_with_zero(x, out)
    assert out.tobytes() == want.tobytes()
    L._max_with_zero(x, x)                              # in place
    assert x.tobytes() == want.tobytes()


def lrn_loop(x, size, alpha, beta, k):
    """PyTorch/Caffe definition, written out channel by channel."""
    y = np.empty_like(x)
    c = x.shape[1]
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        s = k + alpha / size * (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, ch] = x[:, ch] / s ** beta
    return y


@given(st.integers(1, 7), st.integers(1, 9), st.integers(0, 1000))
def test_lrn_matches_definition(size, channels, seed):
    x = np.random.default_rng(seed).standard_normal((2, channels, 2, 3)) * 3
    layer = L.LocalResponseNorm(size, alpha=0.7, beta=0.75, k=2.0)
    np.testing.assert_allclose(layer.forward(x), lrn_loop(x, size, 0.7, 0.75, 2.0), rtol=1e-12)


def test_batchnorm_train_and_eval_semantics():
    r = np.random.default_rng(0)
    x = r.standard_normal((8, 3, 4, 4)) * 2 + 5
    bn = L.BatchNorm2d(3, momentum=0.1, dtype=F64)
    y = bn.forward(x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)  # biased variance normalises
    m = 8 * 4 * 4
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1),
                               rtol=1e-12)  # unbiased in the running estimate
    y_eval = bn.forward(x, train=False)
    expected = (x - bn.buffers["running_mean"][None, :, None, None]) / np.sqrt(
        bn.buffers["running_var"][None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12)


def test_batchnorm1d_statistics_per_feature():
    x = np.random.default_rng(1).standard_normal((10, 4)) * [1, 2, 3, 4]
    y = L.BatchNorm1d(4, dtype=F64).forward(x, train=True)
    np.testing.assert_allclose(y.std(axis=0), 1, rtol=1e-3)


def test_layers_and_models_default_to_evaluation_mode():
    """``train`` defaults to False everywhere: a layer, a model and calling either."""
    import inspect

    from tinyvgg.models import vgg
    model = vgg("A", width=1 / 16, input_size=32, hidden=16, num_classes=3)
    for f in [model.forward, model.__call__, model.to_fully_convolutional().forward] + \
            [getattr(layer, m) for layer in model.layers for m in ("forward", "__call__")]:
        assert inspect.signature(f).parameters["train"].default is False, f
    x = np.ones((50, 50), np.float32)
    assert L.Dropout(0.5).forward(x) is x  # the identity, as at test time
    bn = L.BatchNorm1d(50)
    bn.forward(x)
    assert bn.num_batches_tracked == 0 and not bn.buffers["running_mean"].any()


# --- errors -------------------------------------------------------------------

@pytest.mark.parametrize("layer, x, pattern", [
    (L.Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), r"Conv2d\(3, 4.*4-D input.*\(3, 8, 8\)"),
    (L.Conv2d(3, 4, 3), np.zeros((1, 2, 8, 8), np.float32), r"expected 3 channels.*\(1, 2, 8, 8\)"),
    (L.Conv2d(3, 4, 5), np.zeros((1, 3, 2, 2), np.float32), r"kernel \(5, 5\) is larger than the padded"),
    (L.MaxPool2d(4, 4), np.zeros((1, 3, 2, 2), np.float32), r"MaxPool2d.*larger than the padded input"),
    (L.MaxPool2d(), np.zeros((2, 2), np.float32), r"MaxPool2d.*4-D input.*\(2, 2\)"),
    (L.Linear(5, 2), np.zeros((3, 4), np.float32), r"Linear\(5, 2\).*expected 5 channels.*\(3, 4\)"),
    (L.Linear(5, 2), np.zeros((3, 5, 1), np.float32), r"Linear\(5, 2\).*2-D input"),
    (L.BatchNorm2d(3), np.zeros((2, 4, 2, 2), np.float32), r"BatchNorm2d\(3.*expected 3 channels"),
    (L.BatchNorm2d(3), np.zeros((1, 3, 1, 1), np.float32), r"more than one value per channel"),
    (L.LocalResponseNorm(), np.zeros((2, 3), np.float32), r"LocalResponseNorm.*at least 3 axes"),
    (L.Conv2d(3, 4, 3), np.zeros((0, 3, 8, 8), np.float32), r"empty batch"),
])
def test_bad_input_is_a_clear_error(layer, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        layer.forward(x, train=True)


@pytest.mark.parametrize("make", [lambda: L.Conv2d(1, 1, 3), lambda: L.MaxPool2d(), L.ReLU,
                                  lambda: L.Dropout(0.5), lambda: L.Linear(2, 2), L.Flatten,
                                  L.LocalResponseNorm, lambda: L.BatchNorm2d(2)])
def test_backward_before_forward(make):
    layer = make()
    with pytest.raises(RuntimeError, match="backward\\(\\) called before forward"):
        layer.backward(np.zeros((1, 1, 2, 2), np.float32))


def test_backward_with_wrong_dy_shape():
    conv = L.Conv2d(1, 2, 3, padding=1)
    conv.forward(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"dy of shape \(1, 2, 4, 4\).*got \(1, 2, 3, 3\)"):
        conv.backward(np.zeros((1, 2, 3, 3), np.float32))


@pytest.mark.parametrize("make, pattern", [
    (lambda: L.Conv2d(0, 4, 3), "in_channels must be a positive integer"),
    (lambda: L.Conv2d(3, 4, 0), "kernel_size must be a positive integer"),
    (lambda: L.Conv2d(3, 4, 3, stride=0), "stride must be a positive integer"),
    (lambda: L.Conv2d(3, 4, 3, padding=-1), "padding must be >= 0"),
    (lambda: L.Linear(-2, 3), "in_features must be a positive integer"),
    (lambda: L.MaxPool2d(2, 2, padding=2), "padding must be between 0 and half"),
    (lambda: L.BatchNorm2d(0), "num_features must be a positive integer"),
    (lambda: L.LocalResponseNorm(0), "size must be a positive integer"),
])
def test_non_positive_sizes_are_rejected(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_float64_input_to_float32_layer_is_refused_not_upcast():
    with pytest.raises(TypeError, match="float32 but the input is float64"):
        L.Conv2d(1, 1, 3).forward(np.zeros((1, 1, 4, 4)))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "simple"])
def test_linear_writes_its_gradients_into_the_arrays_it_is_given(fast):
    """``Layer.grads_into`` (the replicas' helpers pass shared memory): Linear's backward
    writes its gradients into those arrays, with the values it returns otherwise."""
    from tinyvgg import backend
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((4, 6)), rng.standard_normal((4, 5))
    layer = L.Linear(6, 5, dtype=F64)
    before = backend.fast()
    backend.use_fast(fast)
    try:
        layer.forward(x, train=True)
        layer.backward(dy)
        want = {k: v.copy() for k, v in layer.grads.items()}
        layer.grads_into = {"weight": np.full((5, 6), np.nan), "bias": np.full(5, np.nan)}
        layer.forward(x, train=True)
        dx = layer.backward(dy)
    finally:
        backend.use_fast(before)
    for k in ("weight", "bias"):
        assert layer.grads[k] is layer.grads_into[k]
        np.testing.assert_allclose(layer.grads[k], want[k], rtol=1e-15)
    np.testing.assert_allclose(dx, dy @ layer.params["weight"], rtol=1e-15)
