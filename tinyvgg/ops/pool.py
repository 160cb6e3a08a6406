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
from .im2col import conv_output_size, pad_input, pair

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


def maxpool2d_forward(x, kernel_size=2, stride=2, padding=0):
    """Max-pool ``x`` (N, C, H, W). Returns ``(y, cache)``, ``y`` (N, C, OH, OW)."""
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
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
