"""The fast CPU max-pool: 2x2 windows with stride 2 (VGG's only pooling).

Instead of the textbook walk over window offsets with a running maximum
(:func:`tinyvgg.ops.pool.maxpool2d_forward_simple`), the four corners of every
window are four strided views, the maximum is two levels of pairwise maxima, and
the winner is one byte per output. Large inputs are cut into slices of the batch
that run on the worker threads of :mod:`tinyvgg.ops.cpu.parallel`.
"""

from __future__ import annotations

from ...backend import get_array_module
from . import parallel
from .channels_last import empty_like_layout

__all__ = ["maxpool2x2_forward", "maxpool2x2_backward"]


def _quadrants(a, oh, ow):
    """The four strided views a[..., 0::2, 0::2], [0::2, 1::2], [1::2, 0::2], [1::2, 1::2]
    of ``a`` (N, C, H, W), each (N, C, OH, OW): the four corners of the 2x2 windows,
    in row-major window order."""
    return [a[:, :, i:2 * oh:2, j:2 * ow:2] for i in (0, 1) for j in (0, 1)]




def maxpool2x2_forward(x):
    """2x2 windows, stride 2, no padding: VGG's only pooling, done in whole-array passes.
    x (N, C, H, W) -> ``(y, idx)``, both (N, C, H//2, W//2), idx uint8.

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
    # y and idx stored like x (channels-last or not), so every pass below runs in memory order
    y = empty_like_layout(x, (n, c, h // 2, w // 2))
    idx = empty_like_layout(x, y.shape, xp.uint8)

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


def maxpool2x2_backward(dy, idx, x_shape):
    """Gradient of :func:`maxpool2x2_forward`: dy (N, C, OH, OW) -> dx ``x_shape``.
    Each 2x2 corner receives dy where it won (``idx == k``), zero elsewhere; rows
    or columns left over by an odd size get zero."""
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2], dy.shape[3]
    dx = empty_like_layout(dy, x_shape)  # stored like dy
    if h % 2 or w % 2:
        dx[...] = 0

    def task(n0, n1):
        for k, corner in enumerate(_quadrants(dx[n0:n1], oh, ow)):
            xp.multiply(dy[n0:n1], idx[n0:n1] == k, out=corner)
    _run_batch_slices(task, n, dx.nbytes, xp)
    return dx


def _run_batch_slices(task, n, nbytes, xp):
    """task(n0, n1) over one slice of the batch per worker (one slice when small)."""
    parts = parallel.slices(n, nbytes)
    parallel.run(task, [(n0, n1) for _, n0, n1 in parts], xp, threads=len(parts) > 1)
