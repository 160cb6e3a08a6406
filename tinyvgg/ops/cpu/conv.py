"""The fast CPU convolution, channels-first: the textbook im2col product, with the data moved cleverly.

The textbook version is :func:`tinyvgg.ops.conv.conv2d_forward_simple` (read it
first); this module computes the same numbers faster on NumPy arrays. The default
on NumPy is now its channels-last sibling (:mod:`.channels_last`, taken at the top
of :func:`conv2d_forward_fast` while ``OPTIMISATIONS["channels_last"]`` is on);
everything below is what runs when it is off, and what the channels-last version
borrows from (chunks, scratch buffers, worker threads, dx as a convolution). The
notation is that module's: x (N, C, H, W), weight (F, C, KH, KW), output
(N, F, OH, OW), P = OH*OW positions per image, K = C*KH*KW per column.

The arithmetic is three matrix products, one per pass::

    forward:   y    = W2 @ cols + b          W2 = weight.reshape(F, K), cols = im2col(x)
    backward:  dW2  = dy @ cols.T            (the sum over the batch is inside the product)
               db   = sum of dy over n, oh, ow
               dx   = col2im(W2.T @ dy)

and NumPy hands each product to BLAS. Everything else only moves data, and how
it moves decides the speed. What this module does about it (each measured in
``benchmarks/bench_layers.py``, see ``benchmarks/README.md``, and one at a time
in ``lessons/13_simple_and_fast.py``; ``OPTIMISATIONS`` turns 3, 4, 7 and the
1x1 shortcut off, for such measurements; results stay the same):

1. **One product per chunk of images, not one per image.** The columns of a
   chunk of ``m`` images are laid out as one (K, m*P) matrix, so that
   ``W2 @ cols`` is a single well-shaped GEMM even when P is tiny (P = 4 on a
   2x2 feature map, where a per-image product would be a 512 x 4608 x 4 GEMM).
   The product comes out as (F, m, P); copying it into the (m, F, OH, OW) output
   ("folding") is one pass, and the bias (and optionally a ReLU) rides along.

2. **Chunks bound the memory.** The batch is processed ``m`` images at a time,
   ``m`` chosen so that a chunk's columns stay below ``CHUNK_BYTES`` (at least
   one image). Backward recomputes the columns chunk by chunk instead of keeping
   all of them from the forward pass (the forward cache holds only x and the
   weights): a copy is cheap next to the product it feeds, and the columns of a
   whole batch are 9x the input (925 MB for 8 images of 64 x 224 x 224).

3. **"Wide" columns for stride 1.** With stride 1, window offset (i, j) of every
   output position is the zero-padded image shifted by i rows and j columns. If
   the output row is given the padded width Wp = W + 2*PW (OW real positions plus
   KW - 1 junk ones), that shift is a shift of the *flattened* padded image by
   i*Wp + j, so each row of ``cols`` is one contiguous run of OH*Wp values: im2col
   becomes KH*KW*C long memcpy's instead of short strided copies. The junk
   positions of the product are dropped when folding; in backward, the matching
   positions of dy are set to zero, so they add nothing to dW. Used when the junk
   is at most an eighth of the row (OW >= 8*(KW - 1), ``WIDE_MIN_OW_PER_JUNK``).

   Small maps (and strides > 1) use "compact" columns without junk, ordered with
   the *batch innermost*: the chunk is first copied to a padded (C, Hp, Wp, m)
   array, so that the values one window offset reads for one output row are a
   single run of OW*m numbers. (Ordered per image, a 4x4 map would copy runs of
   4 numbers, and the copy took longer than the product.)

4. **dx as a convolution.** For stride 1 (and PH <= KH - 1, PW <= KW - 1), the
   gradient of the input is itself a convolution: dy, zero-padded by
   (KH-1-PH, KW-1-PW), correlated with the weights flipped in both spatial axes
   and with F and C swapped. So backward reuses the forward code (wide columns
   of dy, one product, fold) instead of col2im, whose KH*KW read-modify-write
   passes over an accumulating buffer cost more than the copies of im2col.
   Other strides use col2im.

5. **Scratch buffers are reused** (:mod:`tinyvgg.ops.cpu.scratch`): the padded chunk,
   the columns and the raw product come from a pool, so the next call does not
   page-fault fresh memory. A buffer is reused only when nothing references it.

6. **Chunks run on all cores** (:mod:`tinyvgg.ops.cpu.parallel`): when the product
   is big enough to share (``MIN_TASK_FLOPS``), there is at least one chunk per
   core and each core runs whole chunks (copy, single-threaded product, fold),
   so no core idles while another copies. dW and db are summed per chunk and
   added in chunk order, so results do not depend on thread timing.

7. **dW's product is oriented** so that OpenBLAS runs it well: ``cols @ dy.T``
   (giving dW transposed) when K > F, ``dy @ cols.T`` otherwise. The other way
   round, a long-inner-dimension product with a short first side, ran several
   times slower with two BLAS threads.

A 1x1 convolution with stride 1 and no padding needs no im2col at all: the image
itself, viewed as (N, C, H*W), already is its column matrix (a batched product).

The loop versions in :mod:`tinyvgg.reference` define what correct means; the
tests compare these functions with them and with the textbook version.
"""

from __future__ import annotations

from ...backend import get_array_module
from ..shapes import as_strided, conv_output_size, pad_input, pair
from . import parallel, scratch
from .channels_last import ChannelsLastConvCache, conv2d_backward_cl, conv2d_forward_cl

__all__ = ["conv2d_forward_fast", "conv2d_backward_fast", "FastConvCache", "CHUNK_BYTES",
           "OPTIMISATIONS"]

CHUNK_BYTES = 48 << 20  # bound on one chunk's columns (at least one image is taken)
WIDE_MIN_OW_PER_JUNK = 8  # wide columns when OW >= 8 * (KW - 1): at most 12.5% junk
MIN_TASK_FLOPS = parallel.MIN_TASK_FLOPS  # smallest product worth another worker thread

# Optimisations that can be switched off one at a time, to measure what each buys
# (the numbers stay the same): wide columns (3), dx as a convolution (4), dW's
# product oriented for BLAS (7), and a 1x1 convolution without im2col. Chunking
# (1, 2) is set by ``chunk_bytes``, scratch reuse (5) by ``scratch.set_limit(0)``
# and the worker threads (6) by ``parallel.set_workers(1)``.
OPTIMISATIONS = {"channels_last": True, "wide_columns": True, "dx_as_convolution": True,
                 "oriented_dw": True, "pointwise": True}


class _Geometry:
    """Sizes of one convolution and the layout of its columns.

    ``row`` is the length of one output row in the columns (Wp for wide columns,
    OW for compact ones), ``positions`` = OH * row per image, and ``chunk`` the
    number of images per chunk.
    """

    def __init__(self, x_shape, f, kernel, stride, padding, itemsize, chunk_bytes=None):
        self.n, self.c, self.h, self.w = x_shape
        self.kernel, self.stride, self.padding = kernel, stride, padding
        (kh, kw), (ph, pw) = kernel, padding
        self.oh = conv_output_size(self.h, kh, stride[0], ph)
        self.ow = conv_output_size(self.w, kw, stride[1], pw)
        self.k = self.c * kh * kw
        self.wide = (OPTIMISATIONS["wide_columns"] and stride == (1, 1)
                     and WIDE_MIN_OW_PER_JUNK * (kw - 1) <= self.ow)
        self.row = self.w + 2 * pw if self.wide else self.ow
        self.positions = self.oh * self.row
        budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        by_memory = budget // (self.k * self.positions * itemsize)
        # One chunk per worker at least, when the product is big enough to share.
        self.tasks = parallel.split(2 * f * self.k * self.oh * self.ow * self.n, MIN_TASK_FLOPS)
        self.chunk = int(max(1, min(by_memory, -(-self.n // self.tasks))))

    def chunks(self):
        for n0 in range(0, self.n, self.chunk):
            yield n0, min(n0 + self.chunk, self.n)


def _columns(x, g):
    """Columns of a chunk ``x`` (m, C, H, W): a (K, m*positions) scratch matrix,
    rows ordered (c, i, j) like ``weight.reshape(F, K)``'s columns; positions
    ordered (n, oh, t < Wp) for wide columns, (oh, ow, n) for compact ones."""
    xp = get_array_module(x)
    m = x.shape[0]
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    hp, wp = g.h + 2 * ph, g.w + 2 * pw
    if g.wide:
        # One spare zero row: the junk positions of the last offsets read up to
        # KW - 1 values past the padded image (the zeros keep them finite).
        xpad = pad_input(x, (ph, pw), out=scratch.take((m, g.c, hp + 1, wp), x.dtype, xp))
        s_n, s_c, s_h, s_w = xpad.strides
        # src[c, i, j, n, t] = flattened xpad[n, c] at i*Wp + j + t: a run of OH*Wp values.
        src = as_strided(xpad, (g.c, kh, kw, m, g.positions), (s_c, s_h, s_w, s_n, s_w))
        cols = scratch.take((g.c, kh, kw, m, g.positions), x.dtype, xp)
    else:
        # Small maps: the image's rows are too short for long copies, so the batch
        # becomes the innermost axis. The padded chunk is stored (C, Hp, Wp, m), and
        # the window values of one (c, i, j, oh) then sit in one run of OW*m values
        # (with stride 1; runs of m otherwise).
        xpad = _pad_batch_minor(x, (ph, pw), scratch.take((g.c, hp, wp, m), x.dtype, xp))
        s_c, s_h, s_w, s_n = xpad.strides
        src = as_strided(xpad, (g.c, kh, kw, g.oh, g.ow, m),
                         (s_c, s_h, s_w, s_h * sh, s_w * sw, s_n))
        cols = scratch.take((g.c, kh, kw, g.oh, g.ow, m), x.dtype, xp)
    cols[...] = src
    return cols.reshape(g.k, m * g.positions)


def _pad_batch_minor(x, padding, out):
    """``out`` (C, H + 2*PH, W + 2*PW, m) = x (m, C, H, W) zero-padded, batch innermost."""
    ph, pw = padding
    m, c, h, w = x.shape
    if ph or pw:
        out[:, :ph] = 0
        out[:, ph + h:] = 0
        out[:, ph:ph + h, :pw] = 0
        out[:, ph:ph + h, pw + w:] = 0
    out[:, ph:ph + h, pw:pw + w] = x.transpose(1, 2, 3, 0)
    return out


def _product_view(a, m, g):
    """The columns' product ``a`` (F, m*positions) as an (F, m, OH, OW) view,
    junk positions dropped, whatever the layout."""
    f = a.shape[0]
    if g.wide:
        return a.reshape(f, m, g.oh, g.row)[:, :, :, :g.ow]
    return a.reshape(f, g.oh, g.ow, m).transpose(0, 3, 1, 2)


def _fold(out, prod, g, bias=None, relu=False):
    """Copy the product ``prod`` (F, m*positions) into ``out`` (m, F, OH, OW),
    dropping junk positions, adding ``bias`` and applying a ReLU on the way."""
    xp = get_array_module(prod)
    m, f = out.shape[:2]
    src = _product_view(prod, m, g)
    dst = out.transpose(1, 0, 2, 3)  # a view: writing it writes ``out``
    if bias is not None:
        xp.add(src, bias.reshape(f, 1, 1, 1), out=dst)
    else:
        dst[...] = src
    if relu:
        xp.maximum(dst, 0, out=dst)


def _spread(dy, g):
    """dy of a chunk (m, F, OH, OW) laid out like the columns' product:
    (F, m*positions), zero at the junk positions of wide columns."""
    xp = get_array_module(dy)
    m, f = dy.shape[:2]
    out = scratch.take((f, m * g.positions), dy.dtype, xp)
    _product_view(out, m, g)[...] = dy.transpose(1, 0, 2, 3)
    if g.row > g.ow:
        out.reshape(f, m, g.oh, g.row)[:, :, :, g.ow:] = 0
    return out


def _conv_chunk(out, x, w2, g, bias=None, relu=False):
    """out (m, F, OH, OW) = conv of the chunk x; returns the chunk's columns."""
    xp = get_array_module(x, w2)
    cols = _columns(x, g)
    prod = xp.matmul(w2, cols, out=scratch.take((w2.shape[0], cols.shape[1]), x.dtype, xp))
    _fold(out, prod, g, bias, relu)
    return cols


class FastConvCache(tuple):
    """What :func:`conv2d_forward_fast` hands to :func:`conv2d_backward_fast`:
    ``(x, weight, has_bias, stride, padding, relu_y, chunk_bytes)``. It refers to
    ``x`` itself (backward recomputes the columns from it)."""

    __slots__ = ()


def _is_pointwise(kernel, stride, padding):
    return (OPTIMISATIONS["pointwise"] and kernel == (1, 1) and stride == (1, 1)
            and padding == (0, 0))


def conv2d_forward_fast(x, weight, bias=None, stride=1, padding=0, *, relu=False, chunk_bytes=None,
                        keep_columns=True):
    """``tinyvgg.ops.conv2d_forward`` for NumPy arrays: x (N, C, H, W), weight
    (F, C, KH, KW), bias (F,) or None -> ``(y (N, F, OH, OW), FastConvCache)``.
    ``relu=True`` fuses a ReLU; ``chunk_bytes`` overrides ``CHUNK_BYTES`` (1: one
    image per chunk; on the channels-last path, one output row of one image for a
    stride-1 'same' convolution, see :mod:`.channels_last`). ``x`` must not change in place before backward."""
    xp = get_array_module(x, weight)
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    kernel, stride, padding = (kh, kw), pair(stride, "stride"), pair(padding, "padding")
    if OPTIMISATIONS["channels_last"] and xp.__name__ == "numpy":  # the default: see .channels_last
        return conv2d_forward_cl(x, weight, bias, stride, padding, relu, chunk_bytes, keep_columns)
    w2 = weight.reshape(f, -1)
    if _is_pointwise(kernel, stride, padding):
        y = _pointwise_forward(x, w2, bias, relu)
    else:
        g = _Geometry(x.shape, f, kernel, stride, padding, x.dtype.itemsize, chunk_bytes)
        y = xp.empty((n, f, g.oh, g.ow), dtype=x.dtype)

        def chunk(n0, n1):
            _conv_chunk(y[n0:n1], x[n0:n1], w2, g, bias, relu)
        parallel.run(chunk, g.chunks(), xp, threads=g.tasks > 1)
    cache = FastConvCache((x, weight, bias is not None, stride, padding, y if relu else None, chunk_bytes))
    return y, cache


def _pointwise_forward(x, w2, bias, relu):
    """A 1x1 convolution: the image (N, C, H*W) already is its column matrix."""
    xp = get_array_module(x, w2)
    n, c, h, w = x.shape
    f = w2.shape[0]
    y = xp.matmul(w2, x.reshape(n, c, h * w))  # (F, C) @ (N, C, HW) -> (N, F, HW)
    if bias is not None:
        y += bias.reshape(1, f, 1)
    if relu:
        xp.maximum(y, 0, out=y)
    return y.reshape(n, f, h, w)


def _pointwise_backward(dy, x, w2, has_bias, relu_y, input_grad):
    xp = get_array_module(dy, w2)
    n, c = x.shape[:2]
    f = w2.shape[0]
    if relu_y is not None:  # the fused ReLU's gradient: zero where the output was clipped
        dy = xp.multiply(dy, relu_y > 0, dtype=dy.dtype)
    dy3 = dy.reshape(n, f, -1)
    x3 = x.reshape(n, c, -1)
    dw = xp.matmul(dy3, x3.transpose(0, 2, 1)).sum(axis=0)
    db = dy3.sum(axis=(0, 2)) if has_bias else None
    dx = xp.matmul(w2.T, dy3).reshape(x.shape) if input_grad else None
    return dx, dw, db


def conv2d_backward_fast(dy, cache, *, input_grad=True):
    """Gradients of :func:`conv2d_forward_fast`: ``dy`` (N, F, OH, OW) ->
    ``(dx, dweight, dbias)``, (N, C, H, W), (F, C, KH, KW) and (F,) or None;
    dx is None when ``input_grad`` is False."""
    if isinstance(cache, ChannelsLastConvCache):
        return conv2d_backward_cl(dy, cache, input_grad)
    x, weight, has_bias, stride, padding, relu_y, chunk_bytes = cache
    f, c, kh, kw = weight.shape
    w2 = weight.reshape(f, -1)
    if _is_pointwise((kh, kw), stride, padding):
        dx, dw, db = _pointwise_backward(dy, x, w2, has_bias, relu_y, input_grad)
        return dx, dw.reshape(weight.shape), db
    g = _Geometry(x.shape, f, (kh, kw), stride, padding, x.dtype.itemsize, chunk_bytes)
    xp = get_array_module(dy, weight)
    dx_conv = _dx_as_convolution(dy, weight, g, chunk_bytes) if input_grad else None
    # dW's product, (F, M) @ (M, K) with M = m*positions long: multi-threaded
    # OpenBLAS ran it several times slower when the output's first side is the
    # short one, so dW2.T = cols @ dy.T is computed instead when K > F (every VGG
    # layer but the first). Single-threaded (the worker threads) it makes no
    # difference either way.
    transposed_dw = OPTIMISATIONS["oriented_dw"] and g.k > f
    dx = xp.empty(x.shape, dtype=dy.dtype) if input_grad else None
    chunks = list(g.chunks())
    dw_parts, db_parts = [None] * len(chunks), [None] * len(chunks)

    def chunk(i, n0, n1):
        dyc = _relu_gradient(dy[n0:n1], relu_y, n0, n1)
        cols = _columns(x[n0:n1], g)
        dyw = _spread(dyc, g)
        dw_parts[i] = xp.matmul(cols, dyw.T) if transposed_dw else xp.matmul(dyw, cols.T)
        if has_bias:
            db_parts[i] = dyw.sum(axis=1)  # junk positions are zero
        if not input_grad:
            return
        if dx_conv is not None:
            del cols  # free its scratch buffer for the columns of dy
            _conv_chunk(dx[n0:n1], dyc, *dx_conv)
        else:  # col2im; the product may overwrite the recomputed columns
            dcols = xp.matmul(w2.T, dyw, out=cols)
            del cols
            _col2im_chunk(dx[n0:n1], dcols, g)

    parallel.run(chunk, [(i, n0, n1) for i, (n0, n1) in enumerate(chunks)], xp, threads=g.tasks > 1)
    dw2 = parallel.sum_in_order(dw_parts)  # in chunk order: the sum does not depend on thread timing
    db = parallel.sum_in_order(db_parts) if has_bias else None
    dw = xp.ascontiguousarray(dw2.T) if transposed_dw else dw2
    return dx, dw.reshape(weight.shape), db


def _relu_gradient(dyc, relu_y, n0, n1):
    """dy of a chunk, zero where a fused ReLU clipped the output."""
    if relu_y is None:
        return dyc
    xp = get_array_module(dyc)
    return xp.multiply(dyc, relu_y[n0:n1] > 0, out=scratch.take(dyc.shape, dyc.dtype, xp))


def _dx_as_convolution(dy, weight, g, chunk_bytes):
    """``(flipped weights, geometry)`` to compute dx as a convolution of dy (see
    the module notes), or None to use col2im. A convolution when the stride is 1,
    unless C is much smaller than F (the first layer, C = 3): its columns of dy
    would be F/C times larger than the columns col2im folds back. Shrinks
    ``g.chunk`` so that both products share the chunks."""
    f, c, kh, kw = weight.shape
    ph, pw = g.padding
    if not (OPTIMISATIONS["dx_as_convolution"] and g.stride == (1, 1) and ph <= kh - 1
            and pw <= kw - 1 and 4 * c >= f):
        return None
    xp = get_array_module(dy, weight)
    wt = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(c, -1)
    gt = _Geometry(dy.shape, c, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), dy.dtype.itemsize,
                   chunk_bytes)
    g.chunk = min(g.chunk, gt.chunk)
    return wt, gt


def _col2im_chunk(dx, dcols, g):
    """dx (m, C, H, W) = the adjoint of :func:`_columns` applied to ``dcols``
    (K, m*positions): every column entry is added back to the pixel it came from
    (one strided slice addition per kernel offset; overlapping windows add up)."""
    xp = get_array_module(dcols)
    m = dx.shape[0]
    (kh, kw), (sh, sw), (ph, pw) = g.kernel, g.stride, g.padding
    # The padded gradient, with axes (C, Hp, Wp, m) in memory order for both
    # layouts; d6[c, i, j] are the values of offset (i, j) as (C, OH, OW, m).
    dxpad = scratch.take((g.c, g.h + 2 * ph, g.w + 2 * pw, m), dx.dtype, xp)
    dxpad[...] = 0
    if g.wide:
        d6 = dcols.reshape(g.c, kh, kw, m, g.oh, g.row)[..., :g.ow].transpose(0, 1, 2, 4, 5, 3)
    else:
        d6 = dcols.reshape(g.c, kh, kw, g.oh, g.ow, m)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, i:i + sh * g.oh:sh, j:j + sw * g.ow:sw] += d6[:, i, j]
    dx[...] = dxpad[:, ph:ph + g.h, pw:pw + g.w].transpose(3, 0, 1, 2)
