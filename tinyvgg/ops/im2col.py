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
"""

from __future__ import annotations

from .. import backend
from ..backend import get_array_module

__all__ = ["pair", "conv_output_size", "im2col", "col2im", "pad_input", "window_view", "as_strided"]


def on_gpu(a):
    """True for a CuPy array while the GPU is selected: the ops then run the CUDA
    kernels of :mod:`tinyvgg.ops.cuda_kernels` (each has a NumPy twin in
    :mod:`tinyvgg.ops.kernel_twins`). Stand-in devices stay on the NumPy code."""
    return backend.current() == "gpu" and backend.is_device_array(a)


def pair(v, what="value"):
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``. Rejects anything else."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or a pair (h, w), got {v!r}")
        a, b = v
    else:
        a = b = v
    try:
        a, b = int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}") from None
    return a, b


def conv_output_size(size, kernel, stride, padding):
    """Output length of a sliding window: ``(size + 2*padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def pad_input(x, padding, value=0.0, out=None):
    """Pad the two spatial axes of ``x`` (N, C, H, W) by ``padding = (PH, PW)``.

    ``out``: an (N, C, H + 2*PH + extra, W + 2*PW) array to write into (rows past
    the padded image, if any, are filled with ``value`` too); without it, ``x``
    itself is returned when there is no padding."""
    ph, pw = padding
    if out is None and ph == 0 and pw == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if out is None:
        out = xp.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    # Fill only the border: writing the whole buffer twice costs a pass over it.
    out[:, :, :ph, :] = value
    out[:, :, h + ph:, :] = value
    out[:, :, ph:h + ph, :pw] = value
    out[:, :, ph:h + ph, w + pw:] = value
    out[:, :, ph:h + ph, pw:w + pw] = x
    return out


def window_view(xpad, kernel, stride, out_hw):
    """A read-only strided view ``v`` of ``xpad`` (N, C, Hp, Wp) with shape
    (N, C, KH, KW, OH, OW) and ``v[n, c, i, j, oh, ow] = xpad[n, c, oh*SH + i, ow*SW + j]``:
    every window of every image, without copying anything."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    s_n, s_c, s_h, s_w = xpad.strides
    return as_strided(xpad, xpad.shape[:2] + (kh, kw, oh, ow),
                      (s_n, s_c, s_h, s_w, s_h * sh, s_w * sw))


def as_strided(a, shape, strides):
    """A read-only view of ``a``'s memory with the given shape and byte strides
    (``numpy.lib.stride_tricks.as_strided``, or CuPy's)."""
    xp = get_array_module(a)
    if xp.__name__ == "numpy":
        return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def _check(x_shape, kernel, stride, padding):
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    if len(x_shape) != 4:
        raise ValueError(f"im2col: expected input of shape (N, C, H, W), got {tuple(x_shape)}")
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0 or ph < 0 or pw < 0:
        raise ValueError(
            f"im2col: kernel and stride must be positive and padding non-negative, "
            f"got kernel={kernel}, stride={stride}, padding={padding}")
    h, w = x_shape[2], x_shape[3]
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(
            f"im2col: kernel {kernel} is larger than the padded input "
            f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {padding})")
    return conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)


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
    if on_gpu(x):
        from .cuda_kernels import im2col_gpu
        return im2col_gpu(x, kernel_size, stride, padding)
    kernel, stride, padding = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")
    oh, ow = _check(x.shape, kernel, stride, padding)
    xp = get_array_module(x)
    n, c = x.shape[:2]
    kh, kw = kernel
    sh, sw = stride
    xpad = pad_input(x, padding)
    cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    # One copy from a strided view that already has the layout of ``cols``.
    cols[...] = window_view(xpad, kernel, stride, (oh, ow))
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
    if on_gpu(cols):
        from .cuda_kernels import col2im_gpu
        return col2im_gpu(cols, x_shape, kernel_size, stride, padding)
    kernel, stride, padding = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")
    oh, ow = _check(x_shape, kernel, stride, padding)
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
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
