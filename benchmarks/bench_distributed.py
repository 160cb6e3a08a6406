"""Data-parallel training over MPI: throughput at P = 1 and 2, allreduce traffic, and scaling.

    python benchmarks/bench_distributed.py            # the full run (about a minute on 2 cores)
    python benchmarks/bench_distributed.py --quick    # a smoke run of a few seconds
    python benchmarks/bench_distributed.py --device gpu

What it measures and writes to ``<out>/bench_distributed.{json,md}``:

1. Traffic: the bytes of gradients one step's allreduce sums for every VGG
   configuration of Table 1, at the paper's width (224 input, 4096 hidden,
   1000 classes) and at this benchmark's width, and what each rank sends in a
   ring allreduce at P = 2, 4, 8 (``2 (P-1)/P`` times the payload).
2. Throughput: ``mpiexec -n P`` with P = 1 and 2 (one BLAS thread per rank), the
   data-parallel training step of a narrow VGG-11 on synthetic data (the real
   :func:`tinyvgg.distributed.setup_data_parallel` code path; data loading left out),
   with the step split into compute (forward + backward of the rank's shard),
   the gradient allreduce (including waiting for the slower rank) and the SGD
   update; P = 1 with two BLAS threads beside it. Plus the MPI allreduce bandwidth
   of this machine (64 MiB, P = 2).
3. VGG-16 at the paper's width: one forward + backward of a 224x224 image and one
   SGD update, timed on this CPU (skipped with --quick).
4. A written estimate of the speed-up on 4 and 8 GPUs, from the model
   ``T(P) = t_img * B / P + t_update + 2 (P-1)/P * S / BW + 2 (P-1) * latency``,
   with the measured compute times and stated interconnect bandwidths, beside
   the paper's 3.75x on 4 GPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np

NAME = "bench_distributed"
PAPER_4GPU_SPEEDUP = 3.75
CONFIG_NAMES = [("A", "vgg11"), ("A-LRN", "vgg11_lrn"), ("B", "vgg13"), ("C", "vgg16_1x1"),
                ("D", "vgg16"), ("E", "vgg19")]

# Stated assumptions of the GPU estimate (not measured here: this machine has no GPU).
GPU_ASSUMPTIONS = {
    "gpu": "NVIDIA GTX Titan Black (the paper's GPU, 2014)",
    "peak_tflops": 5.1,
    "sustained_tflops": 2.0,      # ~40% of peak: 2014-era Caffe/cuBLAS convolutions
    "memory_gb_s": 336.0,         # SGD update is memory bound: 5 passes over the parameters
    "batch": 256,                 # the paper's batch size
    "interconnects": {            # effective bandwidth of the gradient exchange, bytes/s
        "PCIe 3.0 x16 through host memory (2014)": 6e9,
        "PCIe 3.0 x16 peer-to-peer": 12e9,
        "NVLink 4 (H100 class)": 200e9,
    },
    "latency_s": 10e-6,
}
CPU_INTERCONNECTS = {"10 Gb/s Ethernet": 1.25e9, "100 Gb/s InfiniBand": 12.5e9}


# -- 1. traffic -------------------------------------------------------------------

def forward_macs(letter, input_size=224, width=1.0, hidden=4096, num_classes=1000):
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    from tinyvgg.models.vgg import _CONV_RE, CONFIGS, _scale

    c, s, macs = 3, input_size, 0
    for block in CONFIGS[letter]:
        for entry in block:
            m = _CONV_RE.match(entry)
            if m:
                k, f = int(m.group(1)), _scale(int(m.group(2)), width)
                macs += s * s * f * c * k * k
                c = f
            elif entry == "maxpool":
                s //= 2
    d = c * (input_size // 32) ** 2
    return macs + d * hidden + hidden * hidden + hidden * num_classes


def traffic(bench):
    from tinyvgg.distributed import allreduce_payload_bytes, ring_allreduce_bytes_per_rank
    from tinyvgg.models.vgg import count_params

    rows = []
    for letter, name in CONFIG_NAMES:
        for label, kw in (("paper", dict(input_size=224, width=1.0, hidden=4096, num_classes=1000)),
                          ("bench", dict(input_size=bench["input_size"], width=bench["width"],
                                         hidden=bench["hidden"], num_classes=bench["classes"]))):
            params = count_params(name, **kw)
            payload = allreduce_payload_bytes(name, **kw)
            # Synchronised BatchNorm (the _bn variants): 4C + 1 float64 values per BN layer per step.
            bn_channels = count_params(name, batch_norm=True, **kw) - params  # = 2 * sum(C)
            sync_bn = (2 * bn_channels + _n_convs(letter)) * 8
            rows.append({"config": letter, "name": name, "at": label, **kw, "params": params,
                         "payload_bytes": payload, "sync_bn_extra_bytes": sync_bn,
                         "ring_bytes_per_rank": {p: ring_allreduce_bytes_per_rank(payload, p)
                                                 for p in (2, 4, 8)}})
    return rows


def _n_convs(letter):
    from tinyvgg.models.vgg import _CONV_RE, CONFIGS
    return sum(1 for block in CONFIGS[letter] for e in block if _CONV_RE.match(e))


# -- 2. the ranks -------------------------------------------------------------------

def worker(args):
    """One rank of ``mpiexec -n P``: time data-parallel training steps."""
    from tinyvgg import backend
    from tinyvgg.data import Dataset, EvalTransform, TrainTransform, compute_mean_std
    from tinyvgg.distributed import connect, setup_data_parallel
    from tinyvgg.train import TrainConfig

    world = connect()
    s, k = args.input_size, args.classes
    r = np.random.default_rng(0)
    n = args.batch * 2
    y = r.integers(0, k, n)
    x = r.integers(0, 255, (n, s, s, 3)).astype(np.uint8)
    ds = Dataset(x, y, [str(i) for i in range(k)], "synthetic")
    mean, std = compute_mean_std(ds)
    data = {"train": ds, "val": ds, "test": ds, "train_transform": TrainTransform(s, mean, std, padding=4),
            "eval_transform": EvalTransform(s, mean, std), "mean": mean, "std": std,
            "classes": list(ds.classes), "input_size": s, "test_split": "test", "channels": 3}
    out = Path(args.worker_out)
    cfg = TrainConfig(model="vgg11", dataset="synthetic", batch_size=args.batch, width=args.width,
                      hidden=args.hidden, dropout=0.5, init="glorot", input_size=s, seed=0,
                      device=args.device, out=str(out / "run"), progress=False, schedule="constant")
    trainer = setup_data_parallel(cfg, data=data, world=world)
    hook, model, opt, loss_fn = trainer.data_parallel, trainer.model, trainer.optimizer, trainer.loss_fn
    sync = (lambda: backend.xp().cuda.Device().synchronize()) if args.device == "gpu" else (lambda: None)
    xb = backend.to_device(data["train_transform"](x[:args.batch], rng=np.random.default_rng(1)))
    yb = backend.to_device(y[:args.batch])
    lo, hi = world.rank * args.batch // world.size, (world.rank + 1) * args.batch // world.size
    xs, ys = xb[lo:hi], yb[lo:hi]  # this rank's share, as the Trainer slices it
    times = []
    world.comm.Barrier()
    wall0 = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            world.comm.Barrier()
            wall0 = time.perf_counter()
        t0 = time.perf_counter()
        loss_fn.forward(model.forward(xs, train=True), ys)
        model.backward(loss_fn.backward())
        sync()
        t1 = time.perf_counter()
        hook.after_backward(trainer, step)
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if step >= args.warmup:
            times.append((t1 - t0, t2 - t1, t3 - t2))
    world.comm.Barrier()
    wall = time.perf_counter() - wall0
    # MPI allreduce bandwidth and latency of this machine (host buffers).
    bw = lat = None
    if world.size > 1 and not args.quick:
        buf = np.ones(16 * 2**20, np.float32)  # 64 MiB
        ts = []
        for i in range(4):
            world.comm.Barrier()
            t = time.perf_counter()
            world.comm.Allreduce(world.MPI.IN_PLACE, buf)
            ts.append(time.perf_counter() - t)
        bw = 2 * (world.size - 1) / world.size * buf.nbytes / float(np.median(ts[1:]))
        small = np.ones(2, np.float32)
        world.comm.Barrier()
        t = time.perf_counter()
        for i in range(200):
            world.comm.Allreduce(world.MPI.IN_PLACE, small)
        lat = (time.perf_counter() - t) / 200
    everyone = world.comm.gather(times, root=0)
    if world.is_main:
        per_rank = np.array(everyone)  # (P, steps, 3)
        result = {"ranks": world.size, "library": world.library, "batch": args.batch,
                  "steps": args.steps, "wall_s": wall, "images_per_s": args.batch * args.steps / wall,
                  "compute_s": float(np.median(per_rank[:, :, 0].max(axis=0))),
                  "allreduce_s": float(np.median(per_rank[0, :, 1])),
                  "update_s": float(np.median(per_rank[:, :, 2].max(axis=0))),
                  "allreduce_mode": hook.reducer.mode, "allreduce_reason": hook.reducer.reason,
                  "gradient_bytes": sum(int(p.size) * p.dtype.itemsize for p in model.parameters()),
                  "mpi_bandwidth_bytes_s": bw, "mpi_latency_s": lat,
                  "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
        from tinyvgg.fileio import atomic_write_text
        atomic_write_text(out / "result.json", json.dumps(result))
    return 0


def launch(args, ranks, threads):
    mpiexec = C.mpi_launcher()
    if mpiexec is None:
        return None, "no mpiexec beside this Python or on PATH (pip install mpi4py mpich)"
    tmp = Path(tempfile.mkdtemp(prefix="bench_dp_"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=str(C.REPO))
    cmd = [*mpiexec, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--worker-out", str(tmp), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--width", str(args.width), "--hidden", str(args.hidden),
           "--input-size", str(args.input_size), "--classes", str(args.classes),
           "--device", args.device] + (["--quick"] if args.quick else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode != 0:
            return None, f"mpiexec -n {ranks} failed ({proc.returncode}): {proc.stderr[-2000:]}"
        res = json.loads((tmp / "result.json").read_text())
        res["omp_threads_per_rank"] = threads
        return res, None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- 3. VGG-16 at the paper's width ---------------------------------------------------

def vgg16_probe():
    """Time one forward + backward of a 224x224 image and one SGD update of VGG-16
    (D) at the paper's width, in a fresh process with one BLAS thread."""
    code = (
        "import json, time, numpy as np\n"
        "from tinyvgg import backend\nfrom tinyvgg.models import vgg\n"
        "from tinyvgg.losses import SoftmaxCrossEntropy\nfrom tinyvgg.optim import SGD\n"
        "backend.seed(0)\nm = vgg('vgg16', init=None, dropout=0.0)\n"
        "x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)\n"
        "y = np.array([3]); L = SoftmaxCrossEntropy(); opt = SGD(m, 0.01)\nts = []; us = []\n"
        "for i in range(2):\n"
        "    t = time.perf_counter(); L.forward(m.forward(x, train=True), y); m.backward(L.backward())\n"
        "    t1 = time.perf_counter(); opt.step(); t2 = time.perf_counter()\n"
        "    ts.append(t1 - t); us.append(t2 - t1)\n"
        "print(json.dumps({'fwd_bwd_s': min(ts), 'update_s': min(us[1:] or us)}))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(C.REPO))
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env=env, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"VGG-16 probe failed: {e}", file=sys.stderr)
        return None


# -- 4. the scaling model ---------------------------------------------------------------

def step_time(p, t_img, batch, t_update, payload, bandwidth, latency):
    comm = 0.0 if p == 1 else 2 * (p - 1) / p * payload / bandwidth + 2 * (p - 1) * latency
    return t_img * batch / p + t_update + comm, comm


def speedups(t_img, batch, t_update, payload, bandwidth, latency, ranks=(1, 2, 4, 8)):
    t1, _ = step_time(1, t_img, batch, t_update, payload, bandwidth, latency)
    out = {}
    for p in ranks:
        t, comm = step_time(p, t_img, batch, t_update, payload, bandwidth, latency)
        out[p] = {"step_s": t, "comm_s": comm, "speedup": t1 / t, "efficiency": t1 / t / p}
    return out


def bandwidth_for(target, p, t_img, batch, t_update, payload, latency):
    """The effective bandwidth at which the model gives ``target`` speed-up on p ranks."""
    t1 = t_img * batch + t_update
    comm = t1 / target - t_img * batch / p - t_update - 2 * (p - 1) * latency
    return None if comm <= 0 else 2 * (p - 1) / p * payload / comm


# -- main ---------------------------------------------------------------------------------

def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse_suppress())
    p.add_argument("--worker-out", default=None, help=argparse_suppress())
    p.add_argument("--batch", type=int, default=None, help="global batch (default 64; --quick 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; --quick 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--no-vgg16", action="store_true", help="skip the paper-width VGG-16 timing")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 8 if args.quick else 64
    if args.steps is None:
        args.steps = 2 if args.quick else 10
    if args.quick:
        args.width, args.hidden, args.warmup = 1 / 16, 32, 1
    if args.worker:
        return worker(args)

    bench = dict(input_size=args.input_size, width=args.width, hidden=args.hidden, classes=args.classes)
    info = C.machine_info(args.device)
    rows = traffic(bench)
    runs, errors = {}, {}
    for label, ranks, threads in (("P=1", 1, 1), ("P=2", 2, 1), ("P=1, 2 threads", 1, 2)):
        print(f"timing {label} ...", flush=True)
        res, err = launch(args, ranks, threads)
        if res is None:
            errors[label] = err
            print(err, file=sys.stderr)
        else:
            runs[label] = res
    v16 = None if (args.quick or args.no_vgg16) else vgg16_probe()

    # The scaling estimates.
    estimates = []
    base = runs.get("P=1")
    bw_here = (runs.get("P=2") or {}).get("mpi_bandwidth_bytes_s")
    lat_here = (runs.get("P=2") or {}).get("mpi_latency_s") or GPU_ASSUMPTIONS["latency_s"]
    if base:
        t_img = base["compute_s"] / base["batch"]
        payload = base["gradient_bytes"]
        links = dict(CPU_INTERCONNECTS)
        if bw_here:
            links = {"this machine's MPI (shared memory, measured)": bw_here, **links}
        for link, bw in links.items():
            estimates.append({"model": f"VGG-11 w={args.width:g} @{args.input_size}", "compute": "this CPU, 1 thread/rank (measured)",
                              "t_img_s": t_img, "batch": base["batch"], "t_update_s": base["update_s"],
                              "payload_bytes": payload, "link": link, "bandwidth": bw, "latency": lat_here,
                              "speedups": speedups(t_img, base["batch"], base["update_s"], payload, bw, lat_here)})
    d_payload = next(r["payload_bytes"] for r in rows if r["config"] == "D" and r["at"] == "paper")
    d_macs = forward_macs("D")
    if v16:
        for link, bw in CPU_INTERCONNECTS.items():
            estimates.append({"model": "VGG-16 (D) paper width @224", "compute": "this CPU, 1 thread/rank (measured)",
                              "t_img_s": v16["fwd_bwd_s"], "batch": GPU_ASSUMPTIONS["batch"],
                              "t_update_s": v16["update_s"], "payload_bytes": d_payload, "link": link,
                              "bandwidth": bw, "latency": GPU_ASSUMPTIONS["latency_s"],
                              "speedups": speedups(v16["fwd_bwd_s"], GPU_ASSUMPTIONS["batch"], v16["update_s"],
                                                   d_payload, bw, GPU_ASSUMPTIONS["latency_s"])})
    g = GPU_ASSUMPTIONS
    t_img_gpu = 3 * 2 * d_macs / (g["sustained_tflops"] * 1e12)   # forward + backward = 3 forwards
    t_upd_gpu = 5 * d_payload / (g["memory_gb_s"] * 1e9)
    for link, bw in g["interconnects"].items():
        estimates.append({"model": "VGG-16 (D) paper width @224", "compute": f"{g['gpu']}, {g['sustained_tflops']} TFLOP/s sustained (stated)",
                          "t_img_s": t_img_gpu, "batch": g["batch"], "t_update_s": t_upd_gpu,
                          "payload_bytes": d_payload, "link": link, "bandwidth": bw, "latency": g["latency_s"],
                          "speedups": speedups(t_img_gpu, g["batch"], t_upd_gpu, d_payload, bw, g["latency_s"])})
    paper_bw = bandwidth_for(PAPER_4GPU_SPEEDUP, 4, t_img_gpu, g["batch"], t_upd_gpu, d_payload, g["latency_s"])

    payload = {"machine": info, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "benchmark_model": {"model": "vgg11", **bench, "batch": args.batch, "steps": args.steps},
               "traffic": rows, "runs": runs, "errors": errors, "vgg16_cpu": v16,
               "vgg16_forward_macs": d_macs, "gpu_assumptions": g, "estimates": estimates,
               "paper_4gpu_speedup": PAPER_4GPU_SPEEDUP, "bandwidth_matching_paper_bytes_s": paper_bw}
    C.write_results(args.out, NAME, payload, markdown(payload, args))
    return 0


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


def _mib(b):
    return f"{b / 2**20:.1f}" if b >= 2**20 else f"{b / 2**20:.3f}"


def markdown(r, args):
    b = r["benchmark_model"]
    lines = ["# Data-parallel training over MPI (paper section 3.3)", "",
             f"Command: `{r['command']}`", ""] + C.machine_lines(r["machine"]) + [""]
    lines += ["## Allreduce traffic per step", "",
              "Every step sums every parameter's gradient across the ranks once (float32). The payload is "
              "what each rank contributes; a ring allreduce sends (and receives) 2(P-1)/P times it per rank. "
              "Synchronised BatchNorm (the `_bn` variants) adds 4C+1 float64 values per BatchNorm layer.", "",
              f"Paper width: 224x224 input, 4096 hidden, 1000 classes. Benchmark width: width {b['width']:g}, "
              f"{b['input_size']}x{b['input_size']} input, {b['hidden']} hidden, {b['classes']} classes.", ""]
    rows = []
    for t in r["traffic"]:
        rows.append([t["config"], t["at"], f"{t['params']:,}", _mib(t["payload_bytes"]),
                     _mib(t["ring_bytes_per_rank"][2]), _mib(t["ring_bytes_per_rank"][4]),
                     _mib(t["ring_bytes_per_rank"][8]), f"{t['sync_bn_extra_bytes'] / 1024:.1f}"])
    lines += [C.table(["config", "at", "parameters", "payload MiB", "per rank P=2 MiB", "P=4 MiB",
                       "P=8 MiB", "sync-BN extra KiB"], rows), ""]

    lines += ["## Throughput on this machine", "",
              f"VGG-11 at width {b['width']:g}, input {b['input_size']}, hidden {b['hidden']}, dropout 0.5, "
              f"global batch {b['batch']}, synthetic data already on the device (data loading left out), "
              f"{b['steps']} timed steps after warm-up; one `mpiexec -n P` per row. Step parts are medians "
              f"over steps (compute: the slowest rank's forward + backward of its shard; allreduce: rank 0's, "
              f"including any wait for the slower rank).", ""]
    rows = []
    base = r["runs"].get("P=1")
    for label, run in r["runs"].items():
        rows.append([label, run["omp_threads_per_rank"], f"{run['images_per_s']:.0f}",
                     f"{run['images_per_s'] / base['images_per_s']:.2f}x" if base else "n/a",
                     C.fmt_ms(run["compute_s"]), C.fmt_ms(run["allreduce_s"]), C.fmt_ms(run["update_s"]),
                     run["allreduce_mode"]])
    lines += [C.table(["run", "BLAS threads/rank", "images/s", "vs P=1", "compute ms", "allreduce ms",
                       "SGD update ms", "allreduce"], rows), ""]
    for label, err in r["errors"].items():
        lines.append(f"- {label} failed: {err}")
    p2 = r["runs"].get("P=2")
    if p2 and p2.get("mpi_bandwidth_bytes_s"):
        lines += [f"MPI on this machine ({p2['library']}): allreduce of 64 MiB at "
                  f"{p2['mpi_bandwidth_bytes_s'] / 1e9:.2f} GB/s bus bandwidth, a 8-byte allreduce takes "
                  f"{p2['mpi_latency_s'] * 1e6:.1f} us.", ""]
    lines += ["The machine has 2 cores, possibly shared with other jobs, so P = 2 cannot show more than "
              "2x; the P = 1 row with two threads is the other way to use both cores (tinyvgg's worker "
              "threads, BLAS single-threaded in each). Every number here moves from run to run with the "
              "machine's load.", ""]
    t2 = r["runs"].get("P=1, 2 threads")
    if p2 and t2 and base:
        lines += [f"Here two ranks ran {p2['images_per_s'] / base['images_per_s']:.2f}x one rank's images/s "
                  f"and two threads in one process {t2['images_per_s'] / base['images_per_s']:.2f}x: the "
                  f"threads leave {100 * (1 - t2['images_per_s'] / p2['images_per_s']):.0f} % of what two "
                  f"processes get unused.", ""]
    if r["vgg16_cpu"]:
        v = r["vgg16_cpu"]
        gf = 3 * 2 * r["vgg16_forward_macs"] / v["fwd_bwd_s"] / 1e9
        lines += [f"VGG-16 (D) at the paper's width on this CPU, one BLAS thread: forward + backward of one "
                  f"224x224 image {v['fwd_bwd_s']:.2f} s ({gf:.1f} GFLOP/s, counting forward + backward as "
                  f"3 x {2 * r['vgg16_forward_macs'] / 1e9:.1f} GFLOP), SGD update of its 138M parameters "
                  f"{v['update_s']:.2f} s.", ""]

    lines += ["## Estimated scaling to 4 and 8 GPUs", "",
              "Model: with global batch B split over P ranks, a step takes "
              "`T(P) = t_img * B / P + t_update + 2 (P-1)/P * S / BW + 2 (P-1) * latency` "
              "(compute shrinks with P; every rank makes the whole SGD update; a ring allreduce of the S "
              "gradient bytes, not overlapped with the backward pass, as here). Speed-up = T(1) / T(P). "
              "t_img and t_update are measured where the row says so; the GPU rows state their assumptions "
              f"(this machine has no GPU): {r['gpu_assumptions']['gpu']}, {r['gpu_assumptions']['peak_tflops']} "
              f"TFLOP/s peak, {r['gpu_assumptions']['sustained_tflops']} sustained, forward + backward = 3 "
              f"forward passes of {2 * r['vgg16_forward_macs'] / 1e9:.1f} GFLOP, update memory-bound at "
              f"{r['gpu_assumptions']['memory_gb_s']:.0f} GB/s, batch {r['gpu_assumptions']['batch']} as in the paper.", ""]
    rows = []
    for e in r["estimates"]:
        s = e["speedups"]
        rows.append([e["model"], e["compute"], f"{e['t_img_s'] * 1e3:.1f}", e["batch"], e["link"],
                     f"{e['bandwidth'] / 1e9:.2f}", f"{s[2]['speedup']:.2f}x", f"{s[4]['speedup']:.2f}x",
                     f"{s[8]['speedup']:.2f}x", C.fmt_ms(s[4]["comm_s"])])
    lines += [C.table(["model", "compute", "t_img ms", "B", "interconnect", "GB/s", "P=2", "P=4", "P=8",
                       "allreduce ms at P=4"], rows), ""]
    bw = r["bandwidth_matching_paper_bytes_s"]
    gpu_rows = [e for e in r["estimates"] if "stated" in e["compute"]]
    by_link = {e["link"]: e["speedups"] for e in gpu_rows}
    host, p2p = (by_link.get("PCIe 3.0 x16 through host memory (2014)"),
                 by_link.get("PCIe 3.0 x16 peer-to-peer"))
    text = [f"The paper measured **{r['paper_4gpu_speedup']}x on 4 GPUs** (section 3.3)."]
    if bw:
        text.append(f"With the stated Titan Black compute the model gives exactly that at an effective "
                    f"gradient-exchange bandwidth of {bw / 1e9:.1f} GB/s, plausible for gradients exchanged "
                    f"over PCIe 3.0 x16 (15.8 GB/s peak per direction) with copies through host memory.")
    if host and p2p:
        text.append(f"Through host memory at 6 GB/s the model says {host[4]['speedup']:.2f}x on 4 GPUs and "
                    f"{host[8]['speedup']:.2f}x on 8 ({host[8]['efficiency'] * 100:.0f}% efficiency); "
                    f"peer-to-peer at 12 GB/s, {p2p[4]['speedup']:.2f}x and {p2p[8]['speedup']:.2f}x. "
                    f"From 4 to 8 GPUs the compute per GPU halves while each GPU's share of the exchange "
                    f"grows from 1.5 to 1.75 times the 528 MiB of gradients, so efficiency falls; "
                    f"overlapping the allreduce with the backward pass (bucketed allreduce, not done here: "
                    f"the hook runs after the whole backward pass) would hide most of it.")
    base = r["runs"].get("P=1")
    if base:
        text.append(f"The benchmark model moves {base['gradient_bytes'] / 2**20:.1f} MiB per step against "
                    f"{base['compute_s'] * 1e3:.0f} ms of compute per batch of {base['batch']}, so its "
                    f"estimate is bound by compute, not bandwidth, even over 10 Gb/s Ethernet; its P = 2 "
                    f"measurement above is bound by the two shared cores.")
    lines += [" ".join(text)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
