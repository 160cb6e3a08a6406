"""Which code runs an op: the one decision every op's public function makes first.

- ``"gpu"``: the array lives on the GPU (CuPy) and the fast paths are on: the
  CUDA kernels of :mod:`tinyvgg.ops.gpu`.
- ``"fast"``: a host (NumPy) array, fast paths on: :mod:`tinyvgg.ops.cpu`
  (channels-last activations, chunks, scratch buffers, worker threads).
- ``"simple"``: the fast paths are off (``tinyvgg.backend.use_fast(False)`` or
  ``TINYVGG_FAST=0``): the textbook version at the top of each op's module, with
  NumPy or CuPy alike.

Stand-in devices of the tests (NumPy underneath) take the CPU's paths.
"""

from __future__ import annotations

from .. import backend

__all__ = ["choose_path"]


def choose_path(a):
    """``"gpu"``, ``"fast"`` or ``"simple"`` for an op on array ``a`` (see the module notes)."""
    if not backend.fast():
        return "simple"
    if backend.current() == "gpu" and backend.is_device_array(a):
        return "gpu"
    return "fast"
