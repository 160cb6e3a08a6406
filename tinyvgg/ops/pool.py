"""2-D max-pooling, forward and backward, vectorised over the whole batch.

Notation
--------
N, C, H, W  input       KH, KW  window       SH, SW  stride       PH, PW  padding
OH = (H + 2*PH - KH) // SH + 1      OW = (W + 2*PW - KW) // SW + 1

Padding uses -inf, so a padded position never wins a window.

The forward pass walks the KH*KW window offsets (never the pixels): offset k is
one strided slice of the input, and a running maximum keeps, for every output,
the offset that won (``argmax``, stored as uint8 when the window has at most 256
positions, which keeps backward's memory small).

Ties: when a window holds several equal maxima, the *first* of them in row-major
window order (smallest row, then smallest column) wins and receives the whole
gradient; the others get none. This is what the strict ``>`` in the running
maximum does.

The backward pass sends each output's gradient to the offset that won, again
with one strided slice per offset. Overlapping windows (stride < window) add
up through ``+=``.
"""

from __future__ import annotations

from ..backend import get_array_module
from . import parallel
from .im2col import conv_output_size, on_gpu, pad_input, pair

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


def _quadrants(a, oh, ow):
    """The four strided views a[..., 0::2, 0::2], [0::2, 1::2], [1::2, 0::2], [1::2, 1::2]
    of ``a`` (N, C, H, W), each (N, C, OH, OW): the four corners of the 2x2 windows,
    in row-major window order."""
    return [a[:, :, i:2 * oh:2, j:2 * ow:2] for i in (0, 1) for j in (0, 1)]


MIN_TASK_BYTES = 2 << 20  # the smallest slice of the input worth another worker thread


def _pool2x2_forward(x):
    """2x2 windows, stride 2, no padding: VGG's only pooling, done in whole-array passes.

    The max of the four corners is two levels of pairwise maxima. The winner is
    stored as one uint8 per output (0..3, row-major in the window): ``right``
    (the right column beat the left one in its row, strictly) plus 2 * ``lower``
    (the lower row's max beat the upper row's, strictly). Strict comparisons give
    the tie rule: the first maximum in row-major order wins. Large inputs are cut
    into slices of the batch that run on the worker threads (NumPy's ufuncs
    release the GIL), as the convolution's chunks do.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    y = xp.empty((n, c, h // 2, w // 2), dtype=x.dtype)
    idx = xp.empty(y.shape, dtype=xp.uint8)

    def task(n0, n1):
        a, b, c_, d = _quadrants(x[n0:n1], h // 2, w // 2)
        upper = xp.maximum(a, b)
        lower_max = xp.maximum(c_, d)
        xp.maximum(upper, lower_max, out=y[n0:n1])
        lower = lower_max > upper
        right = xp.where(lower, d > c_, b > a)
        # bools are stored as bytes 0/1: idx = right + 2 * lower
        xp.left_shift(lower.view(xp.uint8), 1, out=idx[n0:n1])
        idx[n0:n1] |= right.view(xp.uint8)
    _run_batch_slices(task, n, x.nbytes, xp)
    return y, idx


def _pool2x2_backward(dy, idx, x_shape):
    """Each 2x2 corner receives dy where it won (``idx == k``), zero elsewhere; rows
    or columns left over by an odd size get zero."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2], dy.shape[3]
    dx = (xp.zeros if (h % 2 or w % 2) else xp.empty)(x_shape, dtype=dy.dtype)

    def task(n0, n1):
        for k, corner in enumerate(_quadrants(dx[n0:n1], oh, ow)):
            xp.multiply(dy[n0:n1], idx[n0:n1] == k, out=corner)
    _run_batch_slices(task, n, dx.nbytes, xp)
    return dx


def _run_batch_slices(task, n, nbytes, xp):
    """task(n0, n1) over one slice of the batch per worker (one slice when small)."""
    parts = parallel.split(nbytes, MIN_TASK_BYTES)
    step = -(-n // parts)
    parallel.run(task, [(i, min(i + step, n)) for i in range(0, n, step)], xp, threads=parts > 1)


def maxpool2d_forward(x, kernel_size=2, stride=2, padding=0):
    """Max-pool ``x`` (N, C, H, W). Returns ``(y, cache)``, ``y`` (N, C, OH, OW)."""
    if on_gpu(x):  # one fused CUDA kernel, same cache layout
        from .cuda_kernels import maxpool2d_forward_gpu
        return maxpool2d_forward_gpu(x, kernel_size, stride, padding)
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        y, idx = _pool2x2_forward(x)
        return y, (x.shape, idx, (kh, kw), (sh, sw), (ph, pw))
    n, c, h, w = x.shape
    oh = conv_output_size(h, kh, sh, ph)
    ow = conv_output_size(w, kw, sw, pw)
    xpad = pad_input(x, (ph, pw), value=-xp.inf)

    def window(i, j):  # the input values at window offset (i, j) of every output
        return xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]

    idx_dtype = xp.uint8 if kh * kw <= 256 else xp.int32
    y = window(0, 0).copy()
    argmax = xp.zeros(y.shape, dtype=idx_dtype)
    for k in range(1, kh * kw):
        i, j = divmod(k, kw)
        v = window(i, j)
        better = v > y  # strict: on a tie the earlier offset keeps the max
        xp.copyto(y, v, where=better)
        argmax[better] = k
    cache = (x.shape, argmax, (kh, kw), (sh, sw), (ph, pw))
    return y, cache


def maxpool2d_backward(dy, cache):
    """Gradient of :func:`maxpool2d_forward`: ``dy`` (N, C, OH, OW) -> ``dx`` (N, C, H, W)."""
    x_shape, argmax, (kh, kw), (sh, sw), (ph, pw) = cache
    if on_gpu(dy):  # gather kernel: each input pixel sums its own windows' gradients
        from .cuda_kernels import maxpool2d_backward_gpu
        return maxpool2d_backward_gpu(dy, argmax, x_shape, (kh, kw), (sh, sw), (ph, pw))
    if (kh, kw, sh, sw, ph, pw) == (2, 2, 2, 2, 0, 0):
        return _pool2x2_backward(dy, argmax, x_shape)
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2], dy.shape[3]
    dxpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    non_overlapping = sh >= kh and sw >= kw
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        target = dxpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
        contribution = xp.where(argmax == k, dy, 0)
        if non_overlapping:
            target[...] = contribution  # each input pixel is in one window at most
        else:
            target += contribution
    if ph == 0 and pw == 0:
        return dxpad
    return xp.ascontiguousarray(dxpad[:, :, ph:ph + h, pw:pw + w])
