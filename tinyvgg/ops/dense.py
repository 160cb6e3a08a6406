"""The fully connected layers' product, on the path :mod:`tinyvgg.ops.paths` picks."""

from __future__ import annotations

from ..backend import get_array_module
from . import cpu
from .paths import choose_path

__all__ = ["matmul"]


def matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays (M, K) @ (K, N) -> (M, N), written into ``out`` (an
    (M, N) array of the result's dtype) when given. On the fast CPU path the
    product is split over the worker threads (:func:`tinyvgg.ops.cpu.parallel.matmul`:
    OpenBLAS's own threads stall on these small products when the machine is busy);
    on the GPU and the textbook path it is the plain product."""
    if choose_path(a) == "fast":
        return cpu.matmul(a, b, out=out)
    return a @ b if out is None else get_array_module(a, b).matmul(a, b, out=out)
