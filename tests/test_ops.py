"""The ops equal the loop references on every path (loops == textbook == fast),
and im2col/col2im are adjoint.

Hypothesis draws batch, channels, height, width, kernel, stride and padding
(non-square included); every case is computed in float64. The fast-path switch
(``backend.use_fast`` / ``TINYVGG_FAST``) is tested at the end: with it off, a
whole network trains on the textbook path and matches the fast one.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyvgg import backend
from tinyvgg.ops import (col2im, conv2d_backward, conv2d_backward_simple, conv2d_forward,
                         conv2d_forward_simple, conv_output_size, cpu, im2col, maxpool2d_backward,
                         maxpool2d_backward_simple, maxpool2d_forward, maxpool2d_forward_simple)
from tinyvgg.reference import (conv2d_backward_loop, conv2d_forward_loop, maxpool2d_backward_loop,
                               maxpool2d_forward_loop)

small = st.integers(1, 3)
pairs = st.tuples(st.integers(1, 4), st.integers(1, 4))


@st.composite
def conv_case(draw):
    n, c, f = draw(small), draw(small), draw(small)
    kh, kw = draw(pairs)
    sh, sw = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    ph, pw = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    seed = draw(st.integers(0, 2**16))
    return n, c, f, h, w, (kh, kw), (sh, sw), (ph, pw), seed


@given(conv_case())
def test_conv_matches_loop_reference(case):
    n, c, f, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w))
    wt = r.standard_normal((f, c) + k)
    b = r.standard_normal(f)
    y, cache = conv2d_forward(x, wt, b, s, p)
    np.testing.assert_allclose(y, conv2d_forward_loop(x, wt, b, s, p), rtol=1e-10, atol=1e-12)
    dy = r.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    dx_r, dw_r, db_r = conv2d_backward_loop(dy, x, wt, s, p)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, dw_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, db_r, rtol=1e-10, atol=1e-12)


@given(conv_case())
def test_im2col_and_col2im_are_adjoint(case):
    n, c, _, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w))
    cols = im2col(x, k, s, p)
    oh, ow = conv_output_size(h, k[0], s[0], p[0]), conv_output_size(w, k[1], s[1], p[1])
    assert cols.shape == (n, c * k[0] * k[1], oh * ow)
    cc = r.standard_normal(cols.shape)
    lhs = np.vdot(cols, cc)
    rhs = np.vdot(x, col2im(cc, x.shape, k, s, p))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@st.composite
def pool_case(draw):
    n, c = draw(small), draw(small)
    kh, kw = draw(pairs)
    sh, sw = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return n, c, h, w, (kh, kw), (sh, sw), (ph, pw), ties, seed


@given(pool_case())
def test_maxpool_matches_loop_reference(case):
    n, c, h, w, k, s, p, ties, seed = case
    r = np.random.default_rng(seed)
    # With ties=True the values come from {0, 1, 2}: many windows hold equal maxima,
    # and the tie rule (first in row-major order) must agree with the reference.
    x = r.integers(0, 3, (n, c, h, w)).astype(np.float64) if ties else r.standard_normal((n, c, h, w))
    y, cache = maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, maxpool2d_forward_loop(x, k, s, p))
    dy = r.standard_normal(y.shape)
    np.testing.assert_allclose(maxpool2d_backward(dy, cache),
                               maxpool2d_backward_loop(dy, x, k, s, p), rtol=1e-12, atol=1e-12)


def test_maxpool_tie_sends_gradient_to_first_maximum():
    x = np.array([[[[3.0, 3.0], [3.0, 1.0]]]])
    y, cache = maxpool2d_forward(x, 2, 2)
    dx = maxpool2d_backward(np.array([[[[5.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[5.0, 0.0], [0.0, 0.0]]]])


def test_maxpool_padding_never_wins():
    x = -np.ones((1, 1, 2, 2)) * 7  # all negative: a zero pad would win, -inf must not
    y, _ = maxpool2d_forward(x, 3, 1, 1)
    assert np.all(y == -7)


def test_pointwise_conv_needs_no_im2col_and_is_a_channel_matmul():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 5, 4, 3))
    wt = r.standard_normal((6, 5, 1, 1))
    y, _ = conv2d_forward(x, wt, None, 1, 0)
    expected = np.einsum("fc,nchw->nfhw", wt[:, :, 0, 0], x)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_im2col_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input"):
        im2col(np.zeros((1, 1, 2, 2)), 5, 1, 1)


def test_col2im_rejects_wrong_column_shape():
    with pytest.raises(ValueError, match="expected columns of shape"):
        col2im(np.zeros((1, 9, 5)), (1, 1, 4, 4), 3, 1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_keep_dtype(dtype):
    x = np.ones((1, 2, 4, 4), dtype=dtype)
    wt = np.ones((3, 2, 3, 3), dtype=dtype)
    y, cache = conv2d_forward(x, wt, np.zeros(3, dtype), 1, 1)
    dx, dw, db = conv2d_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(dtype)}
    p, pc = maxpool2d_forward(x, 2, 2)
    assert p.dtype == dtype and maxpool2d_backward(np.ones_like(p), pc).dtype == dtype


# -- loops == textbook == fast ---------------------------------------------------------

TIGHT = dict(rtol=1e-10, atol=1e-12)


@given(conv_case(), st.booleans(), st.booleans())
def test_conv_loops_textbook_and_fast_agree(case, relu, with_bias):
    """Forward and backward (dx, dW, db) of the three versions, with and without the
    fused ReLU; the fast one is checked to be the one conv2d_forward picks."""
    n, c, f, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w))
    wt = r.standard_normal((f, c) + k)
    b = r.standard_normal(f) if with_bias else None
    z = conv2d_forward_loop(x, wt, b, s, p)
    y_loop = np.maximum(z, 0) if relu else z
    dy = r.standard_normal(y_loop.shape)
    dz = dy * (z > 0) if relu else dy
    dx_r, dw_r, db_r = conv2d_backward_loop(dz, x, wt, s, p)
    y_simple, c_simple = conv2d_forward_simple(x, wt, b, s, p, relu=relu)
    y_fast, c_fast = conv2d_forward(x, wt, b, s, p, relu=relu)
    fast_caches = (cpu.FastConvCache, cpu.ChannelsLastConvCache)
    assert isinstance(c_fast, fast_caches) and not isinstance(c_simple, fast_caches)
    for y, cache in ((y_simple, c_simple), (y_fast, c_fast)):
        np.testing.assert_allclose(y, y_loop, **TIGHT)
        dx, dw, db = conv2d_backward(dy, cache)
        np.testing.assert_allclose(dx, dx_r, **TIGHT)
        np.testing.assert_allclose(dw, dw_r, **TIGHT)
        if with_bias:
            np.testing.assert_allclose(db, db_r, **TIGHT)
        else:
            assert db is None
    assert conv2d_backward_simple(dy, c_simple, input_grad=False)[0] is None


@given(pool_case())
def test_maxpool_loops_textbook_and_fast_agree(case):
    n, c, h, w, k, s, p, ties, seed = case
    r = np.random.default_rng(seed)
    x = r.integers(0, 3, (n, c, h, w)).astype(np.float64) if ties else r.standard_normal((n, c, h, w))
    y_loop = maxpool2d_forward_loop(x, k, s, p)
    dy = r.standard_normal(y_loop.shape)
    dx_loop = maxpool2d_backward_loop(dy, x, k, s, p)
    y_simple, c_simple = maxpool2d_forward_simple(x, k, s, p)
    y_fast, c_fast = maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y_simple, y_loop)
    np.testing.assert_array_equal(y_fast, y_loop)
    np.testing.assert_allclose(maxpool2d_backward_simple(dy, c_simple), dx_loop, **TIGHT)
    np.testing.assert_allclose(maxpool2d_backward(dy, c_fast), dx_loop, **TIGHT)


@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 7, 5)])
def test_maxpool_2x2_textbook_and_fast_agree_on_ties(shape):
    """VGG's 2x2 pooling takes the fast branch; values from {0, 1} make ties everywhere."""
    r = np.random.default_rng(3)
    x = r.integers(0, 2, shape).astype(np.float64)
    y_fast, c_fast = maxpool2d_forward(x, 2, 2)
    y_simple, c_simple = maxpool2d_forward_simple(x, 2, 2)
    np.testing.assert_array_equal(y_fast, y_simple)
    np.testing.assert_array_equal(c_fast[1], c_simple[1])  # the same winner in every window
    dy = r.standard_normal(y_fast.shape)
    np.testing.assert_array_equal(maxpool2d_backward(dy, c_fast), maxpool2d_backward_simple(dy, c_simple))


# -- the fast-path switch ----------------------------------------------------------------

@pytest.fixture
def textbook_only(monkeypatch):
    """The fast paths off, and any call into them an error (so a test shows that
    nothing reaches them)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a fast path ran while backend.use_fast(False) was in force")
    for name in ("conv2d_forward_fast", "conv2d_backward_fast", "maxpool2x2_forward",
                 "maxpool2x2_backward", "matmul"):
        monkeypatch.setattr(cpu, name, forbidden)
    old = backend.use_fast(False)
    yield
    backend.use_fast(old)


def test_use_fast_returns_the_previous_setting():
    assert backend.fast() is True
    assert backend.use_fast(False) is True
    try:
        assert backend.fast() is False
    finally:
        assert backend.use_fast(True) is False
    assert backend.fast() is True


@pytest.mark.parametrize("value,expected", [("0", "False"), ("1", "True"), ("", "True")])
def test_environment_variable_switches_the_fast_paths(value, expected):
    import os
    import subprocess
    import sys
    env = dict(os.environ, TINYVGG_FAST=value)
    out = subprocess.run([sys.executable, "-c", "from tinyvgg import backend; print(backend.fast())"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_environment_variable_rejects_other_values():
    import os
    import subprocess
    import sys
    env = dict(os.environ, TINYVGG_FAST="maybe")
    out = subprocess.run([sys.executable, "-c", "import tinyvgg.backend"], capture_output=True, text=True,
                         env=env)
    assert out.returncode != 0 and "TINYVGG_FAST" in out.stderr


def _train_small_vgg(steps=3):
    """A few SGD steps of a narrow VGG-11 with BatchNorm (no dropout), in float64."""
    from tinyvgg.losses import SoftmaxCrossEntropy
    from tinyvgg.models import vgg
    from tinyvgg.optim import SGD
    backend.seed(0)
    model = vgg("vgg11", num_classes=3, input_size=32, width=1 / 16, batch_norm=True, hidden=16,
                dropout=0.0, init="glorot", dtype=np.float64)
    opt, loss_fn = SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4), SoftmaxCrossEntropy()
    data = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        x, y = data.standard_normal((4, 3, 32, 32)), data.integers(0, 3, 4)
        losses.append(float(loss_fn.forward(model.forward(x, train=True), y)))
        model.backward(loss_fn.backward())
        opt.step()
    return losses, {k: v.copy() for k, v in model.state_dict().items()}


def test_whole_network_trains_on_the_textbook_path_and_matches_the_fast_one(textbook_only):
    simple_losses, simple_state = _train_small_vgg()
    backend.use_fast(True)
    try:
        with pytest.raises(AssertionError, match="fast path ran"):  # the fixture's guard works
            _train_small_vgg(steps=1)
    finally:
        backend.use_fast(False)
    assert all(np.isfinite(simple_losses)) and simple_losses[-1] != simple_losses[0]
    assert all(np.all(np.isfinite(v)) for v in simple_state.values())


def test_textbook_and_fast_training_give_the_same_numbers():
    old = backend.use_fast(False)
    try:
        simple_losses, simple_state = _train_small_vgg()
    finally:
        backend.use_fast(old)
    fast_losses, fast_state = _train_small_vgg()
    np.testing.assert_allclose(simple_losses, fast_losses, rtol=1e-9)
    assert simple_state.keys() == fast_state.keys()
    for name in fast_state:
        np.testing.assert_allclose(simple_state[name], fast_state[name], rtol=1e-8, atol=1e-12,
                                   err_msg=name)
