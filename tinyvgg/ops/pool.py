"""2-D max-pooling, forward and backward: the textbook version first, then the
one function per pass that picks a path.

Notation
--------
N, C, H, W  input       KH, KW  window       SH, SW  stride       PH, PW  padding
OH = (H + 2*PH - KH) // SH + 1      OW = (W + 2*PW - KW) // SW + 1

Padding uses -inf, so a padded position never wins a window.

The textbook forward pass walks the KH*KW window offsets (never the pixels):
offset k is one strided slice of the input, and a running maximum keeps, for
every output, the offset that won (``argmax``, stored as uint8 when the window
has at most 256 positions, which keeps backward's memory small).

Ties: when a window holds several equal maxima, the *first* of them in row-major
window order (smallest row, then smallest column) wins and receives the whole
gradient; the others get none. This is what the strict ``>`` in the running
maximum does.

The backward pass sends each output's gradient to the offset that won, again
with one strided slice per offset. Overlapping windows (stride < window) add
up through ``+=``.

:func:`maxpool2d_forward` and :func:`maxpool2d_backward` pick the path (see
:mod:`tinyvgg.ops.paths`): one CUDA kernel on the GPU; on the CPU, VGG's 2x2
windows with stride 2 take an early branch into :mod:`tinyvgg.ops.cpu.pool`;
everything else, and everything while the fast paths are off, is the textbook
version. The cache ``(x_shape, argmax, kernel, stride, padding)`` is the same on
every path.
"""

from __future__ import annotations

from ..backend import get_array_module
from . import cpu, gpu
from .paths import choose_path
from .shapes import conv_output_size, pad_input, pair

__all__ = ["maxpool2d_forward", "maxpool2d_backward", "maxpool2d_forward_simple",
           "maxpool2d_backward_simple"]


def maxpool2d_forward_simple(x, kernel_size=2, stride=2, padding=0):
    """The textbook max-pool of ``x`` (N, C, H, W): ``(y (N, C, OH, OW), cache)``."""
    xp = get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel_size), pair(stride), pair(padding)
    n, c, h, w = x.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = pad_input(x, (ph, pw), value=-xp.inf)

    def window(i, j):  # the input values at window offset (i, j) of every output
        return xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]

    y = window(0, 0).copy()
    argmax = xp.zeros(y.shape, dtype=xp.uint8 if kh * kw <= 256 else xp.int32)
    for k in range(1, kh * kw):
        v = window(*divmod(k, kw))
        better = v > y  # strict: on a tie the earlier offset keeps the max
        xp.copyto(y, v, where=better)
        argmax[better] = k
    return y, (x.shape, argmax, (kh, kw), (sh, sw), (ph, pw))


def maxpool2d_backward_simple(dy, cache):
    """Gradient of :func:`maxpool2d_forward_simple`: dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    x_shape, argmax, (kh, kw), (sh, sw), (ph, pw) = cache
    xp = get_array_module(dy)
    n, c, h, w = x_shape
    oh, ow = dy.shape[2], dy.shape[3]
    dxpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        # += : where windows overlap, a pixel collects the gradient of every window it won
        dxpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += xp.where(argmax == k, dy, 0)
    if ph == 0 and pw == 0:
        return dxpad
    return xp.ascontiguousarray(dxpad[:, :, ph:ph + h, pw:pw + w])


def _is_2x2(kernel, stride, padding):
    return (kernel, stride, padding) == ((2, 2), (2, 2), (0, 0))


def maxpool2d_forward(x, kernel_size=2, stride=2, padding=0):
    """Max-pool ``x`` (N, C, H, W). Returns ``(y, cache)``, ``y`` (N, C, OH, OW)."""
    kernel, stride, padding = pair(kernel_size), pair(stride), pair(padding)
    path = choose_path(x)
    if path == "gpu":  # one fused CUDA kernel, same cache layout
        return gpu.maxpool2d_forward_gpu(x, kernel, stride, padding)
    if path == "fast" and _is_2x2(kernel, stride, padding):  # VGG's pooling
        y, idx = cpu.maxpool2x2_forward(x)
        return y, (x.shape, idx, kernel, stride, padding)
    return maxpool2d_forward_simple(x, kernel, stride, padding)


def maxpool2d_backward(dy, cache):
    """Gradient of :func:`maxpool2d_forward`: ``dy`` (N, C, OH, OW) -> ``dx`` (N, C, H, W)."""
    x_shape, argmax, kernel, stride, padding = cache
    path = choose_path(dy)
    if path == "gpu":  # gather kernel: each input pixel sums its own windows' gradients
        return gpu.maxpool2d_backward_gpu(dy, argmax, x_shape, kernel, stride, padding)
    if path == "fast" and _is_2x2(kernel, stride, padding):
        return cpu.maxpool2x2_backward(dy, argmax, x_shape)
    return maxpool2d_backward_simple(dy, cache)
