"""The fast ops equal the loop references, and im2col/col2im are adjoint.

Hypothesis draws batch, channels, height, width, kernel, stride and padding
(non-square included); every case is computed in float64.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyvgg.ops import (col2im, conv2d_backward, conv2d_forward, conv_output_size, im2col,
                         maxpool2d_backward, maxpool2d_forward)
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
