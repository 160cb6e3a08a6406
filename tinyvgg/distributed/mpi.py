"""MPI plumbing of data-parallel training: the world (rank, size, local rank), how to
start it (:func:`connect`, with plain-words errors for a missing mpi4py or launcher),
how a failing rank ends the job (:func:`guarded`) and whether the MPI library is
CUDA-aware (:func:`mpi_cuda_aware`). The training itself is in
:mod:`tinyvgg.distributed.data_parallel`."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback

from .. import backend

__all__ = ["DistributedError", "World", "core_share", "connect", "guarded", "mpi_cuda_aware", "mpi_info",
           "INSTALL_HINT", "LAUNCH_HINT"]

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


class DistributedError(RuntimeError):
    """Data-parallel training cannot start or the ranks disagree; the message says why
    and what to do."""


def core_share(mine, everyone):
    """How many cores one process may use: its cores (``mine``, CPU numbers it may
    run on) divided among the processes of its host whose cores overlap them
    (``everyone``: each local process's CPU numbers, this one's included), at
    least 1. Unbound ranks share all cores (2 ranks on 2 cores: 1 each); ranks
    the launcher bound to cores of their own keep them."""
    mine = set(mine)
    sharing = sum(1 for other in everyone if mine & set(other))
    return max(1, len(mine) // max(1, sharing))


def _my_cores():
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


class World:
    """The MPI communicator of a data-parallel run: ``comm``, ``rank``, ``size``,
    ``local_rank`` and ``local_size`` (rank among, and number of, the processes of
    this host), ``cores`` (this rank's share of the host's cores, see
    :func:`core_share`) and ``MPI`` (the mpi4py module). Build it with
    :func:`connect`."""

    def __init__(self, MPI, comm):
        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        try:
            local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            self.cores = core_share(_my_cores(), local.allgather(_my_cores()))
            local.Free()
        except Exception:  # pragma: no cover - very old MPI
            self.local_rank, self.local_size = self.rank, self.size
            self.cores = core_share(_my_cores(), [_my_cores()] * self.size)
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



def mpi_info():
    """Lines saying which MPI this process gets (``python -m tinyvgg mpi-info``): the
    mpi4py and MPI library versions, the world size, whether an MPI launcher started
    the process, whether MPI is CUDA-aware and whether the GPU backend is available.
    Raises :class:`DistributedError` (saying how to install) without mpi4py or MPI.
    Only rank 0 of a launched job gets the lines; the other ranks get []."""
    world = connect(require_launcher=False)
    aware, why = mpi_cuda_aware()
    if not world.is_main:
        return []
    import mpi4py
    return [f"mpi4py {mpi4py.__version__}; MPI library: {world.library}; world size {world.size}",
            f"launched by an MPI launcher: {_launched()}; CUDA-aware MPI: {aware} ({why})",
            f"GPU backend available: {backend.gpu_available()}"]
