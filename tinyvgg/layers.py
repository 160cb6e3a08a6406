"""The layers of VGG, each a small class with ``forward`` and a hand-written ``backward``.

Notation
--------
N  batch      C  channels      H, W  height, width      F  output channels
KH, KW  kernel      SH, SW  stride      PH, PW  padding
OH = (H + 2*PH - KH) // SH + 1          OW = (W + 2*PW - KW) // SW + 1

The contract every layer keeps
------------------------------
- ``forward(x, train=False) -> y`` and ``backward(dy) -> dx``; ``backward`` uses
  what the last ``forward`` cached, and calling it before any forward is an error.
  ``train`` defaults to False (evaluation: dropout off, BatchNorm on its running
  statistics), as the model's ``forward``; the trainer passes ``train=True``.
- Learnable arrays live in ``layer.params`` (``"weight"``, ``"bias"``); ``backward``
  writes their gradients into ``layer.grads`` under the same names and shapes,
  overwriting (never accumulating). BatchNorm's running statistics live in
  ``layer.buffers``. Each layer owns its own dicts: nothing is shared.
- Layers with parameters take ``dtype=`` (default float32) and refuse input of
  another float dtype instead of silently computing in float64.
- Bad input raises ``ValueError`` (:class:`ShapeError`) naming the layer and the
  shapes; a host array given to a layer whose parameters live on the GPU (or the
  reverse) raises ``TypeError`` (see :func:`tinyvgg.backend.check_same_device`).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .ops import (channel_rows, choose_path, conv2d_backward, conv2d_forward, conv_output_size, matmul,
                  maxpool2d_backward, maxpool2d_forward, pair)
from .ops.cpu import parallel
from .ops.cpu.channels_last import channels_last_weight

__all__ = ["ShapeError", "Layer", "Conv2d", "MaxPool2d", "ReLU", "Dropout", "Linear",
           "Flatten", "LocalResponseNorm", "BatchNorm2d", "BatchNorm1d"]


class ShapeError(ValueError):
    """An input whose shape, size or values a layer cannot take."""


def _shape(a):
    return tuple(getattr(a, "shape", ()))


class Layer:
    """Base class: parameter dicts, device moves and the checks every layer shares."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self._cache = None

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""

    # Where backward writes the gradients of the parameters: ``{key: array}``, each array of
    # its parameter's shape and dtype (``grads[key]`` is then that very array), or None
    # (default): new arrays every step. For a caller that needs the gradients in memory
    # of its own: the helper processes of tinyvgg.replicas hand theirs to the training
    # process through shared memory, and this saves them a copy of the largest ones.
    # Linear honours it (the fully connected layers hold most of a VGG's weights); the
    # other layers leave it unused, and such a caller copies their ``grads``.
    grads_into = None

    # -- the two passes (subclasses implement) ------------------------------
    def forward(self, x, train=False):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x, train=False):
        return self.forward(x, train=train)

    # -- helpers -------------------------------------------------------------
    def to(self, device=None):
        """Move parameters and buffers to ``device`` (``"cpu"``/``"gpu"``; default:
        the current backend device). Naming a device other than the current one
        switches the backend to it (``backend.use``), so data and model move
        together. Returns ``self``."""
        if device is not None and device != backend.current():
            backend.use(device)
        for d in (self.params, self.buffers):
            for k in d:
                d[k] = backend.move(d[k])
        self.grads = {}
        self._cache = None
        return self

    def _check_input(self, x, ndim=None, channels=None, channel_axis=1, what="(N, C, H, W)"):
        name = repr(self)
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
        if ndim is not None and x.ndim != ndim:
            raise ShapeError(f"{name}: expected a {ndim}-D input {what}, got shape {_shape(x)}")
        if channels is not None and x.shape[channel_axis] != channels:
            raise ShapeError(f"{name}: expected {channels} channels at axis {channel_axis} "
                             f"of input {what}, got shape {_shape(x)}")
        if x.ndim >= 1 and x.shape[0] == 0:
            raise ShapeError(f"{name}: empty batch (input shape {_shape(x)})")
        if self.params:
            backend.check_same_device(name, x, *self.params.values())
            pdtype = next(iter(self.params.values())).dtype
            if x.dtype != pdtype:
                raise TypeError(f"{name}: parameters are {pdtype} but the input is {x.dtype}; "
                                f"convert the input with .astype({pdtype}) (no silent up-casts)")
        elif not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"{name}: expected a floating-point input, got {x.dtype}")

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward() called before forward() "
                               f"(or after the layer was moved)")
        return self._cache

    def _check_dy(self, dy, expected_shape):
        if _shape(dy) != tuple(expected_shape):
            raise ShapeError(f"{self!r}: backward expected dy of shape {tuple(expected_shape)} "
                             f"(the forward output), got {_shape(dy)}")


def _positive(owner, **values):
    for k, v in values.items():
        vals = v if isinstance(v, tuple) else (v,)
        if any(int(u) != u or u <= 0 for u in vals):
            raise ValueError(f"{owner}: {k} must be a positive integer, got {v!r}")


def _init_normal(shape, std, dtype):
    # Drawn on the host so CPU and GPU start from the same numbers.
    return backend.to_device(backend.host_rng().normal(0.0, std, size=shape).astype(dtype))


def _zeros(shape, dtype):
    return backend.to_device(np.zeros(shape, dtype=dtype))


class Conv2d(Layer):
    """2-D convolution by im2col and one matrix product per pass.

    ``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True)``

    Shapes: x (N, C, H, W) -> y (N, F, OH, OW), with
    OH = (H + 2*PH - KH) // SH + 1 and OW = (W + 2*PW - KW) // SW + 1.
    ``kernel_size``, ``stride`` and ``padding`` are ints or (h, w) pairs:
    non-square kernels work. Parameters: ``weight`` (F, C, KH, KW), ``bias`` (F,).
    Initialised from N(0, 0.01^2) with zero bias (the paper's scheme for net A);
    :mod:`tinyvgg.models.init` re-initialises whole models.

    On the host the weight is stored channels-last, (F, KH, KW, C) in memory
    (:func:`tinyvgg.ops.cpu.channels_last.channels_last_weight`: the fast path then
    needs no re-layout of it, and its gradient comes out stored the same way). Its
    shape, values and indexing are the same as any (F, C, KH, KW) array's; only a
    ``reshape`` of it copies.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, dtype=np.float32):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding")
        _positive("Conv2d", in_channels=in_channels, out_channels=out_channels,
                  kernel_size=self.kernel_size, stride=self.stride)
        if min(self.padding) < 0:
            raise ValueError(f"Conv2d: padding must be >= 0, got {padding!r}")
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel_size
        weight = _init_normal((self.out_channels, self.in_channels, kh, kw), 0.01, self.dtype)
        self.params["weight"] = channels_last_weight(weight)
        if bias:
            self.params["bias"] = _zeros((self.out_channels,), self.dtype)

    def to(self, device=None):
        weight = self.params["weight"]
        super().to(device)
        if self.params["weight"] is not weight:  # moved (to the host: stored channels-last again)
            self.params["weight"] = channels_last_weight(self.params["weight"])
        return self

    def extra_repr(self):
        k = self.kernel_size[0] if self.kernel_size[0] == self.kernel_size[1] else self.kernel_size
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={k}"
        if self.stride != (1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        return s

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        return (n, self.out_channels,
                conv_output_size(h, self.kernel_size[0], self.stride[0], self.padding[0]),
                conv_output_size(w, self.kernel_size[1], self.stride[1], self.padding[1]))

    def forward(self, x, train=False):
        self._check_input(x, ndim=4, channels=self.in_channels)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
            raise ShapeError(f"{self!r}: kernel {self.kernel_size} is larger than the padded input "
                             f"{(x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)} (input shape {_shape(x)})")
        y, cache = conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                  self.stride, self.padding, keep_columns=train)
        self._cache = (cache, y.shape)
        return y

    def backward(self, dy, input_grad=True):
        """dy (N, F, OH, OW) -> dx (N, C, H, W); ``input_grad=False`` skips dx
        (returns None): the gradients of the parameters only."""
        cache, y_shape = self._cached()
        self._check_dy(dy, y_shape)
        dx, dw, db = conv2d_backward(dy, cache, input_grad=input_grad)
        self.grads = {"weight": dw}
        if db is not None:
            self.grads["bias"] = db
        return dx


class MaxPool2d(Layer):
    """Max-pooling, ``MaxPool2d(kernel_size=2, stride=2, padding=0)``; pads with -inf.

    Shapes: x (N, C, H, W) -> y (N, C, OH, OW), OH = (H + 2*PH - KH) // SH + 1.
    When a window holds several equal maxima, the first in row-major order
    (top-most, then left-most) receives the whole gradient.
    """

    def __init__(self, kernel_size=2, stride=2, padding=0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride if stride is not None else kernel_size, "stride")
        self.padding = pair(padding, "padding")
        _positive("MaxPool2d", kernel_size=self.kernel_size, stride=self.stride)
        if min(self.padding) < 0 or any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"MaxPool2d: padding must be between 0 and half the kernel, "
                             f"got padding={padding!r} for kernel_size={kernel_size!r}")

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size[0] if self.kernel_size[0] == self.kernel_size[1] else self.kernel_size}"
        s += f", stride={self.stride[0] if self.stride[0] == self.stride[1] else self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        return s

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        return (n, c, conv_output_size(h, self.kernel_size[0], self.stride[0], self.padding[0]),
                conv_output_size(w, self.kernel_size[1], self.stride[1], self.padding[1]))

    def forward(self, x, train=False):
        self._check_input(x, ndim=4)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
            raise ShapeError(f"{self!r}: window {self.kernel_size} is larger than the padded input "
                             f"{(x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)} (input shape {_shape(x)})")
        y, cache = maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._cache = (cache, y.shape)
        return y

    def backward(self, dy):
        cache, y_shape = self._cached()
        self._check_dy(dy, y_shape)
        return maxpool2d_backward(dy, cache)


class ReLU(Layer):
    """``y = max(x, 0)``, any shape. The gradient passes where x > 0 (at x == 0 it is 0).

    ``ReLU(inplace=False)``, PyTorch's option: ``inplace=True`` writes y over x and
    returns x itself, saving a new output array (one activation's memory) and a
    pass over memory (``benchmarks/bench_switches.py``: VGG-11 width-1/4 training
    steps 0.93-1.02x, within the 2-core test machine's noise). The caller must not
    need x afterwards: the VGG models use it, as torchvision's do, since no layer
    before a ReLU keeps its own output for its backward pass. A hook
    (``model.add_hook``) that keeps the output of the layer before a ReLU must copy it.

    Fast path: a large NumPy input stored C-contiguous or channels-last is cut into
    slices of its memory that run on the worker threads; the output is stored
    like the input."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def forward(self, x, train=False):
        self._check_input(x)
        xp = backend.get_array_module(x)
        flat = _memory_order(x)
        if flat is None:  # the plain version
            self._cache = x > 0
            # not x * mask: that gives -0.0 for negative x
            return xp.maximum(x, x.dtype.type(0), out=x if self.inplace else None)
        y = x if self.inplace else xp.empty_like(x)  # stored like x
        mask = xp.empty_like(x, dtype=bool)
        yf, mf = _memory_order(y), _memory_order(mask)

        def task(i, a, b):
            xp.greater(flat[a:b], 0, out=mf[a:b])
            _max_with_zero(flat[a:b], yf[a:b])
        _run_in_slices(task, x)
        self._cache = mask
        return y

    def backward(self, dy):
        mask = self._cached()
        self._check_dy(dy, mask.shape)
        xp = backend.get_array_module(dy)
        dyf, mf = _memory_order(dy), _memory_order(mask)
        if dyf is None or mf is None or dy.strides != tuple(s * dy.itemsize for s in mask.strides):
            return xp.multiply(dy, mask, dtype=dy.dtype)  # the plain version
        dx = xp.empty_like(dy)
        dxf = _memory_order(dx)

        def task(i, a, b):
            xp.multiply(dyf[a:b], mf[a:b], out=dxf[a:b])
        _run_in_slices(task, dy)
        return dx


def _memory_order(a):
    """``a``'s elements as a 1-D view in memory order when ``a`` is a NumPy array on
    the fast path stored C-contiguous or channels-last; else None."""
    if backend.get_array_module(a) is not np or choose_path(a) != "fast":
        return None
    if a.flags.c_contiguous:
        return a.reshape(-1)
    rows = channel_rows(a)
    return None if rows is None else rows.reshape(-1)


ZERO_BLOCK = 1 << 14  # values per np.maximum call of _max_with_zero (64 KB of float32: stays in cache)
_zero_blocks = {}     # dtype -> a read-only block of ZERO_BLOCK zeros


def _max_with_zero(src, out):
    """``out = max(src, 0)`` for 1-D NumPy arrays, as ``np.maximum`` against a block of
    zeros, one cache-sized block at a time. The same numbers as ``np.maximum(src, 0)``,
    whose scalar operand NumPy (2.4) runs in a loop without SIMD: measured 0.18 against
    0.07 ms on 2 MB of float32 (the first ReLU of VGG-11 width 1/4, batch 32)."""
    zeros = _zero_blocks.get(src.dtype)
    if zeros is None:
        zeros = _zero_blocks[src.dtype] = np.zeros(ZERO_BLOCK, dtype=src.dtype)
        zeros.flags.writeable = False
    for a in range(0, src.size, ZERO_BLOCK):
        b = min(a + ZERO_BLOCK, src.size)
        np.maximum(src[a:b], zeros[:b - a], out=out[a:b])


def _run_in_slices(task, a):
    """task(i, start, stop) over slices of ``a``'s memory, one per worker thread when
    ``a`` is large, else once over all of it."""
    parts = parallel.slices(a.size, a.nbytes)
    if len(parts) == 1:
        task(0, 0, a.size)
    else:
        parallel.run(task, parts, np)


class Dropout(Layer):
    """Inverted dropout: ``Dropout(p=0.5)``, ``p`` the probability of dropping a unit.

    Training: each unit is zeroed with probability ``p`` and the survivors are
    scaled by ``1 / (1 - p)``, so the expected activation is unchanged and the
    test-time pass is the identity (nothing to rescale at test time).
    ``train=False``: the identity. Any shape.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p (the probability of dropping) must be in [0, 1], got {p!r}")
        self.p = float(p)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x, train=False):
        self._check_input(x)
        if not train or self.p == 0.0:
            self._cache = None
            self._identity_shape = x.shape
            return x
        xp = backend.get_array_module(x)
        if self.p == 1.0:
            mask = xp.zeros(x.shape, dtype=x.dtype)
        else:
            keep = backend.rng().random(x.shape, dtype=np.float32) >= self.p
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._cache = mask
        self._identity_shape = None
        return x * mask

    def backward(self, dy):
        if self._cache is None and getattr(self, "_identity_shape", None) is not None:
            self._check_dy(dy, self._identity_shape)
            return dy
        mask = self._cached()
        self._check_dy(dy, mask.shape)
        return dy * mask


class Linear(Layer):
    """Fully connected layer: ``y = x @ weight.T + bias``.

    Shapes: x (N, in_features) -> y (N, out_features); ``weight`` (out, in), ``bias`` (out,).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = np.dtype(dtype)
        self.params["weight"] = _init_normal((self.out_features, self.in_features), 0.01, self.dtype)
        if bias:
            self.params["bias"] = _zeros((self.out_features,), self.dtype)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"

    def forward(self, x, train=False):
        self._check_input(x, ndim=2, channels=self.in_features, what="(N, in_features)")
        # ops.matmul: one single-threaded BLAS block per core; OpenBLAS's own
        # threads stall on these small products when the machine is busy.
        y = matmul(x, self.params["weight"].T)
        if "bias" in self.params:
            y += self.params["bias"]
        self._cache = x
        return y

    def backward(self, dy):
        x = self._cached()
        self._check_dy(dy, (x.shape[0], self.out_features))
        out = self.grads_into or {}
        self.grads = {"weight": matmul(dy.T, x, out=out.get("weight"))}
        if "bias" in self.params:
            self.grads["bias"] = dy.sum(axis=0, out=out.get("bias"))
        return matmul(dy, self.params["weight"])


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C-order (so it matches PyTorch's ``flatten(1)``)."""

    def forward(self, x, train=False):
        self._check_input(x)
        if x.ndim < 2:
            raise ShapeError(f"Flatten(): expected an input with a batch axis, got shape {_shape(x)}")
        self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        shape = self._cached()
        self._check_dy(dy, (shape[0], int(np.prod(shape[1:]))))
        return dy.reshape(shape)


def _channel_window_sum(v, before, after):
    """s[:, c] = sum of v[:, c - before : c + after + 1] along axis 1 (clipped at the ends).

    One cumulative sum along the channels, then a difference: no loop over C.
    """
    xp = backend.get_array_module(v)
    n, c = v.shape[:2]
    padded = xp.zeros((n, c + before + after + 1) + v.shape[2:], dtype=v.dtype)
    padded[:, before + 1:before + 1 + c] = v
    csum = xp.cumsum(padded, axis=1)
    return csum[:, before + after + 1:] - csum[:, :c]


class LocalResponseNorm(Layer):
    """Local response normalisation across channels (configuration A-LRN).

    ``LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)``, any (N, C, ...) input::

        b[c] = a[c] / (k + alpha / size * sum_{c' in window(c)} a[c']**2) ** beta
        window(c) = c - size//2 ... c + (size - 1)//2, clipped to [0, C)

    This is the definition of PyTorch's ``torch.nn.LocalResponseNorm`` and Caffe:
    alpha is divided by ``size``. The AlexNet paper (Krizhevsky et al., 2012)
    writes the sum without dividing, ``k + alpha * sum``, so its alpha = 1e-4 is
    this layer's alpha = 1e-4 * size. The VGG paper used the AlexNet setting
    (size 5, alpha 1e-4, beta 0.75, k 2) with Caffe's convention.

    Backward, with s[c] = k + alpha/size * window sum of a**2::

        dx[j] = dy[j] * s[j]**-beta
                - 2 * alpha * beta / size * a[j] * sum_{c: j in window(c)} dy[c] * a[c] * s[c]**(-beta-1)
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        _positive("LocalResponseNorm", size=size)
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"

    def forward(self, x, train=False):
        self._check_input(x)
        if x.ndim < 3:
            raise ShapeError(f"{self!r}: expected an input (N, C, ...) with at least 3 axes, got {_shape(x)}")
        before, after = self.size // 2, (self.size - 1) // 2
        dt = x.dtype.type
        s = dt(self.k) + dt(self.alpha / self.size) * _channel_window_sum(x * x, before, after)
        s_pow = s ** dt(-self.beta)
        y = x * s_pow
        self._cache = (x, s, s_pow)
        return y

    def backward(self, dy):
        x, s, s_pow = self._cached()
        self._check_dy(dy, x.shape)
        dt = x.dtype.type
        before, after = self.size // 2, (self.size - 1) // 2
        t = dy * x * s_pow / s  # dy[c] * a[c] * s[c]**(-beta-1)
        # j is in window(c) exactly when c is in [j - after, j + before].
        back = _channel_window_sum(t, after, before)
        return dy * s_pow - dt(2.0 * self.alpha * self.beta / self.size) * x * back


class _BatchNorm(Layer):
    """Shared code of BatchNorm1d/2d: per-channel statistics over ``self._axes``."""

    _axes = None
    _ndim = None
    _what = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        _positive(type(self).__name__, num_features=num_features)
        self.num_features = int(num_features)
        self.eps, self.momentum = float(eps), float(momentum)
        self.dtype = np.dtype(dtype)
        self.params["weight"] = backend.to_device(np.ones(self.num_features, dtype=self.dtype))
        self.params["bias"] = _zeros((self.num_features,), self.dtype)
        self.buffers["running_mean"] = _zeros((self.num_features,), self.dtype)
        self.buffers["running_var"] = backend.to_device(np.ones(self.num_features, dtype=self.dtype))
        self.num_batches_tracked = 0

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def _bshape(self, x):
        return (1, self.num_features) + (1,) * (x.ndim - 2)

    # The seam data-parallel training extends (tinyvgg.distributed, set through
    # ``model.set_batch_norm_reduction``): ``reduce(s)`` sums a float64 array of
    # per-channel sums over every process holding a share of the batch, in place.
    # None: this process holds the whole batch.
    reduce = None

    def _as_rows(self, x):
        """``(v, axes, bshape, restore)``: the view of ``x`` the statistics are taken
        on. An (N, C, H, W) input stored channels-last (what the fast convolution
        returns) becomes an (N*H*W, C) matrix, whose column sums are one BLAS
        product; otherwise ``x`` itself, reduced over ``self._axes``. ``restore``
        turns a result of ``v``'s shape back into the shape of ``x``."""
        rows = channel_rows(x) if self._ndim == 4 else None
        if rows is None:
            return x, self._axes, self._bshape(x), lambda v: v
        n, c, h, w = x.shape
        return rows, (0,), (1, c), lambda v: v.reshape(n, h, w, c).transpose(0, 3, 1, 2)

    @staticmethod
    def _sums(a, axes):
        """Per-channel sums of ``a`` over ``axes``."""
        if axes == (0,) and a.ndim == 2 and a.shape[0] > 1:
            # ones (M,) @ a (M, C): BLAS sums the columns far faster than a.sum(axis=0)
            xp = backend.get_array_module(a)
            return xp.ones(a.shape[0], dtype=a.dtype) @ a
        return a.sum(axis=axes)

    def _batch_means(self, *arrays, axes=None):
        """``([mean of each array over the batch axes, (C,)], m)``, m the number of
        values per channel: the one reduction of BatchNorm's batch statistics (the
        forward's mean and variance, the backward's two means). ``axes``: those of
        the arrays' layout (default ``self._axes``).

        With ``self.reduce`` set, the per-channel sums (float64) and the count are
        summed over the processes first, so the means are those of the global batch."""
        axes = self._axes if axes is None else axes
        c = self.num_features
        m = arrays[0].size // c
        if self.reduce is None:  # one process, the whole batch
            return [self._sums(a, axes) * a.dtype.type(1 / m) for a in arrays], m
        xp = backend.get_array_module(arrays[0])
        s = xp.empty(len(arrays) * c + 1, dtype=np.float64)
        for i, a in enumerate(arrays):
            s[i * c:(i + 1) * c] = a.sum(axis=axes, dtype=np.float64)
        s[-1] = m
        self.reduce(s)
        count = int(s[-1])
        return [(s[i * c:(i + 1) * c] / count).astype(arrays[0].dtype) for i in range(len(arrays))], count

    def forward(self, x, train=False):
        self._check_input(x, ndim=self._ndim, channels=self.num_features, what=self._what)
        dt = x.dtype.type
        v, axes, bshape, restore = self._as_rows(x)   # v: (M, C) rows, or x itself
        wide = self._wide_rows(v, axes)
        if wide is not None:  # fast path: the same passes on wide rows, on the worker threads
            return self._forward_fast(wide, train, restore, x.shape)
        if train:
            (mean,), m = self._batch_means(v, axes=axes)
            if m < 2:
                raise ShapeError(f"{self!r}: training needs more than one value per channel to "
                                 f"compute a variance, got input shape {_shape(x)}")
            xc = v - mean.reshape(bshape)
            (var,), _ = self._batch_means(xc * xc, axes=axes)  # biased: used to normalise
            mom = dt(self.momentum)
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= (1 - mom)
            rm += mom * mean
            rv *= (1 - mom)
            rv += mom * var * dt(m / (m - 1))  # unbiased in the running estimate
            self.num_batches_tracked += 1
        else:
            xc = v - self.buffers["running_mean"].reshape(bshape)
            var = self.buffers["running_var"]
        invstd = (var + dt(self.eps)) ** dt(-0.5)
        xhat = xc
        xhat *= invstd.reshape(bshape)                 # in place: xc is ours
        y = xhat * self.params["weight"].reshape(bshape)
        y += self.params["bias"].reshape(bshape)
        self._cache = (xhat, invstd, train, axes, bshape, restore, x.shape)
        return restore(y)

    def backward(self, dy):
        xhat, invstd, train, axes, bshape, restore, x_shape = self._cached()
        self._check_dy(dy, x_shape)
        if axes != self._axes and dy.ndim == 4:  # the statistics were taken on rows: dy as rows too
            xp = backend.get_array_module(dy)
            dy = xp.ascontiguousarray(dy.transpose(0, 2, 3, 1)).reshape(-1, self.num_features)
        if axes == "fast":  # the forward pass took the fast path: so does backward (bshape is k)
            return self._backward_fast(dy, xhat, invstd, train, bshape, restore)
        gamma = self.params["weight"]
        dyx = dy * xhat
        # the gradients of this process's share (data-parallel training sums them later)
        self.grads = {"weight": self._sums(dyx, axes), "bias": self._sums(dy, axes)}
        scale = (gamma * invstd).reshape(bshape)        # dxhat = gamma * dy, then * invstd
        if not train:  # running statistics are constants
            return restore(dy * scale)
        if self.reduce is None:
            m = dy.size // self.num_features
            mean_dy, mean_dyx = (self.grads[k] * dy.dtype.type(1 / m) for k in ("bias", "weight"))
        else:  # the means over the global batch
            (mean_dy, mean_dyx), _ = self._batch_means(dy, dyx, axes=axes)
        # xhat depends on every value of its channel through the batch mean and variance:
        # dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        dx = xhat * (-scale * mean_dyx.reshape(bshape))
        dx += dy * scale
        dx -= scale * mean_dy.reshape(bshape)
        return restore(dx)

    # -- the fast path: the passes above on wide rows, in slices on the worker threads ---

    WIDE_ROW = 256  # values per row on the fast path: NumPy runs long rows much faster

    def _wide_rows(self, v, axes):
        """``(w, k)``: the rows ``v`` (M, C) viewed as (M / k, k * C), k pixels per
        row (k a power of two dividing M, k * C >= ``WIDE_ROW`` where possible), so
        every per-channel pass runs long rows instead of M rows of C values; None
        (the plain passes) for anything but NumPy rows on the fast path."""
        if axes != (0,) or v.ndim != 2 or backend.get_array_module(v) is not np or choose_path(v) != "fast":
            return None
        m, c = v.shape
        k = 1
        while k * c < self.WIDE_ROW and m % (2 * k) == 0:
            k *= 2
        return v.reshape(m // k, k * c), k

    def _sums_in_slices(self, parts, k, fn):
        """Per-channel sums over the batch of the column sums ``fn(r0, r1)`` returns
        for each slice of wide rows, run on the worker threads and added in slice
        order: ``[sums, ...]``."""
        out = [None] * len(parts)

        def task(i, r0, r1):
            out[i] = fn(r0, r1)
        parallel.run(task, parts, np)
        c = self.num_features
        return [parallel.sum_in_order(list(col)).reshape(k, c).sum(axis=0) for col in zip(*out)]

    def _means_of_sums(self, sums, m):
        """Means over the batch (the global batch when ``self.reduce`` is set) from
        this process's per-channel ``sums`` over ``m`` values each."""
        if self.reduce is None:
            return [s * s.dtype.type(1 / m) for s in sums], m
        c = self.num_features
        s = np.concatenate([np.asarray(t, dtype=np.float64) for t in sums] + [np.array([m], np.float64)])
        self.reduce(s)
        count = int(s[-1])
        return [(s[i * c:(i + 1) * c] / count).astype(sums[0].dtype) for i in range(len(sums))], count

    def _forward_fast(self, wide, train, restore, x_shape):
        v, k = wide                                    # (M / k, k * C)
        m_local = v.shape[0] * k                       # values per channel in this process
        parts = parallel.slices(v.shape[0], v.nbytes)
        dt = v.dtype.type
        xhat, y = np.empty_like(v), np.empty_like(v)
        if train:
            sums = self._sums_in_slices(parts, k, lambda a, b: [self._sums(v[a:b], (0,))])
            (mean,), m = self._means_of_sums(sums, m_local)
            if m < 2:
                raise ShapeError(f"{self!r}: training needs more than one value per channel to "
                                 f"compute a variance, got input shape {x_shape}")
            mean_k = np.tile(mean, k)

            def centred_squares(r0, r1):  # xhat holds x - mean for now
                xc = np.subtract(v[r0:r1], mean_k, out=xhat[r0:r1])
                return [np.einsum("ij,ij->j", xc, xc)]  # column sums of xc * xc, no temporary
            (var,), _ = self._means_of_sums(self._sums_in_slices(parts, k, centred_squares), m_local)
            mom = dt(self.momentum)
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= (1 - mom)
            rm += mom * mean
            rv *= (1 - mom)
            rv += mom * var * dt(m / (m - 1))
            self.num_batches_tracked += 1
        else:
            mean_k, var = np.tile(self.buffers["running_mean"], k), self.buffers["running_var"]
        invstd = (var + dt(self.eps)) ** dt(-0.5)
        invstd_k, gamma_k = np.tile(invstd, k), np.tile(self.params["weight"], k)
        beta_k = np.tile(self.params["bias"], k)

        def normalise(i, r0, r1):
            if not train:
                np.subtract(v[r0:r1], mean_k, out=xhat[r0:r1])
            np.multiply(xhat[r0:r1], invstd_k, out=xhat[r0:r1])
            np.multiply(xhat[r0:r1], gamma_k, out=y[r0:r1])
            y[r0:r1] += beta_k
        parallel.run(normalise, parts, np)
        self._cache = (xhat, invstd, train, "fast", k, restore, x_shape)
        return restore(y.reshape(-1, self.num_features))

    def _backward_fast(self, dy, xhat, invstd, train, k, restore):
        dy = dy.reshape(xhat.shape)                    # wide rows, like xhat
        parts = parallel.slices(dy.shape[0], dy.nbytes)
        dx = np.empty_like(dy)

        def dy_and_dyx(r0, r1):  # column sums of dy and of dy * xhat
            return [self._sums(dy[r0:r1], (0,)), np.einsum("ij,ij->j", dy[r0:r1], xhat[r0:r1])]
        sum_dy, sum_dyx = self._sums_in_slices(parts, k, dy_and_dyx)
        self.grads = {"weight": sum_dyx, "bias": sum_dy}
        scale = self.params["weight"] * invstd
        scale_k = np.tile(scale, k)
        if train:  # dx = scale * dy + (-scale * mean(dy * xhat)) * xhat - scale * mean(dy)
            (mean_dy, mean_dyx), _ = self._means_of_sums([sum_dy, sum_dyx], dy.shape[0] * k)
            b_k, c_k = np.tile(-scale * mean_dyx, k), np.tile(-scale * mean_dy, k)

        def combine(i, r0, r1):
            out = dx[r0:r1]
            if train:
                np.multiply(xhat[r0:r1], b_k, out=out)
                out += c_k
                out += dy[r0:r1] * scale_k
            else:
                np.multiply(dy[r0:r1], scale_k, out=out)
        parallel.run(combine, parts, np)
        return restore(dx.reshape(-1, self.num_features))


class BatchNorm2d(_BatchNorm):
    """Batch normalisation per channel of an (N, C, H, W) input (statistics over N, H, W).

    ``BatchNorm2d(num_features, eps=1e-5, momentum=0.1)``, PyTorch's semantics:
    training normalises with the batch mean and *biased* variance and updates
    ``running = (1 - momentum) * running + momentum * batch_stat`` with the
    *unbiased* variance; ``train=False`` normalises with the running statistics.
    Parameters ``weight`` (gamma, C) and ``bias`` (beta, C); buffers
    ``running_mean`` and ``running_var`` (C).
    """

    _axes = (0, 2, 3)
    _ndim = 4
    _what = "(N, C, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation per feature of an (N, C) input (statistics over N);
    otherwise as :class:`BatchNorm2d`."""

    _axes = (0,)
    _ndim = 2
    _what = "(N, C)"


def num_params(layer):
    """Number of learnable scalars in a layer."""
    return int(sum(math.prod(p.shape) for p in layer.params.values()))
