"""Data-parallel training over MPI, as in section 3.3 of the paper.

The paper trained on four GPUs by splitting every batch across them, computing
the gradients of the pieces in parallel and averaging them, and notes that the
result is exactly what one GPU computes on the whole batch. This module does the
same over MPI (through mpi4py)::

    mpirun -n 4 python -m tinyvgg train --model vgg16 --batch-size 256 ... --data-parallel
    mpirun -n 4 python -m tinyvgg.distributed --model vgg16 --batch-size 256 ...   # the same

How a step works
----------------
Every rank builds the same model from the same seed (checked at start: each rank
hashes its weights, optimiser state, schedule and position and rank 0 compares
them), reads the same global batch of ``--batch-size`` images and keeps its share
``x[r*n//P : (r+1)*n//P]`` (the :class:`tinyvgg.train.Trainer` does the slicing).
An uneven split is exact: each rank's loss gradient is scaled by ``n_r / n``
before the backward pass, so that the sum of the ranks' gradients, computed by
one allreduce in the ``after_backward`` hook, is the gradient of the mean loss of
the whole batch. Every rank then makes the same SGD step. A batch with fewer
images than ranks (some rank would get none) is refused with a clear error.

BatchNorm
---------
``bn="sync"`` (the default): synchronised BatchNorm. The batch mean and variance
of every BatchNorm layer are those of the whole global batch (two small
allreduces in the forward pass, one in the backward), so a P-rank run equals a
one-process run on the whole batch, BatchNorm included, and the running
statistics are the same on every rank.
``bn="local"``: per-rank statistics (what PyTorch's DDP does by default; the
paper's networks had no BatchNorm). Each rank normalises with its own shard's
statistics, which is a different computation from one process on the whole
batch; after every step the running statistics are averaged across the ranks
(weighted by shard size) so every rank keeps the same buffers. The environment
variable ``TINYVGG_DP_BN`` (``sync`` or ``local``) picks the rule when the
caller does not.

Allreduce on the GPU
--------------------
Host arrays (the CPU backend) are summed with ``MPI_Allreduce``. Device arrays
(CuPy) are summed with NCCL through CuPy when every rank has NCCL and its own
GPU, else with CUDA-aware MPI on the device pointers when the MPI library says
it is CUDA-aware (``MPIX_Query_cuda_support`` / ``MPIX_GPU_query_support``),
else by a host round trip (one device-to-host copy of all gradients, the
allreduce on the host, one copy back). Rank 0 prints which one is used and why.
``TINYVGG_ALLREDUCE`` (``auto``, ``nccl``, ``cuda-aware-mpi``, ``host``) forces a
choice. On the GPU each rank uses GPU ``local_rank % device_count``.

Files, resume, failures
-----------------------
Only rank 0 prints the progress bar and writes the history, curves, checkpoints
and metrics. The progress bar shows rank 0's shard; the epoch's history record
holds the whole batch's training loss and accuracy. Validation runs on every
rank (same weights, same data, so the same numbers); rank 0's schedule state is
broadcast after every epoch so the learning rate can never differ, and the
weights are checked to be identical on every rank. The checkpoint holds the
global position (epoch, global batch), so a checkpoint of a P-rank run resumes
on any number of ranks, or in a plain one-process ``train --resume``.

A rank that raises prints its rank and the error and calls ``MPI_Abort``, which
ends every rank (no hang); a rank killed outright is ended by the launcher.
Without mpi4py or without an MPI launcher, :func:`train_data_parallel` prints
how to install and launch and returns exit status 2.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import socket
import sys
import traceback

import numpy as np

from . import backend

__all__ = ["DistributedError", "World", "connect", "Reducer", "DataParallel", "setup_data_parallel",
           "train_data_parallel", "guarded", "mpi_cuda_aware", "allreduce_payload_bytes",
           "ring_allreduce_bytes_per_rank", "INSTALL_HINT", "LAUNCH_HINT", "main"]

INSTALL_HINT = ("install mpi4py and an MPI library: 'pip install mpi4py mpich' (both are in "
                "requirements.txt, so 'make venv' or 'pip install -r requirements.txt' installs them; "
                "the mpich wheel brings its own mpiexec/mpirun into the virtual environment's bin/). "
                "On a cluster with its own MPI, load that MPI and build mpi4py against it instead: "
                "'pip install --no-binary mpi4py mpi4py'")
LAUNCH_HINT = ("launch one process per rank with the MPI launcher, e.g. "
               "'.venv/bin/mpirun -n 2 .venv/bin/python -m tinyvgg train ... --data-parallel' "
               "(use the mpirun of the MPI that mpi4py loads; as root, Open MPI also needs "
               "--allow-run-as-root)")

# Environment variables that MPI launchers set in the processes they start, with the
# world size where the variable says it.
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_LAUNCHER_VARS = _LAUNCHER_SIZE_VARS + ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")

BN_RULES = ("sync", "local")
ALLREDUCE_MODES = ("auto", "nccl", "cuda-aware-mpi", "host")


class DistributedError(RuntimeError):
    """Data-parallel training cannot start or the ranks disagree; the message says why
    and what to do."""


# --------------------------------------------------------------------------
# The MPI world
# --------------------------------------------------------------------------

class World:
    """The MPI communicator of a data-parallel run: ``comm``, ``rank``, ``size``,
    ``local_rank`` (rank among the processes of this host) and ``MPI`` (the mpi4py
    module). Build it with :func:`connect`."""

    def __init__(self, MPI, comm):
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        try:
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank = local.Get_rank()
            local.Free()
        except Exception:  # pragma: no cover - very old MPI
            self.local_rank = self.rank
        self.library = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())

    @property
    def is_main(self):
        return self.rank == 0

    def abort(self, code=1):
        """End every rank of the job (``MPI_Abort``)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, library={self.library!r})"


def _launcher_size():
    """The world size the launcher announced in the environment, or None."""
    for var in _LAUNCHER_SIZE_VARS:
        v = os.environ.get(var)
        if v and v.strip().isdigit():
            return var, int(v)
    return None


def _launched():
    return any(v in os.environ for v in _LAUNCHER_VARS)


def connect(require_launcher=True):
    """Import mpi4py, initialise MPI and return the :class:`World`.

    Raises :class:`DistributedError` saying how to install and launch when mpi4py
    or the MPI library is missing, when the process was not started by an MPI
    launcher (``require_launcher``), and when the launcher started P processes
    but MPI sees a world of one (mpi4py loads a different MPI than the mpirun
    used: the classic mixed-MPI mistake, where every process would think it is
    rank 0 and train alone).
    """
    if require_launcher and not _launched():
        raise DistributedError(
            "--data-parallel: this process was not started by an MPI launcher (no PMI_*/OMPI_*/"
            f"PMIX_* variables in the environment). {LAUNCH_HINT[0].upper()}{LAUNCH_HINT[1:]}. "
            f"If mpi4py is missing: {INSTALL_HINT}.")
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"--data-parallel needs mpi4py, which is not importable ({e}). "
                               f"To fix it, {INSTALL_HINT}; then {LAUNCH_HINT}.") from None
    except (RuntimeError, OSError) as e:  # mpi4py present, the MPI library is not
        raise DistributedError(f"--data-parallel: mpi4py cannot load an MPI library ({e}). "
                               f"To fix it, {INSTALL_HINT}; then {LAUNCH_HINT}.") from None
    world = World(MPI, MPI.COMM_WORLD)
    announced = _launcher_size()
    if announced is not None and announced[1] != world.size:
        var, n = announced
        raise DistributedError(
            f"--data-parallel: the launcher started {n} processes ({var}={n}) but MPI in this "
            f"process sees a world of {world.size}. mpi4py loads '{world.library}', which is not "
            f"the MPI of the mpirun that launched it; use that MPI's own launcher (with the pip "
            f"wheels: .venv/bin/mpirun), or build mpi4py against the launcher's MPI "
            f"('pip install --no-binary mpi4py mpi4py'). 'python -m mpi4py --mpi-lib-version' "
            f"names the library mpi4py uses.")
    return world


def guarded(world, fn):
    """Run ``fn()`` on this rank; if it raises, print the rank and the error and end
    every rank with ``MPI_Abort`` so that no rank is left waiting in a collective.

    With a world of one the exception is simply re-raised. Ctrl-C: only rank 0
    handles SIGINT (it saves the checkpoint, as a one-process run does); the other
    ranks ignore it and are ended by the abort that follows.
    """
    if world.size > 1 and not world.is_main and hasattr(signal, "SIGINT"):
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # pragma: no cover - not the main thread
            pass
    try:
        return fn()
    except KeyboardInterrupt:
        if world.size == 1:
            raise
        sys.stderr.write(f"tinyvgg.distributed: rank {world.rank} of {world.size} interrupted; "
                         f"ending all ranks\n")
        world.abort(130)
    except BaseException as e:  # noqa: BLE001 - every failure must end the whole job
        if world.size == 1 or (isinstance(e, SystemExit) and not e.code):
            raise
        sys.stderr.write(traceback.format_exc())
        sys.stderr.write(f"tinyvgg.distributed: rank {world.rank} of {world.size} failed: "
                         f"{type(e).__name__}: {e}\ntinyvgg.distributed: ending all {world.size} "
                         f"ranks (MPI_Abort)\n")
        world.abort(1)


# --------------------------------------------------------------------------
# Allreduce of host and device arrays
# --------------------------------------------------------------------------

def _loaded_mpi_libraries():
    """Paths of the libmpi* shared libraries mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return []
    seen = []
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if os.path.basename(path).startswith("libmpi") and ".so" in path and path not in seen:
            seen.append(path)
    return seen


def mpi_cuda_aware():
    """``(bool, how)``: does the MPI library accept CUDA device pointers?

    Asks the library itself: Open MPI's ``MPIX_Query_cuda_support()`` or MPICH's
    ``MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA, &flag)``, looked up in the
    libmpi loaded into this process. ``TINYVGG_CUDA_AWARE_MPI=1`` (or ``0``)
    overrides the answer.
    """
    forced = os.environ.get("TINYVGG_CUDA_AWARE_MPI", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"TINYVGG_CUDA_AWARE_MPI={forced}"
    for path in _loaded_mpi_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        f = getattr(lib, "MPIX_Query_cuda_support", None)
        if f is not None:
            f.restype = ctypes.c_int
            ok = bool(f())
            return ok, f"MPIX_Query_cuda_support() = {int(ok)} ({os.path.basename(path)})"
        g = getattr(lib, "MPIX_GPU_query_support", None)
        if g is not None:
            flag = ctypes.c_int(0)
            g.restype = ctypes.c_int
            rc = g(ctypes.c_int(0), ctypes.byref(flag))  # 0 = MPIX_GPU_SUPPORT_CUDA
            ok = rc == 0 and bool(flag.value)
            return ok, f"MPIX_GPU_query_support(CUDA) = {int(ok)} ({os.path.basename(path)})"
    return False, "the MPI library has no CUDA-support query"


def _nccl_module(xp):
    """CuPy's NCCL binding, or None with the reason."""
    if getattr(xp, "__name__", "") != "cupy":
        return None, "the array module is not CuPy"
    try:
        import importlib
        nccl = importlib.import_module("cupy.cuda.nccl")
    except Exception as e:  # noqa: BLE001
        return None, f"CuPy has no NCCL ({type(e).__name__}: {e})"
    if not getattr(nccl, "available", True):
        return None, "CuPy was built without NCCL"
    return nccl, "ok"


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
        nccl, nccl_why = _nccl_module(xp)
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


# --------------------------------------------------------------------------
# The pieces that make P ranks compute one batch
# --------------------------------------------------------------------------

class _ShardLoss:
    """The trainer's loss, with the gradient scaled by ``n_r / n`` (this rank's
    share of the global batch) so that the ranks' gradients *sum* to the gradient
    of the mean loss over the whole batch; also counts this rank's images."""

    def __init__(self, inner, world):
        self.inner = inner
        self.world = world
        self.n_local = self.n_global = 0
        self.seen = 0  # images of this rank since the last epoch_end

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        loss = self.inner.forward(logits, labels)
        self.n_local = int(labels.shape[0])
        self.n_global = int(self.world.comm.allreduce(self.n_local))
        self.seen += self.n_local
        return loss

    def backward(self):
        g = self.inner.backward()
        if self.n_local != self.n_global:
            g *= g.dtype.type(self.n_local / self.n_global)
        return g


class _SyncBatchNorm:
    """Makes one BatchNorm layer use the statistics of the global batch.

    Forward (training): the per-channel sum and count are summed over the ranks
    (the global mean), then the sum of squared deviations from that mean (the
    global biased variance), both in float64. Backward: the two per-channel means
    the BatchNorm gradient needs, ``mean(dxhat)`` and ``mean(dxhat * xhat)``, are
    global means too. The parameter gradients stay local sums; the gradient
    allreduce adds them up. Evaluation mode is the layer's own (running statistics).
    """

    def __init__(self, layer, reducer):
        self.layer = layer
        self.reducer = reducer
        self._count = None
        layer.forward = self.forward
        layer.backward = self.backward

    def remove(self):
        for name in ("forward", "backward"):
            self.layer.__dict__.pop(name, None)

    def forward(self, x, train=True):
        layer = self.layer
        if not train:
            return type(layer).forward(layer, x, train=False)
        layer._check_input(x, ndim=layer._ndim, channels=layer.num_features, what=layer._what)
        xp = backend.get_array_module(x)
        dt = x.dtype.type
        axes, bshape, c = layer._axes, layer._bshape(x), layer.num_features
        m_local = x.size // c
        s = xp.empty(c + 1, dtype=np.float64)
        s[:c] = x.sum(axis=axes, dtype=np.float64)
        s[c] = m_local
        self.reducer.sum_([s])
        count = s[c]
        if m_local < 2 and float(count) < 2:
            from .layers import ShapeError
            raise ShapeError(f"{layer!r}: training needs more than one value per channel over the "
                             f"global batch to compute a variance, got local input {tuple(x.shape)}")
        mean = s[:c] / count
        xc = x - mean.astype(x.dtype).reshape(bshape)
        v = (xc * xc).sum(axis=axes, dtype=np.float64)
        self.reducer.sum_([v])
        var64 = v / count
        var = var64.astype(x.dtype)
        mom = dt(layer.momentum)
        rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
        rm *= (1 - mom)
        rm += mom * mean.astype(x.dtype)
        rv *= (1 - mom)
        rv += mom * (var64 * (count / (count - 1))).astype(x.dtype)  # unbiased, as the layer
        layer.num_batches_tracked += 1
        invstd = (var + dt(layer.eps)) ** dt(-0.5)
        xhat = xc * invstd.reshape(bshape)
        y = xhat * layer.params["weight"].reshape(bshape) + layer.params["bias"].reshape(bshape)
        layer._cache = (xhat, invstd, True)
        self._count = count
        return y

    def backward(self, dy):
        layer = self.layer
        xhat, invstd, train = layer._cached()
        if not train:
            return type(layer).backward(layer, dy)
        layer._check_dy(dy, xhat.shape)
        xp = backend.get_array_module(dy)
        axes, bshape, c = layer._axes, layer._bshape(dy), layer.num_features
        gamma = layer.params["weight"]
        layer.grads = {"weight": (dy * xhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
        dxhat = dy * gamma.reshape(bshape)
        s = xp.empty(2 * c, dtype=np.float64)
        s[:c] = dxhat.sum(axis=axes, dtype=np.float64)
        s[c:] = (dxhat * xhat).sum(axis=axes, dtype=np.float64)
        self.reducer.sum_([s])
        s /= self._count
        mean_d = s[:c].astype(dy.dtype).reshape(bshape)
        mean_dx = s[c:].astype(dy.dtype).reshape(bshape)
        return (dxhat - mean_d - xhat * mean_dx) * invstd.reshape(bshape)


def _batch_norm_layers(model):
    from .layers import _BatchNorm
    return [(name, layer) for name, layer in model.named_layers() if isinstance(layer, _BatchNorm)]


def _digest(a):
    h = hashlib.sha256()
    host = np.ascontiguousarray(backend.to_host(a))
    h.update(str(host.dtype).encode() + str(host.shape).encode())
    h.update(host.tobytes())
    return h.hexdigest()[:16]


def state_digests(trainer, with_optimizer=True):
    """``{name: short sha256}`` of everything that must be equal on every rank:
    parameters, BatchNorm buffers, momentum buffers, schedule and position."""
    model = trainer.model
    out = {}
    for name, p, _ in model.named_parameters():
        out[name] = _digest(p)
    for name, b in model.named_buffers():
        out[name] = _digest(b)
    if with_optimizer:
        for name, v in sorted(trainer.optimizer.buffers.items()):
            out[f"momentum_buffer.{name}"] = _digest(v)
        out["schedule"] = hashlib.sha256(json.dumps(trainer.schedule.state_dict(), sort_keys=True,
                                                    default=str).encode()).hexdigest()[:16]
        out["position"] = f"{trainer.epoch}/{trainer.step_in_epoch}/{trainer.global_step}"
    return out


class DataParallel:
    """The hook that turns P trainers into one: install it with :meth:`install`
    (which :func:`setup_data_parallel` does) before training starts.

    ``after_backward``: one allreduce (per dtype) of all parameter gradients;
    ``after_step``: with ``bn="local"``, the shard-weighted mean of the BatchNorm
    running statistics; ``epoch_end``: the whole batch's training loss, accuracy
    and images/s in the record, rank 0's schedule broadcast, and a check that
    the weights are still the same on every rank.
    """

    def __init__(self, world, reducer, bn="sync", check_every_epoch=True):
        if bn not in BN_RULES:
            raise DistributedError(f"unknown BatchNorm rule {bn!r}; expected 'sync' (global batch "
                                   f"statistics) or 'local' (per-rank statistics)")
        self.world = world
        self.reducer = reducer
        self.bn = bn
        self.check_every_epoch = check_every_epoch
        self.loss = None
        self._sync_bn = []
        self.log = []

    # -- set-up ---------------------------------------------------------------
    def install(self, trainer):
        """Wrap the loss (and the BatchNorm layers for ``bn="sync"``), put this hook
        first among the trainer's hooks, refuse batches some rank would get no image
        of, and check every rank starts from the same state."""
        w = self.world
        self._check_split(trainer)
        self.loss = _ShardLoss(trainer.loss_fn, w)
        trainer.loss_fn = self.loss
        if self.bn == "sync":
            self._sync_bn = [_SyncBatchNorm(layer, self.reducer) for _, layer in
                             _batch_norm_layers(trainer.model)]
        if self not in trainer.hooks:
            trainer.hooks.insert(0, self)
        self.check_same_state(trainer, "at start")
        return self

    def _check_split(self, trainer):
        p = self.world.size
        b = trainer.cfg.batch_size
        loader = trainer.train_loader
        n = len(loader.dataset)
        last = n - (len(loader) - 1) * b if len(loader) else 0
        smallest = min(b, last) if len(loader) else 0
        if smallest < p:
            which = (f"the batch size is {b}" if b < p else
                     f"the last batch of every epoch has {last} images ({n} training images, "
                     f"batch size {b})")
            raise DistributedError(
                f"--data-parallel: every rank needs at least one image of each global batch, but "
                f"{which} and there are {p} ranks. Use a batch size of at least {p} whose remainder "
                f"({n} mod batch size) is 0 or at least {p}, fewer ranks, or --limit.")

    def describe(self, trainer):
        p, b = self.world.size, trainer.cfg.batch_size
        shares = [(r + 1) * b // p - r * b // p for r in range(p)]
        share = f"{shares[0]}" if len(set(shares)) == 1 else f"{min(shares)}-{max(shares)}"
        n_bn = len(_batch_norm_layers(trainer.model))
        bn = ("no BatchNorm layers" if not n_bn else
              "synchronised BatchNorm (global-batch statistics)" if self.bn == "sync" else
              "per-rank BatchNorm statistics (running statistics averaged every step)")
        nbytes = sum(int(p_.size) * p_.dtype.itemsize for _, p_, _ in trainer.model.named_parameters())
        return (f"data-parallel: {p} ranks ({self.world.library}); global batch {b} = {share} images "
                f"per rank; {bn}; allreduce: {self.reducer.reason}; {nbytes / 2**20:.1f} MiB of "
                f"gradients summed per step")

    def check_same_state(self, trainer, when, repair=False):
        """Compare every rank's state with rank 0's (hashes, :func:`state_digests`).

        A difference raises :class:`DistributedError` naming the entries; with
        ``repair`` (used after every epoch, where only an MPI library whose
        allreduce gives ranks results differing in the last bit could cause one)
        rank 0 warns and broadcasts its weights, buffers and momentum instead.
        Returns the number of ranks that differed."""
        mine = state_digests(trainer)
        everyone = self.world.comm.allgather(mine)
        ref = everyone[0]
        bad = [r for r, d in enumerate(everyone) if d != ref]
        if not bad:
            return 0
        r = bad[0]
        keys = sorted(set(everyone[r]) | set(ref))
        diff = [k for k in keys if everyone[r].get(k) != ref.get(k)]
        shown = ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        structural = [k for k in diff if not k.startswith(("features.", "classifier.", "momentum_buffer."))]
        if repair and not structural:
            if self.world.is_main:
                print(f"warning: data-parallel {when}: rank {r} drifted from rank 0 in {len(diff)} "
                      f"arrays ({shown}); copying rank 0's state to every rank", file=sys.stderr,
                      flush=True)
            self._broadcast_state(trainer)
            return len(bad)
        raise DistributedError(
            f"data-parallel {when}: rank {r}'s state differs from rank 0's in {len(diff)} "
            f"entries ({shown}). Every rank must start from the same seed, configuration "
            f"and checkpoint (same --seed, same --resume file, same code and dtype).")

    def _broadcast_state(self, trainer):
        comm = self.world.comm
        model, opt = trainer.model, trainer.optimizer
        arrays = [p for _, p, _ in model.named_parameters()] + [b for _, b in model.named_buffers()]
        arrays += [opt.buffers[k] for k in sorted(opt.buffers)]
        for a in arrays:
            host = np.ascontiguousarray(backend.to_host(a))
            comm.Bcast(host, root=0)
            a[...] = host if not backend.is_device_array(a) else backend.to_device(host)

    # -- the hooks --------------------------------------------------------------
    def after_backward(self, trainer, step):
        grads = []
        for name, p, g in trainer.model.named_parameters():
            if g is None:
                raise RuntimeError(f"data-parallel: parameter {name} has no gradient after backward")
            grads.append(g)
        self.reducer.sum_grouped(grads, key="grads")

    def after_step(self, trainer, step, loss):
        if self.bn != "local" or self.world.size == 1:
            return
        bufs = [b for _, b in trainer.model.named_buffers()]
        if not bufs:
            return
        w = bufs[0].dtype.type(self.loss.n_local / self.loss.n_global)
        for b in bufs:
            b *= w
        self.reducer.sum_grouped(bufs, key="bn-buffers")

    def epoch_end(self, trainer, record):
        comm = self.world.comm
        seen = self.loss.seen if self.loss is not None else 0
        local = np.array([record["train_loss"] * seen if seen else 0.0,
                          record["train_acc"] * seen if seen else 0.0, float(seen)])
        total = np.empty_like(local)
        comm.Allreduce(local, total, op=self.world.MPI.SUM)
        if total[2] > 0:
            record["train_loss"] = float(total[0] / total[2])
            record["train_acc"] = float(total[1] / total[2])
            record["images_per_s"] = float(total[2]) / max(record["time_s"], 1e-9)
        if self.loss is not None:
            self.loss.seen = 0
        # Rank 0's validation decides the schedule: the same on every rank by construction.
        state = comm.bcast(trainer.schedule.state_dict(), root=0)
        if not self.world.is_main:
            trainer.schedule.load_state_dict(state)
        if self.check_every_epoch:
            self.check_same_state(trainer, f"after epoch {record['epoch']}", repair=True)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------

def _pin_gpu(world, cfg):
    """On the GPU backend, give each rank of a host its own GPU (local rank modulo
    the number of visible GPUs), before any array is allocated."""
    if cfg.device != "gpu":
        return None
    dev = backend.use("gpu")
    xp = dev.xp
    n = xp.cuda.runtime.getDeviceCount()
    index = world.local_rank % n
    xp.cuda.Device(index).use()
    return index


def _load_data(world, cfg):
    """Rank 0 loads (and, if needed, downloads) the data first, then the others read
    it from the cache: no concurrent downloads into one folder."""
    from .train import prepare_data
    data = None
    if world.is_main:
        data = prepare_data(cfg)
    world.comm.Barrier()
    if not world.is_main:
        data = prepare_data(cfg)
    return data


def _pick(value, env, default, allowed, what):
    v = (value or os.environ.get(env) or default).strip().lower()
    if v not in allowed:
        raise DistributedError(f"unknown {what} {v!r} ({env}); expected one of {', '.join(allowed)}")
    return v


def setup_data_parallel(cfg, hooks=(), resume=None, data=None, bn=None, allreduce=None, world=None):
    """Build this rank's :class:`tinyvgg.train.Trainer` for data-parallel training
    and install the :class:`DataParallel` hook. Returns the trainer (``.run()``
    trains; ``trainer.data_parallel`` is the hook).

    ``cfg``: a :class:`tinyvgg.train.TrainConfig` (``batch_size`` is the global
    batch); ``resume``: a run folder or checkpoint (from any number of ranks);
    ``data``: the dict of :func:`tinyvgg.train.prepare_data` (tests pass synthetic
    data); ``bn``: ``"sync"`` or ``"local"``; ``allreduce``: see :class:`Reducer`;
    ``world``: a :class:`World` (default :func:`connect`).
    """
    from .train import Trainer, resume_config

    world = world or connect()
    bn = _pick(bn, "TINYVGG_DP_BN", "sync", BN_RULES, "BatchNorm rule")
    cfg, state = resume_config(cfg, resume)
    gpu = _pin_gpu(world, cfg)
    if data is None:
        data = _load_data(world, cfg)
    trainer = Trainer(cfg, hooks=hooks, shard=(world.rank, world.size), data=data)
    trainer.setup(resume_state=state)
    reducer = Reducer(world, backend.device(), mode=allreduce)
    hook = DataParallel(world, reducer, bn=bn)
    hook.install(trainer)
    trainer.data_parallel = hook
    if world.is_main:
        where = f"; rank r uses GPU local_rank % {backend.device().xp.cuda.runtime.getDeviceCount()}" \
            if gpu is not None else ""
        print(hook.describe(trainer) + where, flush=True)
    return trainer


def train_data_parallel(cfg, hooks=(), resume=None, data=None, bn=None, allreduce=None):
    """What ``python -m tinyvgg train --data-parallel`` runs on every rank. Returns
    the exit status: 0 on success, 2 (with the reason on stderr) when MPI is
    missing or the run was not started by an MPI launcher. A rank that fails ends
    the whole job through ``MPI_Abort`` (see :func:`guarded`)."""
    try:
        world = connect()
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def work():
        trainer = setup_data_parallel(cfg, hooks=hooks, resume=resume, data=data, bn=bn,
                                      allreduce=allreduce, world=world)
        trainer.run()
        return 0

    return guarded(world, work)


# --------------------------------------------------------------------------
# Traffic per step (used by benchmarks/bench_distributed.py)
# --------------------------------------------------------------------------

def allreduce_payload_bytes(name, num_classes=1000, input_size=224, width=1.0, hidden=4096,
                            batch_norm=False, itemsize=4):
    """Bytes of gradients one step sums across the ranks for a VGG configuration
    (every learnable scalar once, ``itemsize`` bytes each)."""
    from .models.vgg import count_params
    return count_params(name, num_classes=num_classes, input_size=input_size, width=width,
                        batch_norm=batch_norm, hidden=hidden) * itemsize


def ring_allreduce_bytes_per_rank(payload, ranks):
    """Bytes each rank sends (and receives) in a ring allreduce of ``payload``
    bytes over ``ranks`` ranks: ``2 (P - 1) / P * payload``."""
    return 0 if ranks <= 1 else 2 * (ranks - 1) * payload / ranks


# --------------------------------------------------------------------------
# python -m tinyvgg.distributed
# --------------------------------------------------------------------------

def _info():
    try:
        world = connect(require_launcher=False)
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    aware, why = mpi_cuda_aware()
    if world.is_main:
        import mpi4py
        print(f"mpi4py {mpi4py.__version__}; MPI library: {world.library}; world size {world.size}")
        print(f"launched by an MPI launcher: {_launched()}; CUDA-aware MPI: {aware} ({why})")
        print(f"GPU backend available: {backend.gpu_available()}")
    return 0


def main(argv=None):
    """``python -m tinyvgg.distributed [train options]``: the same as
    ``python -m tinyvgg train [train options] --data-parallel``;
    ``python -m tinyvgg.distributed --info`` prints what MPI this process gets."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--info"]:
        return _info()
    from .cli import main as cli_main
    if argv[:1] == ["train"]:
        argv = argv[1:]
    if "--data-parallel" not in argv:
        argv.append("--data-parallel")
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
