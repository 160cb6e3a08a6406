"""2-D convolution (cross-correlation, as in every deep-learning library) by im2col.

Notation
--------
N  batch     C  input channels    H, W    input size      F  filters (output channels)
KH, KW  kernel size     SH, SW  stride     PH, PW  zero padding
OH = (H + 2*PH - KH) // SH + 1      OW = (W + 2*PW - KW) // SW + 1
P = OH*OW (output positions per image),  K = C*KH*KW (one column's length)

The textbook version comes first (CS231n's ``conv_forward_im2col``, the
``Convolution`` layer of Deep Learning from Scratch): every window becomes a
column, and one matrix product does all the arithmetic::

    forward:   cols = im2col(x)                  (N, K, P)
               y    = W2 @ cols + b              W2 = weight.reshape(F, K) -> (N, F, P)
    backward:  dW2  = sum over n of dy @ cols.T  (F, K)
               db   = sum of dy over n, oh, ow   (F,)
               dx   = col2im(W2.T @ dy)          (N, C, H, W)

with the same ``im2col``/``col2im`` the lessons print (:mod:`tinyvgg.ops.im2col`).

:func:`conv2d_forward` and :func:`conv2d_backward` are what the layers call. They
pick a path (see :mod:`tinyvgg.ops.paths`): the CUDA kernels for an array on the
GPU (:mod:`tinyvgg.ops.gpu`), the fast CPU code for a NumPy array
(:mod:`tinyvgg.ops.cpu`: channels-last activations, chunks, scratch buffers, worker threads),
and the textbook functions below when the fast paths are off
(``tinyvgg.backend.use_fast(False)`` or ``TINYVGG_FAST=0``). All three compute
the same numbers; ``tests/test_ops.py`` checks them against the loops of
:mod:`tinyvgg.reference`, and ``lessons/13_simple_and_fast.py`` times them.
"""

from __future__ import annotations

from ..backend import get_array_module
from . import cpu, gpu
from .im2col import col2im, im2col
from .paths import choose_path
from .shapes import conv_output_size, pair

__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_forward_simple", "conv2d_backward_simple"]


def conv2d_forward_simple(x, weight, bias=None, stride=1, padding=0, *, relu=False):
    """The textbook convolution: ``(y (N, F, OH, OW), cache)``; the cache keeps the columns."""
    n, _, h, w = x.shape
    f, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw))          # (N, K, P)
    y = weight.reshape(f, -1) @ cols                         # (F, K) @ (N, K, P) -> (N, F, P)
    if bias is not None:
        y += bias.reshape(1, f, 1)
    y = y.reshape(n, f, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw))
    if relu:
        y = get_array_module(y).maximum(y, 0)
    return y, (cols, x.shape, weight, bias is not None, (sh, sw), (ph, pw), y if relu else None)


def conv2d_backward_simple(dy, cache, *, input_grad=True):
    """Gradients of :func:`conv2d_forward_simple`: ``(dx, dweight, dbias)``."""
    cols, x_shape, weight, has_bias, stride, padding, relu_y = cache
    if relu_y is not None:
        dy = dy * (relu_y > 0)                               # the ReLU's gate
    n, f = dy.shape[:2]
    dy = dy.reshape(n, f, -1)                                # (N, F, P)
    w2 = weight.reshape(f, -1)                               # (F, K)
    dw = (dy @ cols.transpose(0, 2, 1)).sum(axis=0)          # sum over n of (F, P) @ (P, K)
    db = dy.sum(axis=(0, 2)) if has_bias else None
    dx = col2im(w2.T @ dy, x_shape, weight.shape[2:], stride, padding) if input_grad else None
    return dx, dw.reshape(weight.shape), db


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, *, relu=False, chunk_bytes=None,
                   keep_columns=True):
    """Convolve ``x`` (N, C, H, W) with ``weight`` (F, C, KH, KW) plus ``bias`` (F,).

    Returns ``(y, cache)`` with ``y`` of shape (N, F, OH, OW); pass ``cache`` to
    :func:`conv2d_backward`. The cache may refer to ``x`` itself (the fast CPU
    path recomputes the columns from it), so ``x`` must not be changed in place
    before backward. ``relu=True`` returns ``max(conv + bias, 0)`` (a fused ReLU;
    backward then takes the gradient of the ReLU too). ``chunk_bytes`` overrides
    the fast paths' bound on one chunk's columns (tests use it to force chunking).
    ``keep_columns=False`` tells the fast CPU path that no backward will follow
    (evaluation), so it keeps no columns for one.
    Raises ``ValueError`` when the kernel is larger than the padded input.
    """
    path = choose_path(x)
    if path == "gpu":  # CUDA kernels for im2col/col2im, cuBLAS for the products
        return gpu.conv2d_forward_gpu(x, weight, bias, stride, padding, relu=relu, chunk_bytes=chunk_bytes)
    if path == "fast":
        return cpu.conv2d_forward_fast(x, weight, bias, stride, padding, relu=relu, chunk_bytes=chunk_bytes,
                                       keep_columns=keep_columns)
    return conv2d_forward_simple(x, weight, bias, stride, padding, relu=relu)


def conv2d_backward(dy, cache, *, input_grad=True):
    """Gradients of :func:`conv2d_forward`, on the path its forward pass took.

    ``dy`` (N, F, OH, OW) -> ``(dx, dweight, dbias)`` with shapes (N, C, H, W),
    (F, C, KH, KW) and (F,) (``dbias`` is None when there was no bias).
    ``input_grad=False`` skips dx (returned as None): the first layer of a
    network needs no gradient for its input.
    """
    if isinstance(cache, gpu.GPUConvCache):
        dx, dw, db = gpu.conv2d_backward_gpu(dy, cache)
        return (dx if input_grad else None), dw, db
    if isinstance(cache, (cpu.FastConvCache, cpu.ChannelsLastConvCache)):
        return cpu.conv2d_backward_fast(dy, cache, input_grad=input_grad)
    return conv2d_backward_simple(dy, cache, input_grad=input_grad)
