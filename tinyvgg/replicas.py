"""Data parallelism on one machine's cores: the model replicated in helper
processes, each replica taking a contiguous share of every batch.

This is section 3.3 of the paper (each of four GPUs took a share of the batch,
the gradients were summed, and the step was the one a single GPU would have made
on the whole batch) with a CPU's cores in place of the GPUs, as MPI data-parallel
training (:mod:`tinyvgg.distributed`) does across ranks, but started by the
training itself::

    replicas = Replicas(model, SoftmaxCrossEntropy(), n=2, max_batch=128)
    logits, loss = replicas.forward_backward(x, y)   # x (N, C, H, W), y (N,)
    optimizer.step()                                  # the model's grads: the whole batch's
    replicas.close()

Why processes: the ops already split each layer's work over worker threads
(:mod:`tinyvgg.ops.cpu.parallel`), which pays a hand-off to the other core per
op, and threads that each ran a whole replica measured little faster (0.88-0.99
of the worker threads' step time): every NumPy call takes Python's global
interpreter lock, and a narrow network's step is thousands of short calls.
Separate processes have no shared lock. Measured on a
2-core AMD EPYC (Zen 5), VGG-11-BN width 1/4, batch 64 (2026-12-03): one core's
step 61 ms, the worker threads' 51 ms, two threads each stepping a batch of 32
side by side 60-69 ms, two processes each stepping a batch of 32 side by side
34-40 ms. ``benchmarks/bench_train.py`` times the step on replicas against
PyTorch's (there, 2 replicas took VGG-11 width 1/4 from 1.45x to 1.12x PyTorch's
time, width 1 from 1.21x to 1.00x), ``benchmarks/bench_train_loop.py`` the whole
``train`` loop, which gains less (``benchmarks/README.md`` says why).

A step (:meth:`Replicas.forward_backward`)
------------------------------------------
1. The batch is cut into ``n`` contiguous shares ``x[r*N//n : (r+1)*N//n]``.
   Replica 0 is the model itself, on the calling thread with every op on that
   thread alone (:func:`tinyvgg.ops.cpu.parallel.one_core`); replica ``r`` >= 1
   runs in its own process with one thread. The model's parameter arrays are
   moved into memory the processes share at the first step (SGD updates them in
   place there; an array the model replaces later is moved at the next step), and
   every step copies each helper's images there.
2. Each replica runs the forward pass, the loss and the backward pass of its
   share. BatchNorm is synchronised: its per-channel sums go through the layer's
   ``reduce`` seam (the one MPI training uses) to replica 0, which adds them in
   replica order and hands every replica the total. So every replica normalises
   with the whole batch's mean and variance. The running statistics are updated
   once, by the model; the helpers' copies are never read. These meetings (three
   per BatchNorm layer and step) pass through the shared memory where the machine
   allows it, else as messages on the socket (see ``SHARED_MEETINGS``).
3. Each replica's loss gradient is scaled by ``N_r / N``, so the replicas'
   parameter gradients *sum* to the gradient of the mean loss over the batch;
   the helpers' come back through shared memory (their fully connected layers
   write them there directly, :attr:`tinyvgg.layers.Layer.grads_into`; the other
   layers' are copied there after the backward pass) and are added into the
   model's ``grads`` in replica order.
4. Dropout: replica ``r`` draws its masks from a generator of its own
   (:func:`tinyvgg.backend.thread_rng`), seeded by one draw per replica from the
   host generator, so a run is reproducible.

The result is the whole batch's step up to rounding (BatchNorm's sums are taken
in float64 and the gradient is a sum of ``n`` partial sums;
``tests/test_replicas.py`` checks it in float64), except for the dropout masks,
which are other draws from the same distribution.

Failures: a replica that raises makes the step raise its error (its type and
message), after every other replica has stopped (a waiting replica is told to
abort); a helper process that dies is a :class:`ReplicaError`; the helpers end
with the training process. Model hooks (``model.add_hook``, the training doctor)
see one process only, so a step with hooks runs whole on the model, as does a
batch of fewer than ``n`` images.

Only the CPU backend on POSIX systems (the helpers inherit a shared-memory file
descriptor); :func:`default_replicas` picks how many.
"""

from __future__ import annotations

import copy
import mmap
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection

import numpy as np

from . import backend
from .layers import BatchNorm1d, BatchNorm2d
from .ops.cpu import parallel
from .ops.shapes import memory_order

__all__ = ["Replicas", "ReplicaError", "default_replicas", "MIN_STEP_MACS", "MAX_IMAGE_MACS",
           "MAX_DEFAULT_REPLICAS", "MIN_DEFAULT_SHARE", "MIN_DEFAULT_SHARE_MESSAGES", "SHARED_MEETINGS"]

# default_replicas() uses replicas for steps of at least MIN_STEP_MACS multiply-adds
# (forward pass of the whole batch; below it, a step's hand-offs, about 30 messages of
# tens of microseconds, and the parameter copy are a large part of it) on images of at
# most MAX_IMAGE_MACS each (above it, ImageNet-size inputs, every layer is large enough
# for the ops' worker threads: VGG-16 at 224 x 224, batch 8, stepped in 3.97 s with them
# and 4.49 s on 2 replicas, benchmarks/results/replicas_zen5_2026-12-03/bench_train.md).
MIN_STEP_MACS = 2e8
MAX_IMAGE_MACS = 2e9
# By default at most 8 replicas (a guess: only 2 cores were measured), each with at least
# 32 images of the batch. In `tinyvgg train` on 2 cores (VGG-11-BN width 1/4, CIFAR-10):
# with BatchNorm's meetings as messages, 2 replicas gave 1.06-1.20x the images/s of the
# worker threads at batch 128 but 0.92-1.06x at batch 64 (four runs,
# benchmarks/results/replicas_zen5_2026-12-03/), whose shares of 32 images meet at every
# BatchNorm layer for less work between; with the meetings in shared memory, 1.10x at
# batch 64 (1.20x with the pinned Haswell kernel) and 0.94x / 1.19x at batch 128
# (benchmarks/results/shared_meetings_zen5_2026-12-03/bench_train_loop.md, 3 noisy rounds).
# Where the meetings stay messages (not x86: SHARED_MEETINGS), 64 images each, as measured.
MAX_DEFAULT_REPLICAS = 8
MIN_DEFAULT_SHARE = 32
MIN_DEFAULT_SHARE_MESSAGES = 64
# glibc's allocator in the helpers: arrays up to 32 MB from the heap, and freed memory kept
# for the next step rather than handed back to the system (and faulted in again, page by
# page). A helper frees and allocates the same arrays every step. Measured, VGG-11-BN
# width 1/4 batch 64 on 2 replicas (2-core Zen 5): the split step's median 54.7 -> 49.1 ms
# over 7 alternating pairs of runs, 6 of them faster. Variables the user set are kept.
_HELPER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
# BatchNorm's meetings through the shared memory: each helper writes its sums into a slot
# of its own and then the meeting's number into its flag, and replica 0, polling the flag,
# adds the slots and hands the total back the same way. A poll of memory takes well under
# a microsecond where a message on the socket takes 36 us there and back (2-core Zen 5).
# Measured there, VGG-11-BN width 1/4 batch 64 on 2 replicas, blocks alternating in one
# process (`benchmarks/bench_switches.py --switches shared_meetings --rounds 16`,
# benchmarks/results/shared_meetings_zen5_2026-12-03/): the step 53.6 -> 47.2 ms (0.88x),
# 0.91x with the pinned Haswell kernel. A replica that has waited a while yields its core
# between polls (for runs with more replicas than cores). The flag must be seen
# after the sums it announces: x86 processors keep one core's stores in order for the
# others (total store order; the sums, a few KB, are copied with ordinary stores, not the
# streaming ones large copies may use); others (ARM) may not, and use the messages.
SHARED_MEETINGS = platform.machine().lower() in {"x86_64", "amd64", "x86", "i386", "i686"}
# The helpers' fully connected layers write their gradients straight into the shared
# memory replica 0 reads them from (Layer.grads_into) instead of into new arrays copied
# there after the backward pass; False: the copy (kept for benchmarks/bench_switches.py).
# Measured on 2 replicas, blocks alternating in one process (`bench_switches.py --switches
# grads_in_place --rounds 10`, benchmarks/results/grads_in_place_zen5_2026-12-03/): VGG-11
# width 1 (fully connected layers of 4096 units, 76 MB of their gradients a step) 0.96x
# the step time, 0.91x with the pinned Haswell kernel; VGG-11-BN width 1/4 1.05x in that
# run, 0.96-0.98x in three more (0.93x pinned); the others 0.99-1.01x.
GRADS_IN_PLACE = True
_MEETINGS_PER_STEP = 1 << 20  # bound on a step's meetings, for the numbers of _meeting_number
_SPIN_POLLS = 20000  # polls (of a pipe, or shared memory) before a wait sleeps between them
_YIELD_POLLS = 2000  # polls of shared memory before a wait yields its core between polls
_START_TIMEOUT_S = 120


class ReplicaError(RuntimeError):
    """A helper process could not start or ended during a step; the message says which."""


def default_replicas(model, batch_size, world=1):
    """How many replicas ``tinyvgg train`` uses when ``--replicas`` is not given: one
    per worker thread of the ops (:func:`tinyvgg.ops.cpu.parallel.workers`, the
    cores this process uses), at most ``MAX_DEFAULT_REPLICAS`` and at most one per
    ``MIN_DEFAULT_SHARE`` images of the batch (``MIN_DEFAULT_SHARE_MESSAGES`` where
    BatchNorm's meetings are messages: not ``SHARED_MEETINGS``), for a step of at least
    ``MIN_STEP_MACS`` multiply-adds on images of at most ``MAX_IMAGE_MACS`` each, on
    the CPU backend of a POSIX system; else 1 (no replicas): on the GPU, in each
    rank of an MPI run (``world`` > 1: the ranks share the cores already), for the
    small steps of tests and quick runs, and for ImageNet-size images (see the
    constants)."""
    if world > 1 or os.name != "posix" or not backend.device().is_host:
        return 1
    share = MIN_DEFAULT_SHARE if SHARED_MEETINGS else MIN_DEFAULT_SHARE_MESSAGES
    n = min(parallel.workers(), MAX_DEFAULT_REPLICAS, batch_size // share)
    if n < 2 or not hasattr(model, "layer_table"):
        return 1
    per_image = sum(row["macs"] for row in model.layer_table())
    return n if batch_size * per_image >= MIN_STEP_MACS and per_image <= MAX_IMAGE_MACS else 1


def _batch_norms(model):
    return [layer for layer in model.layers if isinstance(layer, (BatchNorm1d, BatchNorm2d))]


# -- shared memory ---------------------------------------------------------------

class _Block:
    """Named arrays carved out of one shared memory mapping, 64-byte aligned:
    ``specs`` is ``[(key, shape, dtype, order)]``, ``order`` the axes from outermost to
    innermost in memory (``range(ndim)``: C-contiguous; a Conv2d's weight is stored
    channels-last, and its gradient and the shared copies of both are stored alike);
    ``fd`` an open file descriptor of the mapping (None: create one, a ``memfd`` where
    Linux has it, else an unlinked temporary file)."""

    def __init__(self, specs, fd=None):
        offsets, size = [], 0
        for _, shape, dtype, _ in specs:
            offsets.append(size)
            size += -(-int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize // 64) * 64
        size = max(size, 64)
        if fd is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("tinyvgg-replicas")
            else:  # pragma: no cover - not Linux
                fd = os.dup(tempfile.TemporaryFile().fileno())
            os.ftruncate(fd, size)
        self.fd = fd
        self.map = mmap.mmap(fd, size)
        self.arrays = {key: np.ndarray([shape[a] for a in order], dtype=dtype, buffer=self.map,
                                       offset=off).transpose(np.argsort(order))
                       for (key, shape, dtype, order), off in zip(specs, offsets)}

    def __getitem__(self, key):
        return self.arrays[key]


def _specs(model, n, capacity):
    """The shared arrays of a run with ``n`` replicas of up to ``capacity`` images
    each: the parameters; BatchNorm's meetings (flags, the total, each helper's sums);
    and for every helper its gradients, images, labels, logits."""
    dtype = model.dtype
    s, c = model.input_size, model.config.get("in_channels", 3)
    k = model.config["num_classes"]
    # each parameter stored in memory as the model stores it: its axes outermost first
    params = [(name, p.shape, memory_order(p)) for name, p, _ in model.named_parameters()]
    specs = [(f"p/{name}", shape, dtype, order) for name, shape, order in params]
    # BatchNorm's meetings (SHARED_MEETINGS): the meeting numbers, one 64-byte row per
    # replica (row 0: the total's); the total; each helper's sums
    slot = max([2 * bn.num_features + 1 for bn in _batch_norms(model)] + [1])
    plain = [("meeting", (n, 8), np.int64), ("total", (slot,), np.float64)]
    plain += [(f"sums{r}", (slot,), np.float64) for r in range(1, n)]
    for r in range(1, n):
        specs += [(f"g{r}/{name}", shape, dtype, order) for name, shape, order in params]
        plain += [(f"x{r}", (capacity, c, s, s), dtype), (f"y{r}", (capacity,), np.int64),
                  (f"z{r}", (capacity, k), dtype)]
    return specs + [(key, shape, dtype, tuple(range(len(shape)))) for key, shape, dtype in plain]


# -- messages ----------------------------------------------------------------------

class _Aborted(Exception):
    """Replica 0 told this helper to stop the step."""


class _HelperFailed(Exception):
    """A helper sent its final message in the middle of a step (replica 0 stops its share)."""


def _receive(conn, alive, who, when="during a training step"):
    """The next message on ``conn``: polled without sleeping at first (a BatchNorm
    total arrives within microseconds of the last share's sums), then with short
    sleeps; ``alive()`` is checked between sleeps, ReplicaError when it says no."""
    polls = 0
    while not conn.poll():
        polls += 1
        if polls > _SPIN_POLLS:
            if conn.poll(0.002):
                break
            if not alive():
                raise ReplicaError(f"{who} ended {when}")
    try:
        return conn.recv()
    except (EOFError, OSError):
        raise ReplicaError(f"{who} ended {when}") from None


_yield_core = getattr(os, "sched_yield", lambda: time.sleep(0))


def _meeting_number(step, count):
    """The flag value of a step's ``count``-th meeting in shared memory: never 0 (a new
    mapping's flags) and never one of an earlier step's, aborted or not."""
    return step * _MEETINGS_PER_STEP + count


def _poll_until(done, check):
    """Poll shared memory until ``done()``: without pause at first (the other side of a
    meeting is usually microseconds away), then yielding the core between polls (more
    replicas than cores: the others need it), and after ``_SPIN_POLLS`` polls sleeping
    between them (a long wait: a replica stopped, a checkpoint being written);
    ``check()`` every 256 polls and at every sleep, which raises to give the wait up."""
    polls = 0
    while not done():
        polls += 1
        if polls > _SPIN_POLLS:
            check()
            time.sleep(0.0005)
        elif polls > _YIELD_POLLS:
            if polls % 256 == 0:
                check()
            _yield_core()
        elif polls % 256 == 0:
            check()


def _portable(e):
    """``e`` if it can be pickled (sent to replica 0), else a RuntimeError with its text."""
    import pickle
    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


# -- a helper process ------------------------------------------------------------

class _HelperSum:
    """A helper's BatchNorm ``reduce(s)``: hand its sums to replica 0, get the total.
    A new step's command, or a stop, instead means replica 0 gave this step up (it was
    interrupted): the step ends, and the command is kept in ``pending``. ``shared``:
    ``(meeting, total, sums, r)``, the arrays of the shared memory's meetings, or None
    (messages)."""

    def __init__(self, conn, parent, shared=None):
        self.conn, self.parent, self.step, self.pending = conn, parent, None, None
        self.shared, self.count = shared, 0  # count: this step's meetings so far

    def __call__(self, s):
        self.count += 1
        if self.shared is not None:  # fast path: through the shared memory
            meeting, total, sums, r = self.shared
            number, k = _meeting_number(self.step, self.count), s.size
            sums[:k] = s
            meeting[r, 0] = number  # after the sums (see SHARED_MEETINGS)
            _poll_until(lambda: meeting[0, 0] == number, self._check)
            s[...] = total[:k]
            return
        self.conn.send(("sums", self.step, s))
        while True:
            msg = _receive(self.conn, lambda: os.getppid() == self.parent, "the training process")
            if msg[0] in ("step", "stop"):
                self.pending = msg
                raise _Aborted()
            if msg[1] == self.step:
                break  # (messages of an aborted earlier step are dropped)
        if msg[0] == "abort":
            raise _Aborted()
        s[...] = msg[2]

    def _check(self):
        """While waiting in shared memory: a message from replica 0 now can only mean that
        it gave this step up (or that it ended: ReplicaError)."""
        if self.conn.poll():
            msg = _receive(self.conn, lambda: os.getppid() == self.parent, "the training process")
            if msg[0] in ("step", "stop"):
                self.pending = msg
                raise _Aborted()
            if msg[0] == "abort" and msg[1] == self.step:
                raise _Aborted()


def _helper_main():
    """A helper process: ``python -c ... SOCKET_FD MEMORY_FD PACKAGE_ROOT`` (started by
    :class:`Replicas`; the command puts PACKAGE_ROOT first on the path and drops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    sock_fd, mem_fd = int(sys.argv[1]), int(sys.argv[2])
    conn = Connection(sock_fd)
    try:
        setup = conn.recv()
    except (EOFError, OSError):
        return  # the training process could not send the model (it says why)
    if not isinstance(setup, dict):
        return  # a stop instead: the same
    parallel.set_threads(1)
    block = _Block(setup["specs"], fd=mem_fd)
    model, loss_fn, r = setup["model"], setup["loss_fn"], setup["rank"]
    grads = []  # (layer, key, where its gradient goes)
    for name, i, key in setup["params"]:
        layer = model.layers[i]
        layer.params[key] = block[f"p/{name}"]
        grads.append((layer, key, block[f"g{r}/{name}"]))
        if setup["grads_in_place"]:  # the layers that can (Linear) write them there themselves
            layer.grads_into = dict(layer.grads_into or {}, **{key: block[f"g{r}/{name}"]})
    shared = (block["meeting"], block["total"], block[f"sums{r}"], r) if setup["shared_meetings"] else None
    reduce = _HelperSum(conn, setup["parent"], shared)
    for bn in _batch_norms(model):
        bn.reduce = reduce
    x, y, z = block[f"x{r}"], block[f"y{r}"], block[f"z{r}"]
    conn.send(("ready",))
    while True:
        try:
            msg, reduce.pending = reduce.pending or conn.recv(), None
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        if msg[0] != "step":
            continue  # an abort that came after this helper had finished its step
        _, step, m, n, seed = msg
        reduce.step, reduce.count = step, 0
        try:
            with backend.thread_rng(seed):
                logits = model.forward(x[:m], train=True)              # (m, K)
                loss = loss_fn.forward(logits, y[:m])
                g = loss_fn.backward()
                g *= g.dtype.type(m / n)                                # grads sum to the batch's
                model.backward(g, input_grad=False)
            for layer, key, out in grads:
                if layer.grads[key] is not out:  # (not written in place: Layer.grads_into)
                    out[...] = layer.grads[key]
            z[:m] = logits
            reply = ("done", step, float(loss))
        except _Aborted:
            reply = ("aborted", step)
        except ReplicaError:
            return  # the training process is gone
        except BaseException as e:  # noqa: BLE001 - sent to replica 0, which raises it
            reply = ("error", step, _portable(e))
        try:
            conn.send(reply)
        except OSError:
            return  # the training process closed the connection


def _stop(procs, conns):
    """End the helpers: a stop message, then a kill for any still running after 10 s."""
    for conn in conns:
        try:
            conn.send(("stop",))
        except OSError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    for conn in conns:
        conn.close()


# -- replica 0: the model ----------------------------------------------------------

class Replicas:
    """``Replicas(model, loss_fn, n, max_batch)``: the step of ``model`` (a
    :class:`tinyvgg.models.VGG` on the CPU backend) and ``loss_fn`` (a
    :class:`tinyvgg.losses.SoftmaxCrossEntropy`) on ``n`` >= 2 replicas: the model
    itself and ``n - 1`` helper processes, started at the first step (0.15-0.2 s
    for a small model on the 2-core test machine) and ended by :meth:`close`. ``max_batch``: the largest batch to
    split (a larger one runs whole).

    :meth:`forward_backward` is a training step's forward and backward passes; the
    module notes say how. ``steps`` counts the steps taken split, ``whole`` those
    taken whole. ValueError for ``n`` < 2, a model off the CPU, or a system
    without ``fork``-style file descriptor passing (not POSIX).
    """

    def __init__(self, model, loss_fn, n, max_batch):
        if isinstance(n, bool) or int(n) != n or n < 2:
            raise ValueError(f"Replicas: n must be a whole number of at least 2 (1 is the model "
                             f"itself), got {n!r}")
        if int(max_batch) < n:
            raise ValueError(f"Replicas: max_batch ({max_batch}) must be at least n ({n})")
        if not all(isinstance(p, np.ndarray) for p in model.parameters()):
            raise ValueError("Replicas: the model's parameters are not NumPy arrays; replicas "
                             "are for the CPU backend (on the GPU, train the model itself)")
        if os.name != "posix":
            raise ValueError("Replicas: helper processes need a POSIX system (Linux, macOS)")
        self.model, self.loss_fn, self.n = model, loss_fn, int(n)
        self.capacity = -(-int(max_batch) // self.n)
        self.steps = self.whole = 0
        self._procs, self._conns, self._block, self._step_id = [], [], None, 0

    def __repr__(self):
        return f"Replicas(n={self.n}, {getattr(self.model, 'name', type(self.model).__name__)})"

    # -- starting and stopping ---------------------------------------------------
    def _start(self):
        model = self.model
        # (name, layer index, key, layer) of every parameter, in named_parameters() order
        self._params = [(f"{lname}.{key}", i, key, layer)
                        for i, (lname, layer) in enumerate(zip(model.layer_names, model.layers))
                        for key in layer.params]
        specs = _specs(model, self.n, self.capacity)
        self._block = _Block(specs)
        self._shared_meetings = SHARED_MEETINGS
        twin = copy.copy(model)  # the structure the helpers rebuild: no parameters, no caches
        twin.layers = []
        for layer in model.layers:
            t = copy.copy(layer)
            t.params, t.grads, t._cache = {}, {}, None
            t.buffers = {k: np.array(v) for k, v in layer.buffers.items()}
            if hasattr(t, "reduce"):
                t.reduce = None
            twin.layers.append(t)
        for attr in ("features", "classifier", "flatten"):  # (they name the model's own layers)
            twin.__dict__.pop(attr, None)
        twin._hooks = ()
        # The helpers import this very package: its folder goes first on their path, before
        # the working directory (which `python -c` puts first, and which may hold another
        # tinyvgg, such as a second checkout); the working directory stays, for modules the
        # model's pickle names.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(_HELPER_MALLOC, **os.environ)
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TINYVGG_OP_THREADS="1")
        for r in range(1, self.n):
            mine, theirs = socket.socketpair()
            cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv.pop()); "
                   "from tinyvgg.replicas import _helper_main; _helper_main()",
                   str(theirs.fileno()), str(self._block.fd), root]
            try:
                proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(), self._block.fd), env=env,
                                        stdin=subprocess.DEVNULL)
            except OSError as e:
                os.close(self._block.fd)
                self.close()
                raise ReplicaError(f"could not start replica process {r}: {e}") from None
            theirs.close()
            conn = Connection(mine.detach())
            self._procs.append(proc)
            self._conns.append(conn)
            try:
                conn.send(dict(specs=specs, model=twin, loss_fn=copy.copy(self.loss_fn), rank=r,
                               parent=os.getpid(), params=[(name, i, key) for name, i, key, _ in self._params],
                               shared_meetings=self._shared_meetings, grads_in_place=GRADS_IN_PLACE))
            except Exception as e:  # noqa: BLE001 - e.g. an attribute of the model that cannot be pickled
                os.close(self._block.fd)
                self.close()
                raise ReplicaError(f"could not hand the model to replica process {r} ({type(e).__name__}: "
                                   f"{e}); train with --replicas 1") from None
        os.close(self._block.fd)  # (the mapping and the helpers hold their own)
        self._finalizer = weakref.finalize(self, _stop, self._procs, self._conns)
        for r, (proc, conn) in enumerate(zip(self._procs, self._conns), start=1):
            try:
                ready = conn.poll(_START_TIMEOUT_S) and _receive(
                    conn, lambda: proc.poll() is None, f"replica process {r}", "while starting")[0] == "ready"
            except ReplicaError:
                ready = False
            if not ready:
                self.close()
                raise ReplicaError(f"replica process {r} did not start within {_START_TIMEOUT_S} s "
                                   f"(its error, if any, is printed above); train with --replicas 1")

    def close(self):
        """End the helper processes (also done when this object is collected and at exit);
        a later step starts new ones."""
        if getattr(self, "_finalizer", None) is not None:
            self._finalizer()
        elif self._conns:
            _stop(self._procs, self._conns)
        self._procs, self._conns, self._block, self._finalizer = [], [], None, None

    # -- a step ------------------------------------------------------------------------
    def _whole_step(self, x, y):
        logits = self.model.forward(x, train=True)
        loss = self.loss_fn.forward(logits, y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.whole += 1
        return logits, loss

    def _send(self, r, msg):
        """Send ``msg`` to helper ``r`` (1-based); ReplicaError if it has ended."""
        try:
            self._conns[r - 1].send(msg)
        except OSError:
            raise ReplicaError(f"replica process {r} has ended (exit status "
                               f"{self._procs[r - 1].poll()}); train with --replicas 1 if it "
                               f"keeps happening") from None

    def _next(self, r):
        """The next message of helper ``r`` (1-based) about the current step."""
        conn, proc = self._conns[r - 1], self._procs[r - 1]
        while True:
            msg = _receive(conn, lambda: proc.poll() is None, f"replica process {r}")
            if len(msg) > 1 and msg[1] == self._step_id:
                return msg

    def _sum_over_replicas(self, s):
        """Replica 0's BatchNorm ``reduce(s)``: its sums plus every helper's, in
        replica order, handed back to every helper."""
        self._meetings += 1
        total = s.copy()
        if self._shared_meetings:  # fast path: through the shared memory
            b, k = self._block, s.size
            meeting, number = b["meeting"], _meeting_number(self._step_id, self._meetings)
            for r in range(1, self.n):
                _poll_until(lambda: meeting[r, 0] == number, lambda: self._check_helper(r))
                total += b[f"sums{r}"][:k]
            b["total"][:k] = total
            meeting[0, 0] = number  # after the total (see SHARED_MEETINGS)
            s[...] = total
            return
        for r in range(1, self.n):
            msg = self._next(r)
            if msg[0] != "sums":
                self._final[r] = msg
                raise _HelperFailed()
            total += msg[2]
        for r in range(1, self.n):
            self._send(r, ("total", self._step_id, total))
        s[...] = total

    def _check_helper(self, r):
        """While waiting for helper ``r`` in shared memory: a message from it now is its
        last word on this step (it failed: _HelperFailed), or its end (ReplicaError)."""
        conn, proc = self._conns[r - 1], self._procs[r - 1]
        if conn.poll():
            msg = _receive(conn, lambda: proc.poll() is None, f"replica process {r}")
            if len(msg) > 1 and msg[1] == self._step_id:
                self._final[r] = msg
                raise _HelperFailed()

    def forward_backward(self, x, y):
        """Forward and backward passes of the batch ``x`` (N, C, H, W) with labels ``y``
        (N,), its shares on the replicas. Afterwards every layer's ``grads`` of the
        model hold the gradient of the mean loss over the whole batch (as
        ``model.backward`` leaves them; no dx for the images). Returns
        ``(logits (N, K), loss)``, the loss the mean over the batch (a float)."""
        n, k = int(y.shape[0]), self.n
        shares = [(r * n // k, (r + 1) * n // k) for r in range(k)]
        image = (self.model.config.get("in_channels", 3), self.model.input_size, self.model.input_size)
        if (n < k or getattr(self.model, "_hooks", ()) or shares[-1][1] - shares[-1][0] > self.capacity
                or tuple(x.shape[1:]) != image or x.dtype != self.model.dtype):
            return self._whole_step(x, y)
        if self._block is None:
            self._start()
        b = self._block
        seeds = backend.host_rng().integers(0, 2**63 - 1, size=k)  # dropout: one generator each
        for name, _, key, layer in self._params:  # the model's parameters live in shared memory
            shared = b[f"p/{name}"]
            if layer.params[key] is not shared:  # (the first step, or the model replaced an array)
                np.copyto(shared, layer.params[key])
                layer.params[key] = shared
        self._step_id += 1
        for r in range(1, k):
            lo, hi = shares[r]
            b[f"x{r}"][:hi - lo] = x[lo:hi]
            b[f"y{r}"][:hi - lo] = y[lo:hi]
            self._send(r, ("step", self._step_id, hi - lo, n, int(seeds[r])))
        self._final = [None] * k
        self._meetings = 0
        error = None
        bns = _batch_norms(self.model)
        for bn in bns:
            bn.reduce = self._sum_over_replicas
        lo, hi = shares[0]
        try:
            with parallel.one_core(), backend.thread_rng(int(seeds[0])):
                logits = self.model.forward(x[lo:hi], train=True)            # (N_0, K)
                loss = self.loss_fn.forward(logits, y[lo:hi])
                g = self.loss_fn.backward()
                g *= g.dtype.type((hi - lo) / n)                           # grads sum to the batch's
                self.model.backward(g, input_grad=False)
        except BaseException as e:  # noqa: BLE001 - raised below, once every helper has stopped
            error = e
        finally:
            for bn in bns:
                bn.reduce = None
        for r in range(1, k):  # every helper's last word on this step
            if error is not None and self._final[r] is None:
                self._send(r, ("abort", self._step_id))
            while self._final[r] is None:
                msg = self._next(r)
                if msg[0] in ("done", "error", "aborted"):
                    self._final[r] = msg
        failed = [m[2] for m in self._final[1:] if m[0] == "error"]
        if error is not None and not isinstance(error, _HelperFailed):
            raise error
        if failed:
            raise failed[0]
        if error is not None:
            raise ReplicaError("a replica process stopped its step without an error") from error
        for r in range(1, k):  # the model's grads += each helper's, in replica order
            for name, _, key, layer in self._params:
                layer.grads[key] += b[f"g{r}/{name}"]
        self.steps += 1
        parts = [logits] + [b[f"z{r}"][:hi - lo].copy() for r, (lo, hi) in enumerate(shares) if r]
        losses = [float(loss)] + [m[2] for m in self._final[1:]]
        return np.concatenate(parts), sum(v * (hi - lo) for v, (lo, hi) in zip(losses, shares)) / n
