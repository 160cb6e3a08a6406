"""Loop versions of convolution and max-pooling: slow, plain, obviously right.

These define what correct means. The tests compare the textbook and the fast
versions in :mod:`tinyvgg.ops` with them on shapes drawn by hypothesis, and the
lessons print them side by side. Host (NumPy) arrays only.

Notation: x (N, C, H, W), weight (F, C, KH, KW), stride (SH, SW), padding (PH, PW),
OH = (H + 2*PH - KH) // SH + 1, OW = (W + 2*PW - KW) // SW + 1.
"""

from __future__ import annotations

import numpy as np

from .ops.shapes import conv_output_size, pair

__all__ = ["conv2d_forward_loop", "conv2d_backward_loop",
           "maxpool2d_forward_loop", "maxpool2d_backward_loop"]


def _pad(x, ph, pw, value):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def conv2d_forward_loop(x, weight, bias=None, stride=1, padding=0):
    """y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] * xpad[n, c, i*SH + u, j*SW + v]."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = _pad(x, ph, pw, 0)
    y = np.zeros((n, f, oh, ow), dtype=np.result_type(x, weight))
    for b in range(n):
        for o in range(f):
            for i in range(oh):
                for j in range(ow):
                    window = xpad[b, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    y[b, o, i, j] = np.sum(window * weight[o])
            if bias is not None:
                y[b, o] += bias[o]
    return y


def conv2d_backward_loop(dy, x, weight, stride=1, padding=0):
    """Gradients (dx, dweight, dbias) of :func:`conv2d_forward_loop`: every output
    (n, f, i, j) sends dy * w back to the window it read, and dy * window to w."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    oh, ow = dy.shape[2], dy.shape[3]
    xpad = _pad(x, ph, pw, 0)
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(weight)
    for b in range(n):
        for o in range(f):
            for i in range(oh):
                for j in range(ow):
                    g = dy[b, o, i, j]
                    window = xpad[b, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    dw[o] += g * window
                    dxpad[b, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += g * weight[o]
    db = dy.sum(axis=(0, 2, 3))
    return dxpad[:, :, ph:ph + h, pw:pw + w], dw, db


def _argmax_first(window):
    """Row-major index of the first maximum of a 2-D window (the tie rule)."""
    best, best_k = -np.inf, 0
    for k, v in enumerate(window.ravel()):
        if v > best:
            best, best_k = v, k
    return best_k


def maxpool2d_forward_loop(x, kernel_size=2, stride=2, padding=0):
    """y[n, c, i, j] = max of xpad[n, c, i*SH : i*SH + KH, j*SW : j*SW + KW] (pad = -inf)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = _pad(x, ph, pw, -np.inf)
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    y[b, ch, i, j] = xpad[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw].max()
    return y


def maxpool2d_backward_loop(dy, x, kernel_size=2, stride=2, padding=0):
    """Each output's gradient goes to the first maximum of its window."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    n, c, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    xpad = _pad(x, ph, pw, -np.inf)
    dxpad = np.zeros(xpad.shape, dtype=dy.dtype)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    k = _argmax_first(xpad[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw])
                    u, v = divmod(k, kw)
                    dxpad[b, ch, i * sh + u, j * sw + v] += dy[b, ch, i, j]
    return dxpad[:, :, ph:ph + h, pw:pw + w]
