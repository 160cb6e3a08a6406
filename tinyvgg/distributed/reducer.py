"""Sums of arrays over the ranks (the allreduce), for host and device arrays.

Host arrays (the CPU backend) are summed with ``MPI_Allreduce``. Device arrays are
summed with NCCL when every rank has it and its own GPU (reached through
:func:`tinyvgg.backend.nccl`: only the backend imports CuPy), else with CUDA-aware
MPI on the device pointers, else by a host round trip."""

from __future__ import annotations

import os
import socket

import numpy as np

from .. import backend
from .mpi import DistributedError, mpi_cuda_aware

__all__ = ["Reducer", "ALLREDUCE_MODES"]

ALLREDUCE_MODES = ("auto", "nccl", "cuda-aware-mpi", "host")


class Reducer:
    """Sums lists of same-dtype arrays across the ranks, in place.

    ``Reducer(world, device=None, mode="auto")``: ``device`` is the backend
    :class:`tinyvgg.backend.Device` whose arrays will be reduced (default: the
    current one). ``mode`` is one of ``auto``, ``nccl``, ``cuda-aware-mpi``,
    ``host`` (``TINYVGG_ALLREDUCE`` when None). The choice is made collectively
    (every rank must construct the reducer) and is the same on every rank:

    * host arrays: ``MPI_Allreduce`` on the NumPy buffer (``mode`` = ``"mpi"``);
    * device arrays: NCCL if every rank has it and its own GPU, else CUDA-aware
      MPI if the library says so on every rank, else a host round trip
      (``"host-roundtrip"``: one copy to the host, the allreduce, one copy back).

    ``mode`` and ``reason`` (a sentence for the log) say what was chosen;
    ``bytes_reduced`` and ``calls`` count the traffic.
    """

    def __init__(self, world, device=None, mode=None):
        self.world = world
        self.device = device or backend.device()
        requested = (mode or os.environ.get("TINYVGG_ALLREDUCE") or "auto").strip().lower()
        if requested not in ALLREDUCE_MODES:
            raise DistributedError(f"unknown allreduce mode {requested!r}; expected one of "
                                   f"{', '.join(ALLREDUCE_MODES)} (TINYVGG_ALLREDUCE)")
        self.requested = requested
        self._nccl = self._nccl_comm = None
        self._buffers = {}
        self.bytes_reduced = 0
        self.calls = 0
        if self.device.is_host:
            if requested in ("nccl", "cuda-aware-mpi"):
                raise DistributedError(f"allreduce mode {requested!r} needs the GPU backend; the "
                                       f"arrays live on the host (--device cpu)")
            self.mode = "mpi"
            self.reason = "MPI_Allreduce on host arrays (CPU backend)"
        else:
            self.mode, self.reason = self._choose_device_mode(requested)

    # -- the collective choice for device arrays ------------------------------
    def _choose_device_mode(self, requested):
        comm, xp = self.world.comm, self.device.xp
        nccl, nccl_why = backend.nccl(xp)
        aware, aware_why = mpi_cuda_aware()
        gpu_id = None
        if getattr(xp, "__name__", "") == "cupy":
            try:
                gpu_id = xp.cuda.Device().pci_bus_id
            except Exception:  # noqa: BLE001
                gpu_id = str(xp.cuda.Device().id)
        caps = comm.allgather(dict(nccl=nccl is not None, nccl_why=nccl_why, aware=aware,
                                   aware_why=aware_why, gpu=(socket.gethostname(), gpu_id)))
        gpus = [c["gpu"] for c in caps]
        shared = len(set(gpus)) < len(gpus)
        all_nccl = all(c["nccl"] for c in caps) and not shared
        all_aware = all(c["aware"] for c in caps)
        if not all(c["nccl"] for c in caps):
            why_not_nccl = next(c["nccl_why"] for c in caps if not c["nccl"])
        elif shared:
            why_not_nccl = "two ranks share a GPU (NCCL needs one GPU per rank)"
        else:
            why_not_nccl = ""
        why_not_aware = "" if all_aware else next(c["aware_why"] for c in caps if not c["aware"])

        if requested in ("auto", "nccl") and all_nccl:
            uid = nccl.get_unique_id() if self.world.is_main else None
            uid = comm.bcast(uid, root=0)
            self._nccl = nccl
            self._nccl_comm = nccl.NcclCommunicator(self.world.size, uid, self.world.rank)
            return "nccl", f"NCCL allreduce on device arrays (CuPy {xp.__version__})"
        if requested == "nccl":
            raise DistributedError(f"TINYVGG_ALLREDUCE=nccl but NCCL cannot be used: {why_not_nccl}")
        if requested in ("auto", "cuda-aware-mpi") and all_aware:
            return "cuda-aware-mpi", f"CUDA-aware MPI_Allreduce on device arrays ({caps[0]['aware_why']})"
        if requested == "cuda-aware-mpi":
            raise DistributedError(f"TINYVGG_ALLREDUCE=cuda-aware-mpi but the MPI library is not "
                                   f"CUDA-aware: {why_not_aware}")
        if requested == "host":
            return "host-roundtrip", ("host round trip for device arrays (TINYVGG_ALLREDUCE=host): "
                                      "copy to the host, MPI_Allreduce, copy back")
        return "host-roundtrip", (f"host round trip for device arrays: copy to the host, "
                                  f"MPI_Allreduce, copy back (no NCCL: {why_not_nccl}; MPI not "
                                  f"CUDA-aware: {why_not_aware})")

    # -- summing -------------------------------------------------------------
    def _flat(self, key, xp, dtype, n):
        buf = self._buffers.get(key)
        if buf is None or buf.size != n or buf.dtype != dtype:
            buf = self._buffers[key] = xp.empty(n, dtype=dtype)
        return buf

    def sum_(self, arrays, key=None):
        """Replace every array of ``arrays`` (same dtype, all host or all device) by
        its sum over the ranks. ``key`` names a reusable packing buffer."""
        arrays = list(arrays)
        if not arrays or self.world.size == 1:
            return arrays
        xp = backend.get_array_module(arrays[0])
        dtype = arrays[0].dtype
        sizes = [int(a.size) for a in arrays]
        total = sum(sizes)
        if len(arrays) == 1 and arrays[0].ndim == 1 and arrays[0].flags.c_contiguous:
            flat = arrays[0]
        else:
            flat = self._flat(key, xp, dtype, total) if key is not None else xp.empty(total, dtype=dtype)
            o = 0
            for a, n in zip(arrays, sizes):
                flat[o:o + n] = a.reshape(-1)
                o += n
        self._reduce_flat(flat)
        if flat is not arrays[0] or len(arrays) > 1:
            o = 0
            for a, n in zip(arrays, sizes):
                a[...] = flat[o:o + n].reshape(a.shape)
                o += n
        self.bytes_reduced += total * dtype.itemsize
        self.calls += 1
        return arrays

    def _reduce_flat(self, flat):
        MPI, comm = self.world.MPI, self.world.comm
        if self.mode == "mpi" or not backend.is_device_array(flat):
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        elif self.mode == "nccl":
            nccl, xp = self._nccl, self.device.xp
            types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                     np.dtype(np.int64): nccl.NCCL_INT64}
            stream = xp.cuda.get_current_stream()
            self._nccl_comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, types[np.dtype(flat.dtype)],
                                      nccl.NCCL_SUM, stream.ptr)
        elif self.mode == "cuda-aware-mpi":
            self.device.xp.cuda.get_current_stream().synchronize()
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        else:  # host round trip
            host = np.ascontiguousarray(backend.to_host(flat))
            comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            flat[...] = backend.to_device(host)

    def sum_grouped(self, arrays, key):
        """:meth:`sum_` for arrays of several dtypes (one allreduce per dtype)."""
        groups = {}
        for a in arrays:
            groups.setdefault(np.dtype(a.dtype).str, []).append(a)
        for dt, group in groups.items():
            self.sum_(group, key=f"{key}/{dt}")

