"""Run the chunks of an op on all cores: one worker thread per core, BLAS single-threaded.

Why: a convolution chunk is a copy (im2col), a matrix product and another copy
(folding the product into the output). NumPy's copies run on one core, and
BLAS's own threads split each product and then wait for each other at its end.
On a 2-core machine that leaves one core idle during every copy, and on a busy
machine a product whose second thread is not scheduled stalls. Giving each core
its own chunks instead, with BLAS set to one thread, keeps both cores busy
through copies and products alike, with no synchronisation inside a product.
NumPy releases the GIL in copies, ufuncs and BLAS calls, so plain threads run
in parallel here.

Rules that keep it safe and reproducible:

- Workers only write to disjoint slices of the output (their chunk's images).
- Sums over chunks (dW, db) are kept per chunk and added in chunk order by the
  caller, so the result does not depend on which thread ran which chunk.
- Only NumPy ops use workers; CuPy queues its kernels on the GPU already.

**BLAS runs single-threaded in this process while the workers are on** (set with
threadpoolctl when the first op runs). Every product large enough to share is
cut into one task per core here, so BLAS's own threads have nothing to add; and
left on, they busy-wait after each multi-threaded call, taking a core away from
the workers: measured on a 2-core machine, a VGG-11-BN width-1/4 training step
used 1.9 cores of CPU time for 1.0 of work that way.

``set_workers(n)`` (or the environment variable ``TINYVGG_OP_THREADS``) sets the
number of workers; 1 turns all of this off and gives BLAS its threads back
(chunks run in order on the calling thread, each product on BLAS's threads).
The default is the number of BLAS threads.

Inside ``one_core()`` the ops called from that thread run their chunks in order
on it (BLAS single-threaded): for a thread that is one core's share of a larger
job already, such as the model stepping its share of a batch while the helper
processes of :mod:`tinyvgg.replicas` step theirs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from ...backend import get_array_module

__all__ = ["run", "split", "slices", "sum_in_order", "matmul", "workers", "set_workers", "set_threads",
           "one_core", "MIN_TASK_FLOPS", "MIN_TASK_BYTES"]

MIN_TASK_FLOPS = 25e6  # the smallest product worth handing to another worker thread
MIN_TASK_BYTES = 1 << 19  # the smallest slice of an element-wise pass worth another worker
# The calling thread takes tasks like a worker instead of waiting idle for the workers:
# one hand-off to a worker less per op (run() then uses workers() - 1 pool threads).
# Measured with benchmarks/bench_switches.py (one process, blocks alternating; two runs
# on a 2-core AMD EPYC, when the caller took only the last task): VGG-11 width-1/4 steps
# 0.96-1.01x, width 1 1.02x, within that machine's noise.
# False: every task goes to a worker (kept for that measurement).
CALLER_RUNS_A_TASK = True

_state = {"workers": None, "executor": None, "controller": None, "blas_limit": None, "process_limit": None}
_lock = threading.Lock()
_thread = threading.local()  # .one_core: this thread runs its ops' chunks itself (one_core())


def _default_workers():
    env = os.environ.get("TINYVGG_OP_THREADS", "").strip()
    if env:
        return max(1, int(env))
    ctl = _controller()
    if ctl is None:
        return 1
    blas = [lib.num_threads for lib in ctl.lib_controllers if lib.user_api == "blas"]
    return max(1, min(blas)) if blas else 1


def _controller():
    if _state["controller"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # without it, BLAS threads cannot be limited: run serially
            _state["controller"] = False
        else:
            _state["controller"] = ThreadpoolController()
    return _state["controller"] or None


def workers():
    """Number of worker threads the ops use for NumPy arrays (1 inside :func:`one_core`)."""
    if getattr(_thread, "one_core", False):
        return 1
    if _state["workers"] is None:
        _state["workers"] = _default_workers()
    return _state["workers"]


def set_workers(n):
    """Use ``n`` worker threads (1: run chunks serially with multi-threaded BLAS)."""
    n = max(1, int(n))
    workers()  # the default is read from BLAS before anything limits it
    with _lock:
        _state["workers"] = n
        if _state["executor"] is not None:
            _state["executor"].shutdown(wait=True)
            _state["executor"] = None
        if n == 1:
            _restore_blas()


@contextlib.contextmanager
def one_core():
    """Within the block, every op called from this thread runs its chunks in order
    on this thread, each product on single-threaded BLAS: the thread is one core's
    worth of a larger job (the model stepping its share of a batch beside the
    helper processes of :class:`tinyvgg.replicas.Replicas`), and handing its ops to
    the other cores would only take them from the helpers. Other threads keep the
    worker threads. Nests."""
    if workers() > 1 and _controller() is not None:
        with _lock:  # BLAS stays single-threaded while the workers are on (module notes)
            _single_threaded_blas()
    before = getattr(_thread, "one_core", False)
    _thread.one_core = True
    try:
        yield
    finally:
        _thread.one_core = before


def set_threads(n):
    """Use at most ``n`` cores in this process: ``n`` workers and BLAS capped at ``n``
    threads, kept when ``set_workers(1)`` hands BLAS its threads back.

    For several processes on one host (data-parallel ranks), each given its share
    of the cores: left alone, every rank would start one worker and one BLAS
    thread per core, ``ranks`` times more threads than cores. ``n=None`` lifts
    the cap (BLAS's own thread count again) and restores the default workers.
    """
    with _lock:  # limits come off in the reverse order they went on
        _restore_blas()
        if _state["process_limit"] is not None:
            _state["process_limit"].restore_original_limits()
            _state["process_limit"] = None
    if n is None:
        set_workers(_default_workers())
        return
    n = max(1, int(n))
    ctl = _controller()
    if ctl is not None:
        with _lock:
            _state["process_limit"] = ctl.limit(limits=n, user_api="blas")
    set_workers(n)


def _single_threaded_blas():
    """Limit BLAS to one thread for this process (kept until set_workers(1))."""
    if _state["blas_limit"] is None:
        _state["blas_limit"] = _controller().limit(limits=1, user_api="blas")


def _restore_blas():
    if _state["blas_limit"] is not None:
        _state["blas_limit"].restore_original_limits()
        _state["blas_limit"] = None


def split(work, min_task_work):
    """Into how many tasks to split ``work`` (FLOPs or bytes, whatever the caller
    counts): one per worker, but none smaller than ``min_task_work``. Small ops
    are not split: handing a task to another thread costs tens of microseconds,
    and far more on a busy machine, where a task waits until its thread is
    scheduled."""
    return int(max(1, min(workers(), work // max(1, min_task_work))))


def slices(n, nbytes, min_task_bytes=None):
    """``[(i, start, stop), ...]``: ``range(n)`` (images, rows) cut into one slice
    per worker for a memory-bound pass over ``nbytes`` bytes, none smaller than
    ``min_task_bytes`` (default ``MIN_TASK_BYTES``); one slice when small."""
    parts = split(nbytes, MIN_TASK_BYTES if min_task_bytes is None else min_task_bytes)
    step = -(-n // parts)
    return [(i, r0, min(r0 + step, n)) for i, r0 in enumerate(range(0, n, step))]


def sum_in_order(parts):
    """``parts[0] + parts[1] + ...`` added in list order, into ``parts[0]``: sums of
    per-task results (dW, db, BatchNorm's column sums) that do not depend on which
    thread finished first."""
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total


def run(fn, tasks, xp=None, threads=True):
    """Call ``fn(*task)`` for every task of ``tasks``; return once all are done.

    With ``threads``, more than one worker and NumPy arrays, the tasks run on at
    most ``workers()`` threads at once (BLAS single-threaded, see the module
    notes): each thread takes the next task not yet taken until none is left, and
    the calling thread is one of them (``CALLER_RUNS_A_TASK``) instead of waiting
    idle. So an op with more tasks than cores never has more of them in flight
    than cores (each task's scratch buffers, a 224 x 224 image's columns among
    them, exist once per core). Every task finishes before an exception is raised,
    the exception of the first failing task in ``tasks`` order. Otherwise the tasks
    run in order on the calling thread: a small op, whose tasks cost less than
    handing them to another thread.
    """
    tasks = list(tasks)
    nw = workers()
    if nw == 1 or (xp is not None and xp.__name__ != "numpy") or _controller() is None:
        for t in tasks:
            fn(*t)
        return
    with _lock:
        _single_threaded_blas()
        if threads and len(tasks) > 1 and _state["executor"] is None:
            _state["executor"] = ThreadPoolExecutor(nw, thread_name_prefix="tinyvgg-op")
        ex = _state["executor"]
    if not threads or len(tasks) < 2:
        for t in tasks:
            fn(*t)
        return
    next_task, taken = iter(range(len(tasks))), threading.Lock()
    errors = [None] * len(tasks)

    def take_tasks():  # one thread's loop: the next task not yet taken, until none is left
        while True:
            with taken:
                i = next(next_task, None)
            if i is None:
                return
            try:
                fn(*tasks[i])
            except BaseException as e:  # raised once every task is done
                errors[i] = e
    helpers = min(len(tasks), nw) - (1 if CALLER_RUNS_A_TASK else 0)
    futures = [ex.submit(take_tasks) for _ in range(helpers)]
    if CALLER_RUNS_A_TASK:
        take_tasks()
    wait(futures)
    for f in futures:
        f.result()
    for e in errors:
        if e is not None:
            raise e


def matmul(a, b, out=None):
    """``a @ b`` for 2-D arrays, on the worker threads when it is big enough.

    The product is cut into one block of output rows (or of output columns, when
    there are more of those) per worker; each block is an ordinary single-threaded
    BLAS product writing straight into its slice of ``out``. Small products run
    on the calling thread with single-threaded BLAS (see :func:`run`). Any other
    array module: plain ``a @ b``.
    """
    xp = get_array_module(a, b)
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = xp.empty((m, n), dtype=xp.result_type(a, b))
    tasks = split(2.0 * m * n * k, MIN_TASK_FLOPS)
    if xp.__name__ != "numpy" or workers() == 1:
        return xp.matmul(a, b, out=out)
    rows = m >= n
    size = m if rows else n
    step = -(-size // tasks)

    def block(i0, i1):
        if rows:
            xp.matmul(a[i0:i1], b, out=out[i0:i1])
        else:
            xp.matmul(a, b[:, i0:i1], out=out[:, i0:i1])
    run(block, [(i, min(i + step, size)) for i in range(0, size, step)], xp, threads=tasks > 1)
    return out
