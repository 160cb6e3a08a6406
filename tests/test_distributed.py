"""Data-parallel training over MPI (tinyvgg.distributed), the paper's section 3.3.

The claim under test: P ranks that each take a share of every global batch and
average their gradients make exactly the steps one process makes on the whole
batch. The MPI tests launch ``mpiexec -n 2`` (the one installed beside this
Python by the ``mpich`` wheel, else the first on PATH) as a subprocess with a
timeout and skip, saying why, when mpi4py or a launcher is missing.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from tinyvgg import backend

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60  # seconds per mpiexec launch: a hang fails the test instead of blocking CI


# --------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------

def _launcher():
    """``(argv prefix, None)`` for ``mpiexec -n 2``, or ``(None, reason to skip)``."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install mpi4py mpich; see requirements.txt)"
    here = Path(sys.executable).parent
    exe = None
    for name in ("mpiexec", "mpirun"):
        cand = here / name
        if cand.is_file() and os.access(cand, os.X_OK):
            exe = str(cand)
            break
        exe = exe or shutil.which(name)
    if exe is None:
        return None, "no MPI launcher (mpiexec/mpirun) beside this Python or on PATH"
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{exe} --version failed: {e}"
    extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    if extra and hasattr(os, "geteuid") and os.geteuid() == 0:
        extra.append("--allow-run-as-root")
    return [exe, "-n", "2", *extra], None


def _env(**extra):
    env = dict(os.environ)
    for var in list(env):  # a test run from inside an MPI job must not confuse the children
        if var.startswith(("PMI_", "PMIX_", "OMPI_", "MV2_", "HYDRA_", "MPI_LOCAL")):
            del env[var]
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), TINYVGG_DEVICE="cpu")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mpiexec():
    cmd, why = _launcher()
    if cmd is None:
        pytest.skip(why)
    return cmd


def _run(cmd, timeout=TIMEOUT, **env):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO),
                              env=_env(**env))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (a hang):\n"
                    f"stdout: {e.stdout}\nstderr: {e.stderr}")


# --------------------------------------------------------------------------
# The runs: synthetic data and a small VGG without dropout
# --------------------------------------------------------------------------

COMMON = textwrap.dedent('''
    import numpy as np
    from tinyvgg.data import Dataset, EvalTransform, TrainTransform, compute_mean_std
    from tinyvgg.train import TrainConfig

    def synthetic_data(seed=0, n_train=50, n_val=16, size=32, classes=4):
        r = np.random.default_rng(seed)
        def make(n, name):
            y = r.integers(0, classes, n)
            x = r.integers(0, 120, (n, size, size, 3)) + (y * 30)[:, None, None, None]
            return Dataset(x.astype(np.uint8), y, [f"c{k}" for k in range(classes)], name)
        train, val, test = make(n_train, "train"), make(n_val, "val"), make(n_val, "test")
        mean, std = compute_mean_std(train)
        return {"train": train, "val": val, "test": test,
                "train_transform": TrainTransform(size, mean, std, padding=4, flip=True),
                "eval_transform": EvalTransform(size, mean, std), "mean": mean, "std": std,
                "classes": list(train.classes), "input_size": size, "test_split": "test",
                "channels": 3}

    def config(out, **kw):
        # Width 1/16, hidden 32, no dropout, input 32; batch 15 splits 7 + 8 over two ranks
        # and 50 images leave a last batch of 5 (2 + 3): every split is uneven.
        base = dict(model="vgg11", dataset="synthetic", epochs=2, batch_size=15, lr=0.05,
                    momentum=0.9, weight_decay=5e-4, schedule="cosine", width=1 / 16, hidden=32,
                    dropout=0.0, init="glorot", input_size=32, seed=7, out=str(out),
                    progress=False, eval_batch_size=32)
        base.update(kw)
        return TrainConfig(**base)
''')

WORKER = COMMON + textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    from tinyvgg import backend
    from tinyvgg.distributed import (Reducer, connect, guarded, setup_data_parallel,
                                     train_data_parallel)

    out = Path(sys.argv[2])
    scenario = sys.argv[1]
    world = connect()
    r = world.rank

    def save(name, trainer, metrics=None):
        np.savez(out / f"{name}_rank{r}.npz", **trainer.model.state_dict())
        if metrics is not None and r == 0:
            (out / f"{name}_metrics.json").write_text(json.dumps(metrics))

    def run(name, resume=None, **kw):
        # Drawing curves.png takes longer than these trainings: only the first run draws it.
        from tinyvgg import plots
        if name != "plain":
            plots.plot_history = lambda *a, **k: None
        bn = kw.pop("bn", None)
        trainer = setup_data_parallel(config(out / name, **kw), data=synthetic_data(), bn=bn,
                                      resume=resume, world=world)
        save(name, trainer, trainer.run())

    def main():
        if scenario == "train":
            run("plain")                                    # the paper's claim, uneven split
            run("bnsync", batch_norm=True, bn="sync")       # synchronised BatchNorm
            run("bnlocal", batch_norm=True, bn="local", epochs=1)  # per-rank statistics
            run("half", epochs=1, schedule="constant")      # a 2-rank checkpoint after 1 epoch
            run("resumed", resume=out / "single_half", epochs=2)   # resume a 1-process checkpoint
            # The host round trip a GPU without NCCL or CUDA-aware MPI uses, on the stand-in device.
            sys.path.insert(0, os.environ["TINYVGG_REPO"])
            from tests.standin import make_device, StandInArray
            dev = backend.use(make_device())
            red = Reducer(world, dev)
            a = backend.to_device(np.arange(6, dtype=np.float32).reshape(2, 3) * (r + 1))
            b = backend.to_device(np.full(4, r + 1.0, dtype=np.float32))
            backend.reset_transfer_counts()
            red.sum_([a, b], key="t")
            info = {"mode": red.mode, "reason": red.reason, "transfers": backend.transfer_counts(),
                    "a": np.asarray(a).tolist(), "b": np.asarray(b).tolist(),
                    "device_arrays": isinstance(a, StandInArray) and isinstance(b, StandInArray)}
            backend.use("cpu")
            (out / f"standin_rank{r}.json").write_text(json.dumps(info))
        elif scenario == "fail":
            class Boom:
                def after_step(self, trainer, step, loss):
                    if r == 1 and step == 2:
                        raise ValueError("boom from rank 1 at step 2")
            return train_data_parallel(config(out / "fail"), hooks=[Boom()], data=synthetic_data())
        elif scenario == "kill":
            class Die:
                def after_step(self, trainer, step, loss):
                    if r == 1 and step == 2:
                        os.kill(os.getpid(), 9)
            return train_data_parallel(config(out / "kill"), hooks=[Die()], data=synthetic_data())
        return 0

    sys.exit(guarded(world, main))
''')


def _single(cfg, resume=None):
    """One process, the whole batch: the reference the ranks must reproduce (without
    drawing curves.png, which would take most of the time)."""
    from tinyvgg import plots
    from tinyvgg.train import Trainer, resume_config

    ns = {}
    exec(COMMON, ns)
    cfg, state = resume_config(cfg, resume)
    trainer = Trainer(cfg, data=ns["synthetic_data"]()).setup(resume_state=state)
    saved, plots.plot_history = plots.plot_history, lambda *a, **k: None
    try:
        with threadpool_limits(1):  # as the ranks (OMP_NUM_THREADS=1); two threads crawl on busy cores
            metrics = trainer.run()
    finally:
        plots.plot_history = saved
    return trainer.model.state_dict(), metrics, trainer


def _config(out, **kw):
    ns = {}
    exec(COMMON, ns)
    return ns["config"](out, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mpiexec):
    """One ``mpiexec -n 2`` launch that trains every data-parallel scenario."""
    out = tmp_path_factory.mktemp("dp")
    # The 1-process checkpoint the ranks resume (a constant rate: the schedule of a 1-epoch
    # run is not the first half of a 2-epoch run's).
    _single(_config(out / "single_half", epochs=1, schedule="constant"))
    (out / "worker.py").write_text(WORKER)
    proc = _run([*mpiexec, sys.executable, str(out / "worker.py"), "train", str(out)],
                TINYVGG_REPO=str(REPO))
    assert proc.returncode == 0, f"mpiexec failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return SimpleNamespace(out=out, stdout=proc.stdout, stderr=proc.stderr)


def _load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_state_close(got, want, rtol=1e-4, atol=1e-5):
    assert set(got) == set(want)
    worst = max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
    return worst


def _assert_ranks_identical(out, name):
    a, b = _load(out / f"{name}_rank0.npz"), _load(out / f"{name}_rank1.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: rank 1's {k} differs from rank 0's")
    return a


# --------------------------------------------------------------------------
# The paper's claim
# --------------------------------------------------------------------------

@pytest.mark.mpi
def test_two_ranks_make_the_steps_of_one_process_on_the_whole_batch(runs):
    got = _assert_ranks_identical(runs.out, "plain")
    want, metrics, trainer = _single(_config(runs.out / "single_plain"))
    worst = _assert_state_close(got, want)
    assert worst < 1e-5, f"largest difference {worst:g}: more than float32 round-off"
    # ... and the steps were real: the weights moved by far more than the tolerance.
    from tinyvgg.models import vgg
    backend.seed(7)
    fresh = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=32, dropout=0.0,
                init="glorot").state_dict()
    moved = max(float(np.max(np.abs(want[k] - fresh[k]))) for k in fresh)
    assert moved > 1000 * max(worst, 1e-8), (moved, worst)
    assert trainer.global_step == 8  # 2 epochs of ceil(50 / 15) batches
    # The history of the 2-rank run holds the whole batch's loss and accuracy.
    history = json.loads((runs.out / "plain" / "history.json").read_text())
    ref = trainer.history
    assert len(history) == len(ref) == 2
    for h, s in zip(history, ref):
        assert h["train_loss"] == pytest.approx(s["train_loss"], rel=1e-5)
        assert h["train_acc"] == pytest.approx(s["train_acc"], abs=1e-12)
        assert h["val_acc"] == pytest.approx(s["val_acc"], abs=1e-12)
        assert h["lr"] == pytest.approx(s["lr"], rel=1e-12)
    dp_metrics = json.loads((runs.out / "plain_metrics.json").read_text())
    assert dp_metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-12)


@pytest.mark.mpi
def test_only_rank_0_prints_and_writes(runs):
    # Rank 0 wrote the run folder; only one copy of each progress line was printed.
    for name in ["config.json", "history.json", "checkpoint.npz", "metrics.json", "curves.png"]:
        assert (runs.out / "plain" / name).is_file(), name
    # plain and bnsync run epochs 1 and 2, resumed only epoch 2: one line each, not one per rank.
    assert runs.stdout.count("epoch 1/2: train loss") == 2
    assert runs.stdout.count("epoch 2/2: train loss") == 3
    assert runs.stdout.count("data-parallel: 2 ranks") == 5  # once per run, not once per rank
    assert "global batch 15 = 7-8 images per rank" in runs.stdout
    assert "allreduce: MPI_Allreduce on host arrays (CPU backend)" in runs.stdout
    assert "threads per rank as set by OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1" in runs.stdout


# --------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------

@pytest.mark.mpi
def test_synchronised_batch_norm_equals_one_process(runs):
    """bn="sync" (the default): statistics of the whole global batch, so even with
    BatchNorm two ranks equal one process, running statistics included."""
    got = _assert_ranks_identical(runs.out, "bnsync")
    want, _, _ = _single(_config(runs.out / "single_bn", batch_norm=True))
    assert "features.1.running_var" in want
    worst = _assert_state_close(got, want)
    assert worst < 1e-5, worst


@pytest.mark.mpi
def test_per_rank_batch_norm_keeps_ranks_identical(runs):
    """bn="local": each rank normalises with its own shard's statistics (not the
    whole batch's, so the weights differ from one process), and the running
    statistics are the shard-weighted mean over the ranks, the same on both."""
    got = _assert_ranks_identical(runs.out, "bnlocal")
    want, _, _ = _single(_config(runs.out / "single_bnlocal", batch_norm=True, epochs=1))
    assert all(np.all(np.isfinite(v)) for v in got.values())
    assert int(got["features.1.num_batches_tracked"]) == int(want["features.1.num_batches_tracked"]) == 4
    # Per-rank statistics are a different computation: the weights are close, not equal.
    diff = max(float(np.max(np.abs(got[k] - want[k]))) for k in want if k.endswith("weight"))
    assert diff > 1e-5
    assert "per-rank BatchNorm statistics" in runs.stdout


# --------------------------------------------------------------------------
# Resume on another number of ranks
# --------------------------------------------------------------------------

@pytest.mark.mpi
def test_checkpoints_resume_on_any_number_of_ranks(runs):
    full, _, _ = _single(_config(runs.out / "single_full", schedule="constant"))
    # 2 ranks for epoch 1, then 1 process for epoch 2 ...
    resumed_on_one, _, _ = _single(_config(runs.out / "half", epochs=2), resume=runs.out / "half")
    _assert_state_close(resumed_on_one, full)
    # ... and 1 process for epoch 1 (the fixture's), then 2 ranks for epoch 2.
    _assert_state_close(_assert_ranks_identical(runs.out, "resumed"), full)


# --------------------------------------------------------------------------
# The host round trip for device arrays
# --------------------------------------------------------------------------

@pytest.mark.mpi
def test_device_arrays_go_through_the_host_when_there_is_no_nccl(runs):
    for r in (0, 1):
        info = json.loads((runs.out / f"standin_rank{r}.json").read_text())
        assert info["mode"] == "host-roundtrip"
        assert "no NCCL" in info["reason"] and "not CUDA-aware" in info["reason"]
        assert info["device_arrays"]  # the sums are back on the device
        assert info["transfers"] == {"host_to_device": 1, "device_to_host": 1}  # one packed copy each way
        np.testing.assert_array_equal(info["a"], np.arange(6).reshape(2, 3) * 3)
        np.testing.assert_array_equal(info["b"], np.full(4, 3.0))


# --------------------------------------------------------------------------
# Failures end the job
# --------------------------------------------------------------------------

@pytest.mark.mpi
def test_a_rank_that_raises_ends_every_rank_with_its_message(mpiexec, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    proc = _run([*mpiexec, sys.executable, str(tmp_path / "worker.py"), "fail", str(tmp_path)],
                TINYVGG_REPO=str(REPO))
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: ValueError: boom from rank 1 at step 2" in proc.stderr
    assert "ending all 2 ranks" in proc.stderr


@pytest.mark.mpi
def test_a_rank_that_is_killed_ends_the_job(mpiexec, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    proc = _run([*mpiexec, sys.executable, str(tmp_path / "worker.py"), "kill", str(tmp_path)],
                TINYVGG_REPO=str(REPO))
    assert proc.returncode != 0


# --------------------------------------------------------------------------
# Clear errors without MPI (no mpiexec needed)
# --------------------------------------------------------------------------

def test_without_a_launcher_the_error_says_how_to_launch(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tinyvgg", "train", "--data-parallel", "--epochs", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=str(REPO), env=_env())
    assert proc.returncode == 2, proc.stderr
    assert "not started by an MPI launcher" in proc.stderr
    assert "mpirun -n 2" in proc.stderr and "pip install mpi4py mpich" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_without_mpi4py_the_error_says_how_to_install(monkeypatch):
    from tinyvgg import distributed

    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    with pytest.raises(distributed.DistributedError, match="pip install mpi4py mpich"):
        distributed.connect()


@pytest.mark.mpi
def test_a_launcher_and_mpi4py_that_disagree_are_named(mpiexec, tmp_path):
    """The classic mixed-MPI mistake: mpirun of one MPI, mpi4py loading another, so
    every process sees a world of one. Simulated with a launcher variable saying 2."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from tinyvgg.distributed import "
                           "train_data_parallel; from tinyvgg.train import TrainConfig; "
                           "sys.exit(train_data_parallel(TrainConfig()))"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=str(REPO),
                          env=_env(MV2_COMM_WORLD_SIZE="2"))
    assert proc.returncode == 2, proc.stderr
    assert "started 2 processes" in proc.stderr and "sees a world of 1" in proc.stderr


def _fake_trainer(n_train, batch_size):
    from tinyvgg.data import DataLoader

    loader = DataLoader(list(range(n_train)), batch_size)
    return SimpleNamespace(cfg=SimpleNamespace(batch_size=batch_size), train_loader=loader)


@pytest.mark.parametrize("n_train,batch,ok", [(50, 15, True), (50, 1, False), (49, 16, False),
                                              (48, 16, True), (50, 16, True)])
def test_batches_some_rank_gets_no_image_of_are_refused(n_train, batch, ok):
    from tinyvgg.distributed import DataParallel, DistributedError

    hook = DataParallel(SimpleNamespace(size=2), reducer=None)
    trainer = _fake_trainer(n_train, batch)
    if ok:
        hook._check_split(trainer)
    else:
        with pytest.raises(DistributedError, match="every rank needs at least one image"):
            hook._check_split(trainer)


@pytest.mark.parametrize("mine,everyone,want", [
    ([0, 1], [[0, 1], [0, 1]], 1),                      # 2 unbound ranks on 2 cores
    (range(8), [range(8)] * 2, 4),                      # 2 unbound ranks on 8 cores
    ([0, 1, 2, 3], [[0, 1, 2, 3], [4, 5, 6, 7]], 4),    # bound by the launcher: its own 4
    ([0], [[0], [1]], 1),
    ([0, 1], [[0, 1]] * 3, 1),                          # more ranks than cores: still 1
    (range(4), [range(4)], 4),                          # alone on the host
])
def test_each_rank_gets_its_share_of_the_cores(mine, everyone, want):
    from tinyvgg.distributed import core_share

    assert core_share(mine, everyone) == want


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_ranks_sharing_a_host_run_one_thread_per_core_between_them():
    """Two ranks on a 2-core host: each gets 1 worker and 1 BLAS thread (not 2 of each),
    unless the user set the threads; set_threads(None) gives everything back."""
    from tinyvgg.distributed import share_cores
    from tinyvgg.ops.cpu import parallel

    if not _blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library to limit")
    before_workers = parallel.workers()
    # Lift the single-thread BLAS limit earlier tests' ops left (ops put it back when they run):
    # lifted later, it would restore the BLAS thread count of its own time over the one below.
    parallel.set_threads(None)
    before_blas = _blas_threads()
    world = SimpleNamespace(cores=1, local_size=2)
    try:
        with threadpool_limits(limits=3, user_api="blas"):  # a BLAS of 3 threads, as if on 3 cores
            parallel.set_threads(None)
            assert parallel.workers() == 3
            said = share_cores(world, environ={})
            assert said == "1 thread per rank (2 ranks on this host)"
            assert parallel.workers() == 1 and _blas_threads() == [1] * len(_blas_threads())
            parallel.set_workers(1)  # hands back only its own limit: the rank's cap stays
            assert _blas_threads() == [1] * len(_blas_threads())
            said = share_cores(SimpleNamespace(cores=2, local_size=2), environ={})
            assert said == "2 threads per rank (2 ranks on this host)" and parallel.workers() == 2
            parallel.set_threads(None)
            assert parallel.workers() == 3 and _blas_threads() == [3] * len(_blas_threads())
            # The user's own setting is kept and named.
            said = share_cores(world, environ={"OPENBLAS_NUM_THREADS": "2"})
            assert said == "threads per rank as set by OPENBLAS_NUM_THREADS=2"
            assert parallel.workers() == 3
            assert share_cores(world, gpu=0, environ={}) == "one GPU per rank"
    finally:
        parallel.set_threads(None)
        parallel.set_workers(before_workers)
    assert _blas_threads() == before_blas


def test_allreduce_traffic_of_the_paper_networks():
    from tinyvgg.distributed import allreduce_payload_bytes, ring_allreduce_bytes_per_rank

    d = allreduce_payload_bytes("vgg16")
    assert d == 138_357_544 * 4  # VGG-16's 138M parameters in float32
    assert ring_allreduce_bytes_per_rank(d, 1) == 0
    assert ring_allreduce_bytes_per_rank(d, 4) == pytest.approx(1.5 * d)


# --------------------------------------------------------------------------
# Synchronised BatchNorm is the layer's own maths through one reduction
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (6, 4)])
def test_batch_norm_reduction_seam_gives_the_global_batch_statistics(shape):
    """Two identical ranks, simulated: a reduction that doubles the per-channel sums
    (and the count) must give exactly what one process computes on the batch
    concatenated with itself, forward, backward and running statistics."""
    from tinyvgg.layers import BatchNorm1d, BatchNorm2d

    cls = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    r = np.random.default_rng(0)
    x = r.standard_normal(shape)
    dy = r.standard_normal(shape)
    shard, whole = cls(4, dtype=np.float64), cls(4, dtype=np.float64)
    for bn in (shard, whole):
        bn.params["weight"][...] = r.uniform(0.5, 1.5, 4)
    whole.params["weight"][...] = shard.params["weight"]
    calls = []

    def two_ranks(s):
        calls.append(s.size)
        s *= 2

    shard.reduce = two_ranks
    y = shard.forward(x, train=True)
    dx = shard.backward(dy)
    y2 = whole.forward(np.concatenate([x, x]), train=True)
    dx2 = whole.backward(np.concatenate([dy, dy]))
    np.testing.assert_allclose(y, y2[:shape[0]], rtol=1e-12, atol=1e-12)
    # The gradient of the mean loss over the whole batch, for this rank's half of it:
    # the whole-batch dx of the same images (the loss gradients already carry 1/n).
    np.testing.assert_allclose(dx, dx2[:shape[0]], rtol=1e-10, atol=1e-12)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(shard.buffers[k], whole.buffers[k], rtol=1e-12)
    assert calls == [4 + 1, 4 + 1, 2 * 4 + 1]  # mean, variance; the backward's two means
    assert "forward" not in shard.__dict__ and "backward" not in shard.__dict__


def test_data_parallel_points_the_model_batch_norms_at_the_allreduce():
    from tinyvgg.models import vgg

    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, batch_norm=True)
    seen = []
    assert model.set_batch_norm_reduction(seen.append) == 8
    model.forward(np.ones((2, 3, 32, 32), np.float32), train=True)
    assert len(seen) == 16  # mean and variance of each of the 8 BatchNorm layers
    model.set_batch_norm_reduction(None)
    model.forward(np.ones((2, 3, 32, 32), np.float32), train=True)
    assert len(seen) == 16


def test_mpi_info_is_a_subcommand(monkeypatch, capsys):
    """What ``python -m tinyvgg.distributed --info`` printed is ``python -m tinyvgg mpi-info``."""
    from tinyvgg.cli import main

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    assert main(["mpi-info"]) == 2
    assert "pip install mpi4py mpich" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "mpi4py")
    if importlib.util.find_spec("mpi4py") is not None:
        assert main(["mpi-info"]) == 0
        out = capsys.readouterr().out
        assert "world size 1" in out and "CUDA-aware MPI:" in out


def test_nccl_is_reached_through_the_backend():
    """Only tinyvgg.backend imports CuPy: the reducer asks it for NCCL, which host
    arrays never have."""
    import tinyvgg.distributed.reducer as reducer_module

    module, why = backend.nccl(np)
    assert module is None and "not CuPy" in why
    source = Path(reducer_module.__file__).read_text()
    assert "import cupy" not in source and "cupy.cuda" not in source
