"""CUDA kernels for the GPU path (CuPy ``RawKernel``): im2col, col2im and max-pooling.

This module imports without CuPy: CuPy is reached only through
``tinyvgg.backend.device().xp`` when a kernel is first launched, and the CUDA
sources are plain strings. :mod:`tinyvgg.ops.gpu.twins` holds a readable
NumPy twin of every kernel (the same index arithmetic, vectorised), and the
tests compile the CUDA sources below with a C++ compiler and run them on the
CPU (one loop iteration per CUDA thread), so the index arithmetic is checked
on machines without a GPU.

Notation
--------
N  batch     C  channels     H, W  input size      KH, KW  kernel     SH, SW  stride
PH, PW  padding     OH = (H + 2*PH - KH) // SH + 1     OW = (W + 2*PW - KW) // SW + 1
K = C*KH*KW (length of one column)      P = OH*OW (output positions per image)

Layouts (exactly those of :mod:`tinyvgg.ops`)
---------------------------------------------
``im2col_gpu``  cols (N, K, P):  cols[n, (c*KH + i)*KW + j, oh*OW + ow] = xpad[n, c, oh*SH + i, ow*SW + j]
                (``layout="knp"`` gives (K, N, P) instead: cols[(c*KH + i)*KW + j, n, oh*OW + ow],
                the layout that makes a convolution over the whole batch ONE matrix product)
``col2im_gpu``  the adjoint: x[n, c, h, w] = sum of the column entries that copied xpad[n, c, h+PH, w+PW]
max-pool        y, argmax (N, C, OH, OW); argmax = row-major window offset k = i*KW + j of the
                first maximum (uint8 when KH*KW <= 256, else int32); padding is -inf.

The kernels
-----------
- ``im2col``: one thread per element of ``cols``; it decodes its flat index into
  (n, row, p), row into (c, i, j), p into (oh, ow), and copies one input value
  (0 outside the image).
- ``col2im`` (gather): one thread per *input* pixel (n, c, h, w). Pixel row
  hp = h + PH was read by output row oh at kernel row i exactly when
  hp = oh*SH + i, i.e. oh = (hp - i) / SH is an integer in [0, OH); the same
  for columns. The thread sums those entries itself, in the order i, then j,
  so no two threads write the same place: no atomics, and the sum is
  deterministic (and in the same order as the CPU's ``col2im``).
- ``maxpool_fwd``: one thread per output; walks its window in row-major order
  and keeps the first maximum (strict ``>``), as the CPU code does.
- ``maxpool_bwd`` (gather): one thread per input pixel; for every window that
  contains the pixel (same arithmetic as col2im) it adds that window's dy when
  the window's argmax points at the pixel.

Every kernel uses a grid-stride loop (any launch size covers any array) and
64-bit flat indices (a VGG column matrix can exceed 2**31 elements); only the
first split of a flat index is a 64-bit division, and only when the array has
2**31 elements or more.

The convolution built on them is in :mod:`tinyvgg.ops.gpu.conv`, the
out-of-memory message in :mod:`tinyvgg.ops.gpu.memory`.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np

from ... import backend
from ..shapes import window_geometry

__all__ = ["im2col_gpu", "col2im_gpu", "maxpool2d_forward_gpu", "maxpool2d_backward_gpu",
           "kernel_source", "kernel_params", "KERNEL_PARAMS", "KERNEL_BODIES", "launch_config",
           "C_TYPES"]

# --------------------------------------------------------------------------
# CUDA sources
# --------------------------------------------------------------------------

# Parameters of each kernel, in order: (C type, name). "T" is the float type,
# "I" the argmax index type. The launcher and the tests' CPU emulator both read
# this table, so the argument types passed from Python always match the source.
_GEOMETRY = [("int", "N"), ("int", "C"), ("int", "H"), ("int", "W"),
             ("int", "KH"), ("int", "KW"), ("int", "SH"), ("int", "SW"),
             ("int", "PH"), ("int", "PW"), ("int", "OH"), ("int", "OW")]

KERNEL_PARAMS = {
    "im2col": [("const T*", "x"), ("T*", "cols"), ("long long", "total")] + _GEOMETRY
              + [("int", "knp")],
    "col2im": [("const T*", "cols"), ("T*", "x"), ("long long", "total")] + _GEOMETRY
              + [("int", "knp")],
    "maxpool_fwd": [("const T*", "x"), ("T*", "y"), ("I*", "argmax"), ("long long", "total")]
                   + _GEOMETRY + [("T", "ninf")],
    "maxpool_bwd": [("const T*", "dy"), ("const I*", "argmax"), ("T*", "dx"), ("long long", "total")]
                   + _GEOMETRY,
}


def _each_window_of_pixel(inner):
    """CUDA loops over the windows that contain padded pixel (hp, wp), shared by the
    two gather kernels: offset (i, j) of output (oh, ow) read the pixel exactly when
    hp = oh*SH + i and wp = ow*SW + j, with oh, ow in range. ``inner`` runs for each."""
    return r"""        for (int i = 0; i < KH; ++i) {
            const int dh = hp - i;              /* = oh*SH when output row oh read this pixel */
            if (dh < 0 || dh % SH != 0) continue;
            const int oh = dh / SH;
            if (oh >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int dw = wp - j;
                if (dw < 0 || dw % SW != 0) continue;
                const int ow = dw / SW;
                if (ow >= OW) continue;""" + inner.rstrip() + r"""
            }
        }
"""


# The body of each kernel. ``idx`` is the flat index of this thread's element,
# inside a grid-stride loop that the template adds around the body. Only the
# first split of ``idx`` needs 64 bits (TINYVGG_DIV: a 32-bit division whenever
# the whole array has fewer than 2**31 elements, the same branch in every
# thread); the pieces it leaves (an image-channel number, a position in a plane)
# fit in an int and are split with cheap 32-bit arithmetic.
KERNEL_BODIES = {
    # one thread per element of cols; total = N*K*P
    "im2col": r"""
        const int P = OH * OW;
        const int K = C * KH * KW;
        const long long r64 = TINYVGG_DIV(idx, P);
        const int p = (int)(idx - r64 * P);     /* output position oh*OW + ow */
        const int r = (int)r64;                 /* (n, row) or (row, n) */
        int n, row;
        if (knp) { n = r % N; row = r / N; }    /* cols (K, N, P) */
        else     { row = r % K; n = r / K; }    /* cols (N, K, P) */
        const int j = row % KW;                 /* row = (c*KH + i)*KW + j */
        const int ci = row / KW;
        const int i = ci % KH;
        const int c = ci / KH;
        const int oh = p / OW;
        const int ow = p - oh * OW;
        const int h = oh * SH + i - PH;         /* the input pixel this element copies */
        const int w = ow * SW + j - PW;
        T v = (T)0;
        if (h >= 0 && h < H && w >= 0 && w < W)
            v = x[(((long long)n * C + c) * H + h) * W + w];
        cols[idx] = v;
    """,
    # one thread per input pixel; total = N*C*H*W
    "col2im": r"""
        const long long P = (long long)OH * OW;
        const long long K = (long long)C * KH * KW;
        const int HW = H * W;
        const long long nc64 = TINYVGG_DIV(idx, HW);
        const int hw = (int)(idx - nc64 * HW);
        const int nc = (int)nc64;
        const int c = nc % C;
        const long long n = nc / C;
        const int h = hw / W;
        const int w = hw - h * W;
        const int hp = h + PH;                  /* coordinates in the padded image */
        const int wp = w + PW;
        T sum = (T)0;
""" + _each_window_of_pixel(r"""
                const long long row = (long long)(c * KH + i) * KW + j;
                const long long q = (long long)oh * OW + ow;
                sum += knp ? cols[(row * N + n) * P + q] : cols[(n * K + row) * P + q];
""") + r"""        x[idx] = sum;
    """,
    # one thread per output; total = N*C*OH*OW
    "maxpool_fwd": r"""
        const int P = OH * OW;
        const long long nc = TINYVGG_DIV(idx, P);
        const int p = (int)(idx - nc * P);
        const int oh = p / OW;
        const int ow = p - oh * OW;
        const T* plane = x + nc * H * W;
        T best = ninf;
        int best_k = 0;
        for (int k = 0; k < KH * KW; ++k) {
            const int h = oh * SH + k / KW - PH;
            const int w = ow * SW + k % KW - PW;
            const T v = (h >= 0 && h < H && w >= 0 && w < W) ? plane[(long long)h * W + w] : ninf;
            if (k == 0 || v > best) { best = v; best_k = k; }   /* strict: the first maximum wins */
        }
        y[idx] = best;
        argmax[idx] = (I)best_k;
    """,
    # one thread per input pixel; total = N*C*H*W
    "maxpool_bwd": r"""
        const int HW = H * W;
        const long long nc = TINYVGG_DIV(idx, HW);
        const int hw = (int)(idx - nc * HW);
        const int h = hw / W;
        const int w = hw - h * W;
        const int hp = h + PH;
        const int wp = w + PW;
        T sum = (T)0;
""" + _each_window_of_pixel(r"""
                const long long o = (nc * OH + oh) * OW + ow;
                if ((int)argmax[o] == i * KW + j) sum += dy[o];
""") + r"""        dx[idx] = sum;
    """,
}

C_TYPES = {"float32": "float", "float64": "double", "uint8": "unsigned char", "int32": "int"}

_TEMPLATE = r"""
#ifndef TINYVGG_DIV
#ifndef TINYVGG_INT32_LIMIT
#define TINYVGG_INT32_LIMIT 0x7fffffffLL  /* the tests set 0 to run the 64-bit branch */
#endif
/* a / b for 0 <= a < total: a 32-bit division when every index fits in 31 bits, else 64-bit */
#define TINYVGG_DIV(a, b) (total <= TINYVGG_INT32_LIMIT \
    ? (long long)((unsigned int)(a) / (unsigned int)(b)) : (a) / (long long)(b))
#endif
extern "C" __global__ void {name}({params})
{{
    typedef {T} T;
    typedef {I} I;
    const long long stride_ = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride_) {{
{body}
    }}
}}
"""


def _ctype(dtype):
    dt = np.dtype(dtype)
    if dt.name not in C_TYPES:
        raise TypeError(f"ops.gpu: unsupported dtype {dt}")
    return C_TYPES[dt.name]


def _substitute(ctype, t, i):
    """``"const T*"`` -> ``"const float*"``: the type placeholders T and I filled in."""
    return re.sub(r"\bI\b", i, re.sub(r"\bT\b", t, ctype))


def kernel_source(kind, dtype, index_dtype=None):
    """``(function name, CUDA C source)`` of kernel ``kind`` for float ``dtype``
    (float32/float64) and, for the max-pool kernels, argmax ``index_dtype``
    (uint8/int32)."""
    if kind not in KERNEL_BODIES:
        raise ValueError(f"ops.gpu: unknown kernel {kind!r}; expected one of {sorted(KERNEL_BODIES)}")
    t = _ctype(dtype)
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"ops.gpu: {kind} needs float32 or float64 data, got {np.dtype(dtype)}")
    uses_index = kind.startswith("maxpool")
    i = _ctype(index_dtype if uses_index else np.int32)
    name = f"tinyvgg_{kind}_{np.dtype(dtype).name}"
    if uses_index:
        name += f"_{np.dtype(index_dtype).name}"
    params = ", ".join(f"{_substitute(ctype, t, i)} {pname}" for ctype, pname in KERNEL_PARAMS[kind])
    body = textwrap.indent(textwrap.dedent(KERNEL_BODIES[kind]).strip("\n"), " " * 8)
    return name, _TEMPLATE.format(name=name, params=params, T=t, I=i, body=body)


BLOCK = 256
MAX_BLOCKS = 1 << 20  # a grid-stride loop covers the rest


def launch_config(total, block=None, max_blocks=None):
    """``(blocks, threads per block)`` for ``total`` elements (defaults: ``BLOCK``
    threads per block, at most ``MAX_BLOCKS`` blocks)."""
    block = BLOCK if block is None else int(block)
    max_blocks = MAX_BLOCKS if max_blocks is None else int(max_blocks)
    return max(1, min(-(-int(total) // block), max_blocks)), block


_compiled = {}


def _gpu_module():
    """The CuPy module of the current device; an error when it is not a CUDA device."""
    xp = backend.device().xp
    if getattr(xp, "RawKernel", None) is None:
        raise RuntimeError(f"ops.gpu: the current device {backend.device()!r} has no CUDA "
                           f"kernels (select it with tinyvgg.backend.use('gpu'))")
    return xp


def _kernel(kind, dtype, index_dtype=None):
    key = (kind, np.dtype(dtype).name, None if index_dtype is None else np.dtype(index_dtype).name)
    k = _compiled.get(key)
    if k is None:
        cp = _gpu_module()
        name, code = kernel_source(kind, dtype, index_dtype)
        k = _compiled[key] = cp.RawKernel(code, name)
    return k


def _launch(kind, arrays, total, geometry, extra=(), dtype=None, index_dtype=None):
    """Launch ``kind`` with ``arrays`` (device arrays, contiguous), ``total`` and the
    geometry ints; scalars are converted to the exact C types of KERNEL_PARAMS."""
    if total == 0:
        return
    args = list(arrays) + [np.int64(total)] + [np.int32(v) for v in geometry]
    for (ctype, _), v in zip(KERNEL_PARAMS[kind][len(args):], extra):
        args.append(np.dtype(dtype).type(v) if ctype == "T" else np.int32(v))
    blocks, threads = launch_config(total)
    _run_kernel(kind, dtype, index_dtype, (blocks,), (threads,), tuple(args))


def _run_kernel(kind, dtype, index_dtype, grid, block, args):
    """Launch the compiled kernel. (The CPU tests replace this function with an
    emulator that runs the same CUDA source compiled by a C++ compiler.)"""
    _kernel(kind, dtype, index_dtype)(grid, block, args)


def kernel_params(kind, dtype, index_dtype=None):
    """``[(C type, name)]`` of kernel ``kind`` with T and I filled in."""
    t = _ctype(dtype)
    i = _ctype(index_dtype if kind.startswith("maxpool") else np.int32)
    return [(_substitute(ctype, t, i), pname) for ctype, pname in KERNEL_PARAMS[kind]]


def _float_array(xp, a, what):
    if not backend.is_device_array(a):
        raise TypeError(f"{what}: expected a GPU array, got {type(a).__module__}.{type(a).__qualname__} "
                        f"(move it with tinyvgg.backend.to_device)")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: expected float32 or float64, got {a.dtype}")
    return xp.ascontiguousarray(a)


# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------

def im2col_gpu(x, kernel_size, stride=1, padding=0, layout="nkp"):
    """``tinyvgg.ops.im2col`` on the GPU: x (N, C, H, W) -> cols (N, C*KH*KW, OH*OW)
    (``layout="knp"``: (C*KH*KW, N, OH*OW)), same dtype (float32 or float64)."""
    xp = _gpu_module()
    x = _float_array(xp, x, "im2col_gpu")
    g = window_geometry(x.shape, kernel_size, stride, padding, "im2col_gpu")
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = g
    k, p = c * kh * kw, oh * ow
    if layout not in ("nkp", "knp"):
        raise ValueError(f"im2col_gpu: layout must be 'nkp' or 'knp', got {layout!r}")
    shape = (n, k, p) if layout == "nkp" else (k, n, p)
    cols = xp.empty(shape, dtype=x.dtype)
    _launch("im2col", (x, cols), cols.size, g, (int(layout == "knp"),), dtype=x.dtype)
    return cols


def col2im_gpu(cols, x_shape, kernel_size, stride=1, padding=0, layout="nkp"):
    """``tinyvgg.ops.col2im`` on the GPU (gather: each pixel sums its own
    contributions). cols (N, C*KH*KW, OH*OW) (or (K, N, P) with ``layout="knp"``)
    -> x (N, C, H, W)."""
    xp = _gpu_module()
    cols = _float_array(xp, cols, "col2im_gpu")
    g = window_geometry(x_shape, kernel_size, stride, padding, "col2im_gpu")
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = g
    k, p = c * kh * kw, oh * ow
    if layout not in ("nkp", "knp"):
        raise ValueError(f"col2im_gpu: layout must be 'nkp' or 'knp', got {layout!r}")
    expected = (n, k, p) if layout == "nkp" else (k, n, p)
    if tuple(cols.shape) != expected:
        raise ValueError(f"col2im_gpu: expected columns of shape {expected} for input {tuple(x_shape)}, "
                         f"got {tuple(cols.shape)}")
    x = xp.empty((n, c, h, w), dtype=cols.dtype)
    _launch("col2im", (cols, x), x.size, g, (int(layout == "knp"),), dtype=cols.dtype)
    return x


# --------------------------------------------------------------------------
# max-pooling
# --------------------------------------------------------------------------

def maxpool2d_forward_gpu(x, kernel_size=2, stride=2, padding=0):
    """``tinyvgg.ops.maxpool2d_forward`` on the GPU, one fused kernel. Returns
    ``(y, cache)`` with the CPU's cache layout ``(x_shape, argmax, kernel, stride,
    padding)``, so ``tinyvgg.ops.maxpool2d_backward`` (or
    :func:`maxpool2d_backward_gpu`) takes it."""
    xp = _gpu_module()
    x = _float_array(xp, x, "maxpool2d_forward_gpu")
    g = window_geometry(x.shape, kernel_size, stride, padding, "maxpool2d_forward_gpu")
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = g
    idx_dtype = np.uint8 if kh * kw <= 256 else np.int32
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = xp.empty((n, c, oh, ow), dtype=idx_dtype)
    _launch("maxpool_fwd", (x, y, argmax), y.size, g, (-np.inf,), dtype=x.dtype, index_dtype=idx_dtype)
    return y, (x.shape, argmax, (kh, kw), (sh, sw), (ph, pw))


def maxpool2d_backward_gpu(dy, argmax, x_shape, kernel_size=2, stride=2, padding=0):
    """Max-pool backward on the GPU (gather): dx (N, C, H, W) where each input pixel
    sums dy over the windows whose argmax points at it. ``argmax`` (N, C, OH, OW),
    uint8 or int32, as the forward pass made it."""
    xp = _gpu_module()
    dy = _float_array(xp, dy, "maxpool2d_backward_gpu")
    g = window_geometry(x_shape, kernel_size, stride, padding, "maxpool2d_backward_gpu")
    n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow = g
    if tuple(dy.shape) != (n, c, oh, ow) or tuple(argmax.shape) != (n, c, oh, ow):
        raise ValueError(f"maxpool2d_backward_gpu: dy {tuple(dy.shape)} and argmax "
                         f"{tuple(argmax.shape)} must both be {(n, c, oh, ow)} for input {tuple(x_shape)}")
    if argmax.dtype not in (np.uint8, np.int32):
        argmax = argmax.astype(np.int32)
    argmax = xp.ascontiguousarray(argmax)
    dx = xp.empty((n, c, h, w), dtype=dy.dtype)
    _launch("maxpool_bwd", (dy, argmax, dx), dx.size, g, dtype=dy.dtype, index_dtype=argmax.dtype)
    return dx
