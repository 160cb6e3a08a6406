"""NumPy twins of the CUDA kernels in :mod:`tinyvgg.ops.gpu.kernels`.

Each twin does what its kernel does, with the same index arithmetic, but
vectorised: where a CUDA thread handles one element, the twin holds the index
of every element in one NumPy array and performs the thread's steps on all of
them at once. Loops run only over kernel offsets, as inside a thread. They are
slow-ish and memory-hungry (an int64 index per element) and exist to be read
and tested: on the CPU they are compared with :mod:`tinyvgg.reference` and
:mod:`tinyvgg.ops`, and on the GPU with the kernels themselves.

Notation
--------
N, C, H, W  input     KH, KW  kernel     SH, SW  stride     PH, PW  padding
OH = (H + 2*PH - KH) // SH + 1     OW = (W + 2*PW - KW) // SW + 1
K = C*KH*KW    P = OH*OW

``layout="nkp"``: cols (N, K, P), as :func:`tinyvgg.ops.im2col`;
``layout="knp"``: cols (K, N, P), the layout the GPU convolution multiplies.
"""

from __future__ import annotations

import numpy as np

from ..shapes import window_geometry

__all__ = ["im2col_twin", "col2im_twin", "maxpool2d_forward_twin", "maxpool2d_backward_twin"]


def _geometry(x_shape, kernel_size, stride, padding):
    return window_geometry(x_shape, kernel_size, stride, padding, "kernel twin")


def _pixels(n, c, h, w):
    """Indices (n, c, h, w) of every pixel of an (N, C, H, W) array, broadcastable
    to its shape: the "threads" of the gather kernels."""
    return np.ogrid[:n, :c, :h, :w]


def _windows_containing(hp, i, sh, oh_count):
    """For padded coordinate ``hp`` and kernel offset ``i``: the output index ``oh``
    with ``oh*SH + i == hp`` and whether it exists (``(hp - i) / SH`` an integer in
    [0, OH)). Works elementwise on arrays."""
    d = hp - i
    valid = (d >= 0) & (d % sh == 0)
    o = d // sh
    return o, valid & (o < oh_count)


def im2col_twin(x, kernel_size, stride=1, padding=0, layout="nkp"):
    """The ``im2col`` kernel: every element of ``cols`` decodes its own flat index
    and copies one input value (0 in the padding)."""
    x = np.ascontiguousarray(x)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    k, p = c * kh * kw, oh * ow
    idx = np.arange(n * k * p, dtype=np.int64)  # one "thread" per element of cols
    q, r = idx % p, idx // p
    if layout == "knp":
        nn, row = r % n, r // n
    elif layout == "nkp":
        row, nn = r % k, r // k
    else:
        raise ValueError(f"im2col_twin: layout must be 'nkp' or 'knp', got {layout!r}")
    j = row % kw
    i = (row // kw) % kh
    cc = row // (kw * kh)
    out_w, out_h = q % ow, q // ow
    hh = out_h * sh + i - ph  # the input pixel this element copies
    ww = out_w * sw + j - pw
    inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
    src = ((nn * c + cc) * h + np.clip(hh, 0, h - 1)) * w + np.clip(ww, 0, w - 1)
    cols = np.where(inside, x.reshape(-1)[src], x.dtype.type(0))
    return cols.reshape((n, k, p) if layout == "nkp" else (k, n, p))


def col2im_twin(cols, x_shape, kernel_size, stride=1, padding=0, layout="nkp"):
    """The gather ``col2im`` kernel: every input pixel (h, w) sums, over the kernel
    offsets (i, j) in row-major order, the column entry of output (oh, ow) with
    oh = (h + PH - i) / SH and ow = (w + PW - j) / SW, when both are integers in
    [0, OH) x [0, OW)."""
    cols = np.ascontiguousarray(cols)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _geometry(x_shape, kernel_size, stride, padding)
    k, p = c * kh * kw, oh * ow
    if layout not in ("nkp", "knp"):
        raise ValueError(f"col2im_twin: layout must be 'nkp' or 'knp', got {layout!r}")
    flat = cols.reshape(-1)
    nn, cc, hh, ww = _pixels(n, c, h, w)
    total = np.zeros((n, c, h, w), dtype=cols.dtype)
    for i in range(kh):
        out_h, ok_h = _windows_containing(hh + ph, i, sh, oh)
        for j in range(kw):
            out_w, ok_w = _windows_containing(ww + pw, j, sw, ow)
            ok = ok_h & ok_w
            row = (cc * kh + i) * kw + j
            q = out_h * ow + out_w
            at = (row * n + nn) * p + q if layout == "knp" else (nn * k + row) * p + q
            total += np.where(ok, flat[np.where(ok, at, 0)], cols.dtype.type(0))
    return total


def maxpool2d_forward_twin(x, kernel_size=2, stride=2, padding=0):
    """The max-pool forward kernel: every output walks its window in row-major
    order and keeps the first maximum (strict ``>``; padding is -inf).
    Returns ``(y, argmax)``, argmax uint8 when KH*KW <= 256, else int32."""
    x = np.ascontiguousarray(x)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _geometry(x.shape, kernel_size, stride, padding)
    nn, cc, out_h, out_w = _pixels(n, c, oh, ow)
    plane = (nn * c + cc) * (h * w)
    flat = x.reshape(-1)
    ninf = x.dtype.type(-np.inf)
    best = best_k = None
    for k in range(kh * kw):
        hh = out_h * sh + k // kw - ph
        ww = out_w * sw + k % kw - pw
        inside = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < w)
        v = np.where(inside, flat[plane + np.clip(hh, 0, h - 1) * w + np.clip(ww, 0, w - 1)], ninf)
        if k == 0:
            best, best_k = v.copy(), np.zeros(v.shape, dtype=np.int64)
        else:
            better = v > best
            best = np.where(better, v, best)
            best_k = np.where(better, k, best_k)
    idx_dtype = np.uint8 if kh * kw <= 256 else np.int32
    return best.astype(x.dtype, copy=False), best_k.astype(idx_dtype)


def maxpool2d_backward_twin(dy, argmax, x_shape, kernel_size=2, stride=2, padding=0):
    """The gather max-pool backward kernel: every input pixel sums dy over the
    windows that contain it (same arithmetic as :func:`col2im_twin`) and whose
    argmax is the pixel's offset in that window."""
    dy = np.ascontiguousarray(dy)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = _geometry(x_shape, kernel_size, stride, padding)
    dy_flat = dy.reshape(-1)
    arg_flat = np.ascontiguousarray(argmax).reshape(-1).astype(np.int64)
    nn, cc, hh, ww = _pixels(n, c, h, w)
    nc = nn * c + cc
    total = np.zeros((n, c, h, w), dtype=dy.dtype)
    for i in range(kh):
        out_h, ok_h = _windows_containing(hh + ph, i, sh, oh)
        for j in range(kw):
            out_w, ok_w = _windows_containing(ww + pw, j, sw, ow)
            o = np.where(ok_h & ok_w, (nc * oh + out_h) * ow + out_w, 0)
            hit = ok_h & ok_w & (arg_flat[o] == i * kw + j)
            total += np.where(hit, dy_flat[o], dy.dtype.type(0))
    return total
