"""The fast CPU convolution in the channels-last layout: the textbook im2col product
with pixels as rows and channels as columns.

An activation keeps its shape (N, C, H, W) everywhere in tinyvgg; only where its
numbers sit in memory changes. "Channels-last" (PyTorch's ``channels_last``
memory format) stores it as (N, H, W, C): the C values of one pixel side by
side. In NumPy that is an (N, H, W, C) array seen through ``.transpose(0, 3, 1, 2)``:
a view of shape (N, C, H, W), so every op and test sees the same array as before.

Why it is faster for VGG's small maps (all measured in ``benchmarks/bench_layers.py``):

1. **im2col copies runs of KW*C numbers.** With the padded chunk stored
   (m, Hp, Wp, C), the window values of one output pixel and one kernel row are
   KW*C consecutive numbers, so the columns (m*OH*OW, KH*KW*C) are built from
   long runs whatever the map size (the channels-first layout copies runs of OW
   numbers: 2 on a 2x2 map).
2. **No folding.** The product ``cols @ W2.T`` is (m*OH*OW, F): the output
   chunk already in channels-last order, written straight into the output with
   ``out=``, the bias added along its rows.
3. **Fast per-channel reductions downstream.** BatchNorm sees the activation as
   an (N*H*W, C) matrix (``tinyvgg.layers``), whose column sums NumPy runs over
   contiguous rows; ReLU and pooling keep the layout (NumPy's ufuncs do).

The arithmetic is :func:`tinyvgg.ops.conv.conv2d_forward_simple`'s, with the
columns' rows ordered (i, j, c) instead of (c, i, j)::

    forward:   y2   = cols @ Wt.T + b       Wt = weight.transpose(0, 2, 3, 1).reshape(F, K)
    backward:  dWt  = dy2.T @ cols          dy2 = dy as (m*OH*OW, F)
               db   = sum of dy2 over rows
               dx   = the same convolution of dy (stride 1), or col2im(dy2 @ Wt)

Chunks of images bound the columns' memory (``CHUNK_BYTES``) and run on the
worker threads of :mod:`tinyvgg.ops.cpu.parallel` (copy and single-threaded
product on each core), dW and db summed in chunk order as in :mod:`.conv`. When
one image's columns alone are over the bound (64 channels at 224 x 224: 115 MB),
a chunk is a band of output rows of one image instead: its columns need only the
padded input rows under the band, and for a stride-1 convolution whose output is
as large as its input (VGG's), dx's convolution of dy uses the same bands.
When a layer's columns for the whole batch are small (``KEEP_COLUMNS_BYTES``,
the narrow networks trained on CPUs), the forward pass keeps them for backward,
which then does not build them again; larger ones are recomputed chunk by chunk
(the memory bound of the channels-first version).

**The weights are stored channels-last too** (:func:`channels_last_weight`, what
:class:`tinyvgg.layers.Conv2d` keeps on the host): a weight (F, C, KH, KW) whose
numbers sit (F, KH, KW, C) in memory. Then Wt (F, KH*KW*C) is a view of it, not a
copy; dW comes out of its product as dWt (F, K) = dy2.T @ cols, which *is* the
gradient (F, C, KH, KW) stored the same way (a view again); and the flipped weights
of dx's convolution are copied in runs of C numbers instead of gathered one number
at a time. On a C-contiguous weight the same code copies (Wt) and transposes (dW):
at width 1 those re-layouts move the 37 MB of VGG-11's convolution weights about four
times per step. Stored channels-last, the width-1 step took 0.80-0.85x the time on 2
replicas (``benchmarks/bench_switches.py --switches channels_last_weights``, results in
``benchmarks/results/channels_last_weights_zen5_2026-12-03/``).
"""

from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ..shapes import as_strided, conv_output_size
from . import parallel, scratch

__all__ = ["conv2d_forward_cl", "conv2d_backward_cl", "ChannelsLastConvCache", "nhwc",
           "is_channels_last", "empty_like_layout", "channels_last_weight"]

# Bound on one chunk's columns: images, or a band of rows of one image when one image is
# over it. Two chunks are in flight on two cores: 32 MB keeps a forward+backward of the
# 224-pixel, 64-channel layer (batch 8) near 0.41 GB above its inputs.
CHUNK_BYTES = 32 << 20
KEEP_COLUMNS_BYTES = 32 << 20  # forward keeps a layer's columns for backward up to this (0: never)
# Conv2d stores its weight channels-last on the host (see the module notes; False: C-contiguous)
CHANNELS_LAST_WEIGHTS = True


def is_channels_last(a):
    """True when ``a`` (N, C, H, W) is stored (N, H, W, C), C-contiguous."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def nhwc(a):
    """``a`` (N, C, H, W) as a C-contiguous (N, H, W, C) array: a view when it is
    stored channels-last already, else one transposing copy."""
    xp = get_array_module(a)
    return xp.ascontiguousarray(a.transpose(0, 2, 3, 1))


def channels_last_weight(weight):
    """``weight`` (F, C, KH, KW) with the same values stored (F, KH, KW, C): the
    layout of the products' rows Wt (see the module notes). Returned as it is when
    it is stored so already, is not a NumPy array (the GPU's kernels take any
    layout) or ``CHANNELS_LAST_WEIGHTS`` is off."""
    if not CHANNELS_LAST_WEIGHTS or type(weight) is not np.ndarray or weight.ndim != 4 \
            or is_channels_last(weight):
        return weight
    f, c, kh, kw = weight.shape
    out = np.empty((f, kh, kw, c), dtype=weight.dtype).transpose(0, 3, 1, 2)
    out[...] = weight
    return out


def empty_like_layout(a, shape, dtype=None):
    """An uninitialised (N, C, H, W) array of ``shape``, channels-last when ``a`` is."""
    xp = get_array_module(a)
    dtype = a.dtype if dtype is None else dtype
    if is_channels_last(a):
        n, c, h, w = shape
        return xp.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    return xp.empty(shape, dtype=dtype)


class _Geometry:
    """Sizes of one convolution: output size, K = KH*KW*C, images per chunk,
    output rows per chunk (``band``: OH unless one image's columns are over the
    budget) and whether the chunks are worth the worker threads."""

    def __init__(self, x_shape, f, kernel, stride, padding, itemsize, chunk_bytes=None):
        self.n, self.c, self.h, self.w = x_shape
        self.f, self.kernel, self.stride, self.padding = f, kernel, stride, padding
        (kh, kw), (ph, pw) = kernel, padding
        self.oh = conv_output_size(self.h, kh, stride[0], ph)
        self.ow = conv_output_size(self.w, kw, stride[1], pw)
        self.k = kh * kw * self.c
        # a 1x1 convolution with stride 1 and no padding: the image is its own column matrix
        self.pointwise = (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0)
        budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        row_bytes = self.k * self.ow * itemsize               # the columns of one output row
        by_memory = budget // (row_bytes * self.oh)
        self.tasks = parallel.split(2 * f * self.k * self.oh * self.ow * self.n, parallel.MIN_TASK_FLOPS)
        self.chunk = int(max(1, min(by_memory, -(-self.n // self.tasks))))
        # Bands of output rows of one image, when that image's columns alone are over
        # the budget and dx's convolution can take the same bands (see the module notes).
        can_band = not self.pointwise and stride == (1, 1) and (self.oh, self.ow) == (self.h, self.w)
        self.band = int(max(1, budget // row_bytes)) if (by_memory == 0 and can_band) else self.oh

    def chunks(self):
        """``[(i, n0, n1, r0, r1), ...]``: chunk i is output rows r0:r1 of images n0:n1
        (all rows, or a band of one image)."""
        out = []
        for n0 in range(0, self.n, self.chunk):
            for r0 in range(0, self.oh, self.band):
                out.append((len(out), n0, min(n0 + self.chunk, self.n), r0, min(r0 + self.band, self.oh)))
        return out


def _band(a, n0, n1, r0, r1):
    """Rows r0:r1 of images n0:n1 of ``a`` (N, OH, OW, F), C-contiguous, as a
    (m*rows*OW, F) view (a chunk of chunks(): all rows, or a band of one image)."""
    v = a[n0:n1, r0:r1]
    assert v.flags.c_contiguous, "a band spans one image"
    return v.reshape(-1, a.shape[-1])


def _padded(x, padding, xp, rows=None):
    """The chunk ``x`` (m, C, H, W), any layout, zero-padded as (m, Hp, Wp, C);
    only padded rows ``rows = (p0, p1)`` of it, (m, p1 - p0, Wp, C), when given."""
    ph, pw = padding
    m, c, h, w = x.shape
    p0, p1 = (0, h + 2 * ph) if rows is None else rows
    out = scratch.take((m, p1 - p0, w + 2 * pw, c), x.dtype, xp)
    i0 = max(p0 - ph, 0)                     # the image's rows under the band: i0:i1,
    i1 = max(min(p1 - ph, h), i0)
    o0, o1 = i0 + ph - p0, i1 + ph - p0      # at out's rows o0:o1; zeros around them
    out[:, :o0] = 0
    out[:, o1:] = 0
    if pw:
        out[:, o0:o1, :pw] = 0
        out[:, o0:o1, pw + w:] = 0
    out[:, o0:o1, pw:pw + w] = x[:, :, i0:i1].transpose(0, 2, 3, 1)
    return out


def _columns(x, g, xp, rows=None):
    """Columns of a chunk (m, C, H, W): a (m*OH*OW, KH*KW*C) scratch matrix; of its
    output rows ``rows = (r0, r1)`` only, (m*(r1 - r0)*OW, KH*KW*C), when given."""
    if g.pointwise:
        return nhwc(x).reshape(-1, g.c)
    (kh, kw), (sh, sw) = g.kernel, g.stride
    r0, r1 = (0, g.oh) if rows is None else rows
    xpad = _padded(x, g.padding, xp, (r0 * sh, (r1 - 1) * sh + kh))  # the padded rows they read
    m = xpad.shape[0]
    s_n, s_h, s_w, s_c = xpad.strides
    # src[n, oh, ow, i, j, c] = xpad[n, (oh - r0)*SH + i, ow*SW + j, c]
    src = as_strided(xpad, (m, r1 - r0, g.ow, kh, kw, g.c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))
    cols = scratch.take(src.shape, x.dtype, xp)
    cols[...] = src
    return cols.reshape(m * (r1 - r0) * g.ow, g.k)


def _rows_weight(weight):
    """``weight`` (F, C, KH, KW) as Wt (F, KH*KW*C): columns ordered (i, j, c) like the
    columns'. A view of a weight stored channels-last, else a copy."""
    xp = get_array_module(weight)
    f = weight.shape[0]
    return xp.ascontiguousarray(weight.transpose(0, 2, 3, 1)).reshape(f, -1)


def _flipped_rows_weight(weight):
    """The rows of dx's convolution (see :func:`_dx_geometry`): the weights flipped in
    both spatial axes with F and C swapped, (C, KH*KW*F) with columns ordered (i, j, f),
    ``wf[c, (i, j, f)] = weight[f, c, KH-1-i, KW-1-j]``. Built as its transpose
    (KH*KW*F, C), a copy in runs of C numbers when the weight is stored channels-last."""
    xp = get_array_module(weight)
    f, c, kh, kw = weight.shape
    return xp.ascontiguousarray(weight.transpose(2, 3, 0, 1)[::-1, ::-1]).reshape(kh * kw * f, c).T


def _conv_chunk(y2, x, wt, g, bias, relu, xp, rows=None):
    """y2 (m*OH*OW, F) = the convolution of the chunk x (m, C, H, W) (of its output
    rows ``rows`` only, when given); returns the chunk's columns."""
    cols = _columns(x, g, xp, rows)
    xp.matmul(cols, wt.T, out=y2)
    if bias is not None:
        y2 += bias
    if relu:
        xp.maximum(y2, 0, out=y2)
    return cols


def _dx_geometry(g, weight_shape, chunk_bytes, itemsize):
    """The geometry of dx computed as a convolution of dy (stride 1 and padding at
    most the kernel's reach), or None (col2im). Shrinks ``g.chunk`` so that both
    products share the chunks."""
    f, c, kh, kw = weight_shape
    ph, pw = g.padding
    if not (g.stride == (1, 1) and ph <= kh - 1 and pw <= kw - 1):
        return None
    gt = _Geometry((g.n, f, g.oh, g.ow), c, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), itemsize,
                   chunk_bytes)
    g.chunk = min(g.chunk, gt.chunk)
    if gt.band < gt.oh:  # dy's columns need bands: then OH = H, and g takes the same bands
        g.band = min(g.band, gt.band)
    return gt


class ChannelsLastConvCache(tuple):
    """What :func:`conv2d_forward_cl` hands to :func:`conv2d_backward_cl`:
    ``(x, weight, has_bias, stride, padding, relu_y, chunk_bytes, kept)``; ``kept``
    maps each chunk ``(n0, n1, r0, r1)`` to the forward's columns (emptied by the first
    backward) or is None; backward recomputes the columns of a chunk from ``x``
    when they are not there."""

    __slots__ = ()


def conv2d_forward_cl(x, weight, bias, stride, padding, relu=False, chunk_bytes=None, keep_columns=True):
    """x (N, C, H, W), any layout -> ``(y, cache)``, y (N, F, OH, OW) stored channels-last.
    ``keep_columns=False``: no backward follows (evaluation), keep no columns for it."""
    xp = get_array_module(x, weight)
    f, _, kh, kw = weight.shape
    g = _Geometry(x.shape, f, (kh, kw), stride, padding, x.dtype.itemsize, chunk_bytes)
    y = xp.empty((g.n, g.oh, g.ow, f), dtype=x.dtype)
    wt = _rows_weight(weight)
    keep = keep_columns and g.n * g.oh * g.ow * g.k * x.dtype.itemsize <= KEEP_COLUMNS_BYTES
    if keep:  # chunk as backward will, so that it can use these columns
        _dx_geometry(g, weight.shape, chunk_bytes, x.dtype.itemsize)
    kept = {} if keep else None

    def chunk(i, n0, n1, r0, r1):
        cols = _conv_chunk(_band(y, n0, n1, r0, r1), x[n0:n1], wt, g, bias, relu, xp, (r0, r1))
        if keep:
            kept[n0, n1, r0, r1] = cols
    parallel.run(chunk, g.chunks(), xp, threads=g.tasks > 1)
    y = y.transpose(0, 3, 1, 2)
    return y, ChannelsLastConvCache((x, weight, bias is not None, stride, padding,
                                     y if relu else None, chunk_bytes, kept))


def conv2d_backward_cl(dy, cache, input_grad=True):
    """Gradients of :func:`conv2d_forward_cl`: dy (N, F, OH, OW), any layout ->
    ``(dx, dweight, dbias)``; dx (N, C, H, W) stored channels-last, None when
    ``input_grad`` is False."""
    x, weight, has_bias, stride, padding, relu_y, chunk_bytes, kept = cache
    xp = get_array_module(dy, weight)
    f, c, kh, kw = weight.shape
    g = _Geometry(x.shape, f, (kh, kw), stride, padding, x.dtype.itemsize, chunk_bytes)
    dy4 = nhwc(dy)                                           # (N, OH, OW, F)
    if relu_y is not None:  # the fused ReLU's gradient: zero where the output was clipped
        dy4 = dy4 * (nhwc(relu_y) > 0)
    wt = _rows_weight(weight)
    # dx as the convolution of dy, zero-padded by (KH-1-PH, KW-1-PW), with the weights
    # flipped in both spatial axes and F, C swapped: (C, F, KH, KW); or col2im
    gt = _dx_geometry(g, weight.shape, chunk_bytes, dy.dtype.itemsize)
    as_conv = gt is not None
    if input_grad and as_conv:
        wt_flip = _flipped_rows_weight(weight)
    # dW in the weight's own layout: dWt (F, K) is the gradient stored channels-last
    # (then the result is a view of it); else dWt.T (K, F), transposed at the end
    weight_cl = is_channels_last(weight)
    dx = xp.empty((g.n, g.h, g.w, c), dtype=dy.dtype) if input_grad else None
    chunks = g.chunks()
    dw_parts, db_parts = [None] * len(chunks), [None] * len(chunks)
    kept = kept or {}

    def chunk(i, n0, n1, r0, r1):
        dy2 = _band(dy4, n0, n1, r0, r1)                     # (m*OH*OW, F), or a band's rows
        cols = kept.pop((n0, n1, r0, r1), None)              # (m*OH*OW, K): the forward's,
        if cols is None:                                     # or built again from x
            cols = _columns(x[n0:n1], g, xp, (r0, r1))
        dw_parts[i] = xp.matmul(dy2.T, cols) if weight_cl else xp.matmul(cols.T, dy2)  # dWt or dWt.T
        if has_bias:  # ones @ dy2: BLAS sums the columns far faster than dy2.sum(axis=0)
            db_parts[i] = xp.ones(dy2.shape[0], dtype=dy2.dtype) @ dy2
        if not input_grad:
            return
        if as_conv:
            del cols  # its scratch buffer may now hold the columns of dy
            rows = None if g.band == g.oh else (r0, r1)      # dx's rows: a band needs H = OH
            dx2 = dx[n0:n1].reshape(-1, c) if rows is None else _band(dx, n0, n1, r0, r1)
            _conv_chunk(dx2, dy4[n0:n1].transpose(0, 3, 1, 2), wt_flip, gt, None, False, xp, rows)
        else:
            dcols = xp.matmul(dy2, wt, out=None if g.pointwise else cols)  # (m*OH*OW, K)
            del cols
            _col2im_chunk(dx[n0:n1], dcols, g, xp)

    parallel.run(chunk, chunks, xp, threads=g.tasks > 1)
    kept.clear()  # (every chunk took its own out already)
    dwt = parallel.sum_in_order(dw_parts)              # (F, K) or (K, F); K ordered (i, j, c)
    if weight_cl:
        dw = dwt.reshape(f, kh, kw, c).transpose(0, 3, 1, 2)   # a view, stored as the weight is
    else:
        dw = xp.ascontiguousarray(dwt.T.reshape(f, kh, kw, c).transpose(0, 3, 1, 2))
    db = parallel.sum_in_order(db_parts) if has_bias else None
    return (dx.transpose(0, 3, 1, 2) if input_grad else None), dw, db


def _col2im_chunk(dx, dcols, g, xp):
    """dx (m, H, W, C) = col2im of ``dcols`` (m*OH*OW, KH*KW*C): every column entry
    added back to the pixel it came from, one strided addition per kernel offset."""
    m = dx.shape[0]
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    dxpad = scratch.take((m, g.h + 2 * ph, g.w + 2 * pw, g.c), dx.dtype, xp)
    dxpad[...] = 0
    d6 = dcols.reshape(m, g.oh, g.ow, kh, kw, g.c)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, i:i + sh * g.oh:sh, j:j + sw * g.ow:sw] += d6[:, :, :, i, j]
    dx[...] = dxpad[:, ph:ph + g.h, pw:pw + g.w]
