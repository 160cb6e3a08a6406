"""Reusable host buffers for the large temporaries of the ops (im2col columns and the like).

Why: a fresh large NumPy array costs more than its ``malloc``. The allocator
hands out pages the process has never touched (arrays above 32 MB are always
new ``mmap`` regions), and the kernel zero-fills each page on its first write.
For a 100 MB column buffer that is tens of milliseconds per call, a fair share
of a convolution. Reusing a buffer that is already mapped skips all of it.

Rule that makes reuse safe: a pooled buffer is handed out only when **the pool
holds the only reference to it**. Every array :func:`take` returns is a view
whose ``.base`` is the pooled buffer, and so is every view of that view; as
long as any of them is alive (a layer's forward cache, a caller's result), the
buffer's reference count says it is in use and it is not handed out again.
When the last view is dropped, it is free. Nothing has to be "returned".

Only the thread that runs the ops touches the pool (the data loader's thread
never does), so there is no lock. Only NumPy arrays are pooled: CuPy already
keeps a caching allocator of its own, so on the GPU :func:`take` just allocates.

``clear()`` drops every free buffer (benchmarks call it before measuring peak
memory, so that the scratch memory is counted), ``nbytes()`` says how much the
pool holds, and ``set_limit(bytes)`` caps it (default 1 GiB; free buffers are
dropped, oldest first, when a new one would exceed the cap; a buffer larger than
the cap is never pooled, so ``set_limit(0)`` turns reuse off).
"""

from __future__ import annotations

import math
import sys
import threading

import numpy

__all__ = ["take", "clear", "nbytes", "set_limit", "limit"]

_pool = []  # pooled base buffers (1-D, uint8), least recently used first
_state = {"limit": 1 << 30}
_lock = threading.Lock()  # the ops may run chunks in worker threads
_MIN_BYTES = 1 << 20  # smaller arrays come cheaply from malloc: not worth pooling

# References to a pooled buffer when nobody outside holds it: the pool list, the
# local variable that names it and getrefcount's own argument.
_FREE_REFS = 3


def take(shape, dtype, xp=numpy):
    """An uninitialised array of ``shape`` and ``dtype`` (like ``xp.empty``),
    from the pool when a free buffer of the same byte size is there."""
    dtype = numpy.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if xp is not numpy or size < _MIN_BYTES or size > _state["limit"]:
        return xp.empty(shape, dtype=dtype)
    with _lock:
        return _take(shape, dtype, size)


def _take(shape, dtype, size):
    for i in range(len(_pool)):
        buf = _pool[i]
        if buf.nbytes == size and sys.getrefcount(buf) == _FREE_REFS:
            _pool.append(_pool.pop(i))  # most recently used goes last
            return buf.view(dtype).reshape(shape)
    buf = None
    buf = numpy.empty(size, dtype=numpy.uint8)
    _make_room(size)
    _pool.append(buf)
    return buf.view(dtype).reshape(shape)


def _make_room(size):
    total = sum(b.nbytes for b in _pool) + size
    i = 0
    while total > _state["limit"] and i < len(_pool):
        buf = _pool[i]
        if sys.getrefcount(buf) == _FREE_REFS:
            total -= buf.nbytes
            del _pool[i]
        else:
            i += 1
        del buf


def clear():
    """Drop every free buffer (buffers still referenced stay until released)."""
    _pool[:] = [b for b in _pool if sys.getrefcount(b) > _FREE_REFS]


def nbytes():
    """Bytes held by the pool (free and in use)."""
    return sum(b.nbytes for b in _pool)


def set_limit(n_bytes):
    """Cap the bytes of the pool (free buffers beyond it are dropped)."""
    _state["limit"] = int(n_bytes)
    _make_room(0)


def limit():
    return _state["limit"]
