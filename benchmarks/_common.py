"""Helpers shared by the benchmarks: arguments, device, timing, memory, machine record, output.

Nothing here is part of tinyvgg; the package never imports the benchmarks.

Timing rule: on a shared machine absolute times drift from run to run, so every
benchmark times tinyvgg and PyTorch *interleaved* in one loop (tinyvgg, torch,
tinyvgg, torch, ...) after warm-up, and reports medians and the ratio of the
medians. Ratios taken this way are what the targets are stated in.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_x.py` from anywhere
    sys.path.insert(0, str(REPO))

import numpy  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results"


# -- arguments and device ------------------------------------------------------

def mpi_launcher():
    """``[launcher, extra flags...]`` for starting MPI ranks: ``mpiexec`` (else ``mpirun``)
    beside this Python (the mpich wheel's), else the first on PATH; Open MPI's gets
    ``--oversubscribe``. None when there is none."""
    import shutil
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        if (here / name).is_file():
            exe = str(here / name)
            break
    else:
        exe = shutil.which("mpiexec") or shutil.which("mpirun")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []
    return [exe, *extra]


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and repeats: a smoke run of a few seconds")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu (NumPy, PyTorch CPU) or gpu (CuPy, PyTorch CUDA)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the JSON and Markdown results (default {DEFAULT_OUT})")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per measurement (default: chosen from the warm-up time)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    return p


def select_device(name):
    """Switch tinyvgg to ``name``; exit with a clear message when the GPU is unusable."""
    from tinyvgg import backend
    try:
        backend.use(name)
    except RuntimeError as e:  # GPUUnavailableError is a RuntimeError
        sys.exit(f"--device {name}: {e}")
    return backend


def load_torch(device, disabled=False):
    """PyTorch if installed (and usable on ``device``), else None. Never required."""
    if disabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    if device == "gpu" and not torch.cuda.is_available():
        print("PyTorch is installed but sees no CUDA device: its columns read n/a", file=sys.stderr)
        return None
    return torch


def with_torch_threads(torch, fn, n):
    """``fn`` run with PyTorch limited to ``n`` threads (restored afterwards)."""
    def run():
        prev = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            fn()
        finally:
            torch.set_num_threads(prev)
    return run


def torch_variants(torch, fn, device):
    """PyTorch timed two ways on the CPU: its default threads, and one thread.

    On a machine shared with other work, PyTorch's OpenMP threads wait for each
    other at the end of every parallel region, and a small op can take 100x
    longer when one of them is not scheduled; one thread avoids that. Taking the
    faster of the two (per measurement) compares tinyvgg with PyTorch at its best,
    which is the conservative choice. On the GPU: just the default.
    """
    if device == "gpu" or torch.get_num_threads() == 1:
        return {"": fn}
    return {"": fn, "1t": with_torch_threads(torch, fn, 1)}


def start(args):
    """What every benchmark does first: load PyTorch (when installed and wanted),
    build the device synchronisers, and print the machine. Returns
    ``(torch or None, tinyvgg_sync, torch_sync, machine_info)``."""
    torch = load_torch(args.device, args.no_torch)
    if torch is not None and args.quick:
        torch.set_num_threads(1)  # a smoke run: skip PyTorch's slow-on-a-busy-machine threads
    tv_sync, th_sync = synchronizer(args.device, torch)
    info = machine_info(args.device, torch)
    print("\n".join(machine_lines(info)))
    return torch, tv_sync, th_sync, info


def accumulate_time(acc, key, fn):
    """``fn`` wrapped so that the wall time of every call is added to ``acc[key]``
    (the profiles wrap ops and layers with it)."""
    def run(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.perf_counter() - t0
    return run


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def synchronizer(device, torch=None):
    """Functions that wait for queued GPU work (no-ops on the CPU)."""
    if device != "gpu":
        return (lambda: None), (lambda: None)
    from tinyvgg import backend
    cp = backend.xp()
    tv_sync = cp.cuda.Device().synchronize
    th_sync = torch.cuda.synchronize if torch is not None else (lambda: None)
    return tv_sync, th_sync


# -- timing ----------------------------------------------------------------------

def time_once(fn, sync):
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def choose_repeats(seconds_per_call, budget=3.0, lo=3, hi=15):
    """Enough repeats to spend about ``budget`` seconds, within [lo, hi]."""
    if seconds_per_call <= 0:
        return hi
    return int(max(lo, min(hi, round(budget / seconds_per_call))))


def interleaved(fns, repeats=None, warmup=1, budget=3.0, syncs=None, pause=0.0):
    """Time the callables of ``fns`` (name -> fn) in turn, ``repeats`` rounds.

    Each round calls every function once, in order, so all of them see the same
    machine load. Returns ``{name: [seconds, ...]}``. ``syncs`` maps names to a
    function that waits for the device (GPU) after each call. ``pause`` seconds
    of sleep between calls let spinning BLAS/OpenMP worker threads of one library
    go idle before the other library runs.
    """
    syncs = syncs or {}
    nosync = lambda: None  # noqa: E731
    first = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            first[name] = time_once(fn, syncs.get(name, nosync))
    if repeats is None:
        repeats = choose_repeats(sum(first.values()) or 1e-3, budget)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if pause:
                time.sleep(pause)
            times[name].append(time_once(fn, syncs.get(name, nosync)))
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio(a, b):
    if a is None or b is None or not b or a != a or b != b:
        return None
    return a / b


# -- memory ----------------------------------------------------------------------

def traced_peak(fn):
    """Peak bytes NumPy allocated (tracemalloc) while ``fn`` ran, above what was
    allocated before it: NumPy reports its array buffers to tracemalloc."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return max(0, peak - base)


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_peak_of(fn):
    """Peak resident memory (bytes) above the resident memory before ``fn``, from
    the kernel's high-water mark (reset first through /proc/self/clear_refs).
    Linux only; None elsewhere. Meant to run in a fresh process."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    hwm = _status_kib("VmHWM")
    if before is None or hwm is None:
        return None
    return max(0, (hwm - before) * 1024)


def run_probe(script, probe):
    """Run ``script --probe JSON`` in a fresh Python process; return its JSON reply
    (or None when it failed). Used to measure peak RSS of one call in isolation."""
    cmd = [sys.executable, str(script), "--probe", json.dumps(probe)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"memory probe {probe} failed: {e}", file=sys.stderr)
        return None


# -- the machine ------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device, torch=None):
    """CPU, cores, BLAS (threadpoolctl), versions, and the GPU when used."""
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "device": device,
        "loadavg_at_start": loadavg(),
    }
    try:
        import tinyvgg
        info["tinyvgg"] = tinyvgg.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: d.get(k) for k in ("user_api", "internal_api", "num_threads", "version",
                                    "threading_layer", "architecture", "prefix")}
            for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    if device == "gpu":
        from tinyvgg import backend
        cp = backend.xp()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["cupy"] = cp.__version__
    return info


def blas_summary(info):
    pools = info.get("threadpools")
    if not isinstance(pools, list):
        return str(pools)
    blas = [p for p in pools if p.get("user_api") == "blas"]
    return "; ".join(f"{p['internal_api']} {p.get('version')} ({p.get('architecture')}, "
                     f"{p['num_threads']} threads)" for p in blas) or "none found"


def machine_lines(info):
    lines = [f"- machine: {info['cpu']}, {info['usable_cores']} usable of {info['logical_cores']} "
             f"logical cores, {info['platform']}",
             f"- BLAS (NumPy): {blas_summary(info)}",
             f"- versions: Python {info['python']}, NumPy {info['numpy']}, "
             f"PyTorch {info['torch'] or 'not installed'}"
             + (f" ({info['torch_threads']} threads)" if info.get("torch_threads") else ""),
             f"- device: {info['device']}" + (f" ({info['gpu']}, CuPy {info['cupy']})" if "gpu" in info else ""),
             f"- date: {info['date']}; load average (1, 5, 15 min) at start "
             f"{_fmt_load(info.get('loadavg_at_start'))}, at end {_fmt_load(info.get('loadavg_at_end'))}"
             " (2 cores: above 2 means other processes competed for them)"]
    return lines


def _fmt_load(v):
    return "n/a" if not v else "/".join(f"{x:.1f}" for x in v)


def gemm_rate(xp, n, repeats, sync=lambda: None, dtype="float32"):
    """Single-precision GEMM rate (GFLOP/s) of ``xp.matmul`` on n x n matrices: the
    ceiling a convolution built on matrix products can approach."""
    rng = numpy.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=numpy.float32)).astype(dtype)
    b = xp.asarray(rng.standard_normal((n, n), dtype=numpy.float32)).astype(dtype)
    c = xp.empty((n, n), dtype=dtype)
    t = interleaved({"gemm": lambda: xp.matmul(a, b, out=c)}, repeats=repeats, warmup=2,
                    syncs={"gemm": sync})["gemm"]
    return 2 * n ** 3 / median(t) / 1e9, t


def torch_gemm_rate(torch, n, repeats, device="cpu"):
    dev = "cuda" if device == "gpu" else "cpu"
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t = interleaved({"gemm": lambda: torch.mm(a, b)}, repeats=repeats, warmup=2,
                    syncs={"gemm": sync})["gemm"]
    return 2 * n ** 3 / median(t) / 1e9


# -- output ------------------------------------------------------------------------

def fmt_ms(s):
    return "n/a" if s is None or s != s else f"{s * 1e3:.1f}" if s >= 0.01 else f"{s * 1e3:.2f}"


def fmt_mb(b):
    return "n/a" if b is None else f"{b / 1e6:.0f}"


def fmt_x(r):
    return "n/a" if r is None else f"{r:.2f}x"


def fmt_f(v, digits=0):
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def table(headers, rows):
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def target_line(what, measured, limit):
    """One line of the targets section: met, or missed and by how much."""
    if measured is None:
        return f"- {what}: target <= {limit}x, not measured (PyTorch missing)"
    if measured <= limit:
        return f"- {what}: {measured:.2f}x, target <= {limit}x: **met** ({(1 - measured / limit) * 100:.0f}% margin)"
    return (f"- {what}: {measured:.2f}x, target <= {limit}x: **missed** by "
            f"{(measured / limit - 1) * 100:.0f}% ({measured - limit:.2f}x)")


def write_results(out_dir, name, payload, markdown):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tinyvgg.fileio import atomic_write_text  # the package's one atomic-write helper
    atomic_write_text(out_dir / f"{name}.json", json.dumps(payload, indent=2, default=_jsonable) + "\n")
    atomic_write_text(out_dir / f"{name}.md", markdown.rstrip() + "\n")
    print(f"\nwrote {out_dir / (name + '.json')} and {out_dir / (name + '.md')}")


def _jsonable(o):
    if isinstance(o, (numpy.floating, numpy.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
