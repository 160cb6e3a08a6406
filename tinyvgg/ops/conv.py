"""2-D convolution (cross-correlation, as in every deep-learning library) by im2col.

Notation
--------
N  batch     C  input channels    H, W    input size      F  filters (output channels)
KH, KW  kernel size     SH, SW  stride     PH, PW  zero padding
OH = (H + 2*PH - KH) // SH + 1      OW = (W + 2*PW - KW) // SW + 1
P = OH*OW (output positions per image),  K = C*KH*KW (one column's length)

Forward:  y[n] = W2 @ cols[n] + b       W2 = weight.reshape(F, K), cols = im2col(x)
Backward: dW2  = sum_n dy[n] @ cols[n].T
          db   = sum over n, oh, ow of dy
          dx   = col2im(W2.T @ dy[n])

One matrix product per pass does all the arithmetic; im2col/col2im only move data.
A 1x1 convolution with stride 1 and no padding needs no im2col at all: the image
itself, viewed as (N, C, H*W), already is its column matrix.
"""

from __future__ import annotations

from ..backend import get_array_module
from .im2col import col2im, conv_output_size, im2col, pair

__all__ = ["conv2d_forward", "conv2d_backward"]


def _is_pointwise(kernel, stride, padding):
    return kernel == (1, 1) and stride == (1, 1) and padding == (0, 0)


def conv2d_forward(x, weight, bias=None, stride=1, padding=0):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C, KH, KW) plus ``bias`` (F,).

    Returns ``(y, cache)`` with ``y`` of shape (N, F, OH, OW); pass ``cache`` to
    :func:`conv2d_backward`.
    """
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    oh = conv_output_size(h, kh, stride[0], padding[0])
    ow = conv_output_size(w, kw, stride[1], padding[1])
    if _is_pointwise((kh, kw), stride, padding):
        cols = x.reshape(n, c, h * w)
    else:
        cols = im2col(x, (kh, kw), stride, padding)
    w2 = weight.reshape(f, -1)
    y = xp.matmul(w2, cols)  # (F, K) @ (N, K, P) -> (N, F, P): already NCHW order
    if bias is not None:
        y += bias.reshape(1, f, 1)
    cache = (x.shape, cols, weight, bias is not None, stride, padding)
    return y.reshape(n, f, oh, ow), cache


def conv2d_backward(dy, cache):
    """Gradients of :func:`conv2d_forward`.

    ``dy`` (N, F, OH, OW) -> ``(dx, dweight, dbias)`` with shapes (N, C, H, W),
    (F, C, KH, KW) and (F,) (``dbias`` is None when there was no bias).
    """
    x_shape, cols, weight, has_bias, stride, padding = cache
    xp = get_array_module(dy, weight)
    n = x_shape[0]
    f, c, kh, kw = weight.shape
    dy3 = dy.reshape(n, f, -1)
    w2 = weight.reshape(f, -1)
    # dW: one product per image, summed (the sum over n is the sum over the batch).
    dw = xp.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0).reshape(weight.shape)
    db = dy3.sum(axis=(0, 2)) if has_bias else None
    dcols = xp.matmul(w2.T, dy3)  # (K, F) @ (N, F, P) -> (N, K, P)
    if _is_pointwise((kh, kw), stride, padding):
        dx = dcols.reshape(x_shape)
    else:
        dx = col2im(dcols, x_shape, (kh, kw), stride, padding)
    return dx, dw, db
