"""im2col and col2im: turn a convolution into one matrix product.

Notation
--------
N   batch size              C   input channels        H, W    input height, width
KH  kernel height           KW  kernel width          SH, SW  strides
PH  padding (top/bottom)    PW  padding (left/right)
OH = (H + 2*PH - KH) // SH + 1        OW = (W + 2*PW - KW) // SW + 1

``im2col`` copies every KH x KW window of the zero-padded input into one column,
so that the convolution of all N images becomes one (batched) matrix product
``W (F, C*KH*KW) @ cols (N, C*KH*KW, OH*OW)``. Its output is laid out per image
(N first) so that the product lands directly in (N, F, OH*OW) order, which is
NCHW without a transpose.

Both functions loop only over the KH*KW kernel offsets, never over images or
pixels: offset (i, j) is one strided slice of the padded input. ``col2im`` is
the adjoint of ``im2col``: it adds every column entry back to the pixel it came
from, so where windows overlap (stride < kernel) the contributions of all the
windows that saw a pixel are summed. It does this with KH*KW slice additions,
not ``add.at``.

Kernels, strides and paddings may be non-square: pass an int or a pair (h, w).

These two functions are the ones the lessons print and the textbook convolution
(:mod:`tinyvgg.ops.conv`) multiplies. On the GPU, with the fast paths on, each
runs one CUDA kernel instead (:mod:`tinyvgg.ops.gpu`; same layout, same numbers).
"""

from __future__ import annotations

from ..backend import get_array_module
from . import gpu
from .paths import choose_path
from .shapes import conv_output_size, pad_input, pair, window_geometry, window_view

__all__ = ["im2col", "col2im", "pair", "conv_output_size"]


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold the sliding windows of ``x`` into columns.

    Parameters
    ----------
    x : array (N, C, H, W)
    kernel_size, stride, padding : int or (h, w)

    Returns
    -------
    cols : array (N, C*KH*KW, OH*OW)
        ``cols[n, (c*KH + i)*KW + j, oh*OW + ow] = xpad[n, c, oh*SH + i, ow*SW + j]``,
        where ``xpad`` is ``x`` zero-padded by (PH, PW).
    """
    if choose_path(x) == "gpu":
        return gpu.im2col_gpu(x, kernel_size, stride, padding)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = window_geometry(x.shape, kernel_size, stride, padding,
                                                                 "im2col")
    xp = get_array_module(x)
    xpad = pad_input(x, (ph, pw))
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    # One copy from a strided view that already has the layout of ``cols``.
    cols[...] = window_view(xpad, (kh, kw), (sh, sw), (oh, ow))
    return cols.reshape(n, c * kh * kw, oh * ow)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0):
    """The adjoint of :func:`im2col`: fold columns back onto the image, summing
    the contributions of overlapping windows.

    Parameters
    ----------
    cols : array (N, C*KH*KW, OH*OW)
    x_shape : (N, C, H, W), the shape of the image ``im2col`` was given

    Returns
    -------
    x : array (N, C, H, W) with ``<im2col(x), cols> == <x, col2im(cols)>``.
    """
    if choose_path(cols) == "gpu":
        return gpu.col2im_gpu(cols, x_shape, kernel_size, stride, padding)
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = window_geometry(x_shape, kernel_size, stride, padding,
                                                                 "col2im")
    expected = (n, c * kh * kw, oh * ow)
    if tuple(cols.shape) != expected:
        raise ValueError(f"col2im: expected columns of shape {expected} for input {tuple(x_shape)}, "
                         f"got {tuple(cols.shape)}")
    xp = get_array_module(cols)
    cols6 = cols.reshape(n, c, kh, kw, oh, ow)
    xpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            # Slices of different offsets overlap when stride < kernel: the +=
            # is what sums a pixel's contributions from all its windows.
            xpad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols6[:, :, i, j]
    if ph == 0 and pw == 0:
        return xpad
    return xp.ascontiguousarray(xpad[:, :, ph:ph + h, pw:pw + w])
