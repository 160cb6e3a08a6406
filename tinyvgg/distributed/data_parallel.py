"""Data-parallel training, as in section 3.3 of the paper: P ranks (processes,
one per GPU) each take a share of every batch, compute its gradient, and one
allreduce after the backward pass sums the shares, so every rank makes the step
one process would make on the whole batch::

    mpirun -n 4 python -m tinyvgg train --model vgg16 --batch-size 256 ... --data-parallel

:class:`DataParallel` is the :class:`tinyvgg.train.Trainer` hook that does it
(its ``after_backward`` is the whole idea); :func:`setup_data_parallel` builds a
rank's trainer with it. The MPI plumbing is in :mod:`~tinyvgg.distributed.mpi`
and :mod:`~tinyvgg.distributed.reducer`; the package docstring says the rest
(BatchNorm, the GPU, files and failures).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from .. import backend
from ..layers import BatchNorm1d, BatchNorm2d
from .mpi import DistributedError, connect, guarded
from .reducer import Reducer

__all__ = ["DataParallel", "setup_data_parallel", "train_data_parallel", "state_digests", "BN_RULES",
           "share_cores", "THREAD_VARS", "allreduce_payload_bytes", "ring_allreduce_bytes_per_rank"]

BN_RULES = ("sync", "local")


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
        self.log = []

    # -- the paper's idea: after backward, one allreduce sums the ranks' gradients --
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

    # -- set-up ---------------------------------------------------------------
    def install(self, trainer):
        """Wrap the loss (and the BatchNorm layers for ``bn="sync"``), put this hook
        first among the trainer's hooks, refuse batches some rank would get no image
        of, and check every rank starts from the same state."""
        w = self.world
        self._check_split(trainer)
        self.loss = _ShardLoss(trainer.loss_fn, w)
        trainer.loss_fn = self.loss
        if self.bn == "sync":  # BatchNorm's own maths, its sums taken over the global batch
            trainer.model.set_batch_norm_reduction(self._sum_over_ranks)
        if self not in trainer.hooks:
            trainer.hooks.insert(0, self)
        self.check_same_state(trainer, "at start")
        return self

    def _sum_over_ranks(self, s):
        self.reducer.sum_([s])

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




def _batch_norm_layers(model):
    return [(name, layer) for name, layer in model.named_layers()
            if isinstance(layer, (BatchNorm1d, BatchNorm2d))]


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


# Environment variables by which a user sets the threads of each process themselves.
THREAD_VARS = ("TINYVGG_OP_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def share_cores(world, gpu=None, environ=None):
    """On the CPU, give this rank ``world.cores`` threads (its share of the host's
    cores: workers and BLAS, see :func:`tinyvgg.ops.cpu.parallel.set_threads`),
    unless one of ``THREAD_VARS`` is set in ``environ`` (default ``os.environ``),
    whose setting is then kept. Without this, every one of P ranks on a
    host would run a worker and a BLAS thread per core: P times more threads than
    cores. Measured on a 2-core AMD EPYC (Zen 5), VGG-11-BN width 1/4 on CIFAR-10
    class folders: 2 ranks of 1 thread each train 1.53x / 1.22x as many images per
    second as one process of 2 threads at batch 64 / 128
    (``benchmarks/results/zen5_2026-12-03/bench_train_loop.md``). Returns what was
    done, in words, for the run's first line."""
    environ = os.environ if environ is None else environ
    if gpu is not None:
        return "one GPU per rank"
    chosen = [f"{v}={environ[v]}" for v in THREAD_VARS if environ.get(v, "").strip()]
    if chosen:
        return f"threads per rank as set by {', '.join(chosen)}"
    from ..ops.cpu import parallel
    parallel.set_threads(world.cores)
    return (f"{world.cores} thread{'s' if world.cores > 1 else ''} per rank "
            f"({world.local_size} rank{'s' if world.local_size > 1 else ''} on this host)")


def _load_data(world, cfg):
    """Rank 0 loads (and, if needed, downloads) the data first, then the others read
    it from the cache: no concurrent downloads into one folder."""
    from ..train import prepare_data
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


def setup_data_parallel(cfg, hooks=(), resume=None, data=None, bn=None, allreduce=None, world=None,
                        hooks_for=None):
    """Build this rank's :class:`tinyvgg.train.Trainer` for data-parallel training
    and install the :class:`DataParallel` hook. Returns the trainer (``.run()``
    trains; ``trainer.data_parallel`` is the hook).

    ``cfg``: a :class:`tinyvgg.train.TrainConfig` (``batch_size`` is the global
    batch); ``resume``: a run folder or checkpoint (from any number of ranks);
    ``data``: the dict of :func:`tinyvgg.train.prepare_data` (tests pass synthetic
    data); ``bn``: ``"sync"`` or ``"local"``; ``allreduce``: see :class:`Reducer`;
    ``world``: a :class:`World` (default :func:`connect`); ``hooks_for``: as for
    :func:`tinyvgg.train.train` (hooks the settings ask for, such as ``--doctor``).
    """
    from ..train import Trainer, resume_config

    world = world or connect()
    bn = _pick(bn, "TINYVGG_DP_BN", "sync", BN_RULES, "BatchNorm rule")
    cfg, state = resume_config(cfg, resume)
    hooks = list(hooks) + (list(hooks_for(cfg)) if hooks_for is not None else [])
    gpu = _pin_gpu(world, cfg)
    threads = share_cores(world, gpu)
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
        print(hook.describe(trainer) + where + f"; {threads}", flush=True)
    return trainer


def train_data_parallel(cfg, hooks=(), resume=None, data=None, bn=None, allreduce=None, hooks_for=None):
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
                                      allreduce=allreduce, world=world, hooks_for=hooks_for)
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
    from ..models.vgg import count_params
    return count_params(name, num_classes=num_classes, input_size=input_size, width=width,
                        batch_norm=batch_norm, hidden=hidden) * itemsize


def ring_allreduce_bytes_per_rank(payload, ranks):
    """Bytes each rank sends (and receives) in a ring allreduce of ``payload``
    bytes over ``ranks`` ranks: ``2 (P - 1) / P * payload``."""
    return 0 if ranks <= 1 else 2 * (ranks - 1) * payload / ranks
