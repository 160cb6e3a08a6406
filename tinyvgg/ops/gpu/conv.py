"""Convolution on the GPU: im2col in the (K, N, P) layout, then one cuBLAS product.

The contract of ``tinyvgg.ops.conv2d_forward`` / ``conv2d_backward`` (which call
these when the input lives on the GPU): im2col in the (K, N, P) layout, so that
forward is ONE cuBLAS product ``W2 (F, K) @ cols (K, N*P)`` per chunk of images,
and backward two (``dW2 = dy2 @ cols.T``, ``dcols = W2.T @ dy2``) plus the gather
col2im of :mod:`tinyvgg.ops.gpu.kernels`. Chunks bound the columns' memory
(``GPU_CHUNK_BYTES``); forward keeps the columns for backward when they fit
``GPU_KEEP_BYTES``.

Notation: x (N, C, H, W), weight (F, C, KH, KW), K = C*KH*KW, P = OH*OW.
"""

from __future__ import annotations

from ..shapes import pair, window_geometry
from . import kernels

__all__ = ["conv2d_forward_gpu", "conv2d_backward_gpu", "GPUConvCache", "GPU_CHUNK_BYTES",
           "GPU_KEEP_BYTES"]

GPU_CHUNK_BYTES = 1 << 30   # columns of at most this many bytes at a time (at least one image)
GPU_KEEP_BYTES = 256 << 20  # forward keeps the columns for backward when they fit this


class GPUConvCache(tuple):
    """What :func:`conv2d_forward_gpu` hands to :func:`conv2d_backward_gpu`:
    ``(x, weight, has_bias, stride, padding, relu_y, kept_cols, chunk)``.
    A distinct type so that ``conv2d_backward`` can tell it from the CPU's cache."""

    __slots__ = ()


def _chunk(n, k, p, itemsize, budget):
    return int(max(1, min(n, budget // max(1, k * p * itemsize))))


def conv2d_forward_gpu(x, weight, bias=None, stride=1, padding=0, *, relu=False, chunk_bytes=None):
    """``tinyvgg.ops.conv2d_forward`` on the GPU: returns ``(y, GPUConvCache)``.

    Per chunk of m images: cols = im2col (K, m*P) in one kernel, ``W2 @ cols``
    (F, m*P) in one GEMM, then one elementwise pass that transposes to
    (m, F, OH, OW) and adds the bias (and the fused ReLU when ``relu``)."""
    xp = kernels._gpu_module()
    x = kernels._float_array(xp, x, "conv2d_forward_gpu")
    f, c, kh, kw = weight.shape
    stride, padding = pair(stride, "stride"), pair(padding, "padding")
    g = window_geometry(x.shape, (kh, kw), stride, padding, "conv2d_forward_gpu")
    n, _, h, w, _, _, _, _, _, _, oh, ow = g
    k, p = c * kh * kw, oh * ow
    w2 = weight.reshape(f, k)
    y = xp.empty((n, f, oh, ow), dtype=x.dtype)
    m = _chunk(n, k, p, x.dtype.itemsize, chunk_bytes or GPU_CHUNK_BYTES)
    kept = None
    pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0)
    for n0 in range(0, n, m):
        n1 = min(n0 + m, n)
        if pointwise:
            cols = x[n0:n1].reshape(n1 - n0, c, p).transpose(1, 0, 2).reshape(k, (n1 - n0) * p)
        else:
            cols = kernels.im2col_gpu(x[n0:n1], (kh, kw), stride, padding, layout="knp").reshape(k, -1)
        prod = w2 @ cols  # (F, m*P): one GEMM
        dst = y[n0:n1].reshape(n1 - n0, f, p).transpose(1, 0, 2)  # a view of y, (F, m, P)
        src = prod.reshape(f, n1 - n0, p)
        if bias is not None:
            xp.add(src, bias.reshape(f, 1, 1), out=dst)
        else:
            dst[...] = src
        if m >= n and not pointwise and cols.nbytes <= GPU_KEEP_BYTES:
            kept = cols
    if relu:
        xp.maximum(y, 0, out=y)
    cache = GPUConvCache((x, weight, bias is not None, stride, padding, y if relu else None, kept, m))
    return y, cache


def conv2d_backward_gpu(dy, cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv2d_forward_gpu`.

    Per chunk: dyt = dy as (F, m*P) (one transposing copy), ``dW2 += dyt @ cols.T``
    and ``dcols = W2.T @ dyt`` (two GEMMs), dx = col2im(dcols) (the gather kernel)."""
    xp = kernels._gpu_module()
    x, weight, has_bias, stride, padding, relu_y, kept, m = cache
    dy = kernels._float_array(xp, dy, "conv2d_backward_gpu")
    f, c, kh, kw = weight.shape
    n, _, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    k, p = c * kh * kw, oh * ow
    if relu_y is not None:
        dy = xp.multiply(dy, relu_y > 0, dtype=dy.dtype)
    w2 = weight.reshape(f, k)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    dw2 = dx = None
    pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0)
    for n0 in range(0, n, m):
        n1 = min(n0 + m, n)
        if kept is not None:
            cols = kept
        elif pointwise:
            cols = x[n0:n1].reshape(n1 - n0, c, p).transpose(1, 0, 2).reshape(k, (n1 - n0) * p)
        else:
            cols = kernels.im2col_gpu(x[n0:n1], (kh, kw), stride, padding, layout="knp").reshape(k, -1)
        dyt = xp.ascontiguousarray(dy[n0:n1].reshape(n1 - n0, f, p).transpose(1, 0, 2)).reshape(f, -1)
        part = dyt @ cols.T  # (F, K): the sum over the chunk's images is inside the product
        if dw2 is None:
            dw2 = part
        else:
            dw2 += part
        del cols
        dcols = w2.T @ dyt  # (K, m*P)
        if pointwise:
            dxc = dcols.reshape(c, n1 - n0, p).transpose(1, 0, 2).reshape(n1 - n0, c, h, w)
        else:
            dxc = kernels.col2im_gpu(dcols.reshape(k, n1 - n0, p), (n1 - n0, c, h, w), (kh, kw), stride,
                             padding, layout="knp")
        if n0 == 0 and n1 == n:
            dx = xp.ascontiguousarray(dxc)  # one chunk: no copy into a preallocated dx
        else:
            if dx is None:
                dx = xp.empty(x.shape, dtype=dy.dtype)
            dx[n0:n1] = dxc
        del dcols, dyt, dxc
    return dx, dw2.reshape(weight.shape), db
