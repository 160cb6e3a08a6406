"""Data-parallel training over MPI, as in section 3.3 of the paper.

The paper trained on four GPUs by splitting every batch across them, computing
the gradients of the pieces in parallel and averaging them, and notes that the
result is exactly what one GPU computes on the whole batch. This module does the
same over MPI (through mpi4py)::

    mpirun -n 4 python -m tinyvgg train --model vgg16 --batch-size 256 ... --data-parallel
    python -m tinyvgg mpi-info     # which MPI this process gets, and whether it is CUDA-aware

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
statistics are the same on every rank. The layer's own mathematics does it: its
per-channel sums pass through one reduction (``_BatchNorm._batch_means``), which
``model.set_batch_norm_reduction`` points at the allreduce.
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

Threads on the CPU
------------------
Several ranks on one host share its cores: each rank gets its share
(``World.cores``: its cores divided among the local ranks that may run on them)
as worker threads and BLAS threads, so that 2 ranks on 2 cores run one thread
each instead of two each (:func:`.data_parallel.share_cores`). Setting
``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` or
``TINYVGG_OP_THREADS`` keeps the user's choice instead. On a small machine this
is the fastest way to train: on 2 cores, 2 ranks of one thread each outran one
process of two threads by 1.53x / 1.22x at batch 64 / 128 (VGG-11-BN width 1/4,
CIFAR-10, ``benchmarks/results/zen5_2026-12-03/``), because the small layers of a
narrow network leave a core idle between the pieces one process splits them into.
Without MPI, ``train`` does the same in one command with helper processes
(:mod:`tinyvgg.replicas`, on by default on a multi-core CPU for large enough
batches); the ranks of an MPI run do not add replicas of their own.

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

Where things are
----------------
:mod:`.data_parallel`: the :class:`DataParallel` hook (the paper's idea: one
allreduce after backward), :func:`setup_data_parallel`, :func:`train_data_parallel`.
:mod:`.mpi`: the world, :func:`connect`, :func:`guarded`, :func:`mpi_cuda_aware`.
:mod:`.reducer`: the :class:`Reducer` (MPI, NCCL through the backend, host round trip).
"""

from .data_parallel import (BN_RULES, THREAD_VARS, DataParallel, allreduce_payload_bytes,
                            ring_allreduce_bytes_per_rank, setup_data_parallel, share_cores, state_digests,
                            train_data_parallel)
from .mpi import (INSTALL_HINT, LAUNCH_HINT, DistributedError, World, connect, core_share, guarded, mpi_cuda_aware,
                  mpi_info)
from .reducer import ALLREDUCE_MODES, Reducer

__all__ = ["DistributedError", "World", "connect", "Reducer", "DataParallel", "setup_data_parallel",
           "train_data_parallel", "guarded", "mpi_cuda_aware", "mpi_info", "state_digests",
           "allreduce_payload_bytes", "ring_allreduce_bytes_per_rank", "INSTALL_HINT", "LAUNCH_HINT",
           "BN_RULES", "ALLREDUCE_MODES", "share_cores", "core_share", "THREAD_VARS"]
