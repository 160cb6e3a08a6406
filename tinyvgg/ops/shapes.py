"""Shape helpers every op shares: ``pair``, the output size, padding, window views.

Notation
--------
N, C, H, W  input     KH, KW  kernel (window)     SH, SW  stride     PH, PW  padding
OH = (H + 2*PH - KH) // SH + 1        OW = (W + 2*PW - KW) // SW + 1
"""

from __future__ import annotations

from ..backend import get_array_module

__all__ = ["pair", "conv_output_size", "window_geometry", "pad_input", "window_view", "as_strided",
           "channel_rows", "memory_order"]


def pair(v, what="value"):
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``. Raises ``ValueError`` for anything else."""
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


def window_geometry(x_shape, kernel_size, stride, padding, what):
    """``(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)`` of a sliding window over an
    input of shape ``x_shape`` (N, C, H, W). Raises ``ValueError``, prefixed with
    ``what``, for another number of axes, a kernel or stride below 1, a negative
    padding or a kernel larger than the padded input."""
    (kh, kw), (sh, sw), (ph, pw) = (pair(kernel_size, "kernel_size"), pair(stride, "stride"),
                                    pair(padding, "padding"))
    if len(x_shape) != 4:
        raise ValueError(f"{what}: expected an input of shape (N, C, H, W), got {tuple(x_shape)}")
    if min(kh, kw, sh, sw) <= 0 or min(ph, pw) < 0:
        raise ValueError(f"{what}: kernel and stride must be positive and padding non-negative, got "
                         f"kernel={(kh, kw)}, stride={(sh, sw)}, padding={(ph, pw)}")
    n, c, h, w = (int(v) for v in x_shape)
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"{what}: kernel {(kh, kw)} is larger than the padded input "
                         f"{(h + 2 * ph, w + 2 * pw)} (input {(h, w)}, padding {(ph, pw)})")
    return n, c, h, w, kh, kw, sh, sw, ph, pw, conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)


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


def channel_rows(x):
    """``x`` (N, C, H, W) stored channels-last (see :mod:`tinyvgg.ops.cpu.channels_last`)
    as an (N*H*W, C) matrix view, one row per pixel; None when ``x`` is stored
    otherwise (then a per-channel reduction needs the axes (0, 2, 3))."""
    if x.ndim != 4:
        return None
    t = x.transpose(0, 2, 3, 1)
    return t.reshape(-1, x.shape[1]) if t.flags.c_contiguous else None


def memory_order(a):
    """The axes of ``a`` from outermost to innermost in memory: ``(0, 1, ..., ndim-1)``
    for a C-contiguous array, ``(0, 2, 3, 1)`` for an (N, C, H, W) array stored
    channels-last (a Conv2d weight on the host). ``a.transpose(memory_order(a))`` is
    C-contiguous when ``a`` is stored densely in some order."""
    return tuple(sorted(range(a.ndim), key=lambda axis: -a.strides[axis]))
