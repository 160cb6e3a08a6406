"""Time one full training step (forward, loss, backward, SGD update) against PyTorch.

    python benchmarks/bench_train.py             # full run (several minutes on 2 cores)
    python benchmarks/bench_train.py --quick     # smoke run: tiny networks, seconds
    python benchmarks/bench_train.py --only vgg11-32-w0.25 --profile

Networks (the headline rows are those users train on a CPU; hidden = the width of
fc6/fc7, stated in the table; dropout 0.5 without BatchNorm, none with it):

- VGG-11 at 32x32, batch 64, width 1 with the command line's own hidden width
  (4096 * width = 4096) and with 512 (a classifier that no longer dominates);
- VGG-11 at 32x32, batch 64, width 1/4, hidden 1024 (the command line's) and 128;
- VGG-11-BN at 32x32, batch 64, width 1/4, hidden 1024 (``tinyvgg train``'s CIFAR network);
- VGG-16 at 224x224, batch 8, width 1 (1000 classes).

The PyTorch network is built here layer for layer (same convolutions, BatchNorm,
pools, Linear sizes, ReLU and dropout; SGD with momentum 0.9 and weight decay 5e-4,
cross-entropy loss). **Each library runs in its own fresh process**, in blocks of
steps that alternate between the two for ``--rounds`` rounds: in one process the two
slowed each other down (PyTorch's step took twice its own time when interleaved
step by step with tinyvgg's), and alternating blocks still lets both see the same
machine load. Reported: median step time, images per second, the ratio to PyTorch
(at its default threads), the share of the GEMM ceiling (NumPy's single-precision
GEMM rate on 2048 x 2048 matrices measured in the same run, at BLAS's default
threads) that the step's arithmetic reaches, and the peak memory of a step
(tracemalloc for NumPy; peak RSS of a fresh process for both). ``--profile`` adds where
each step's time goes by layer type: tinyvgg's layers timed by wrapping them, PyTorch's
with ``torch.profiler`` in its own process, side by side with the gap between them.
On a multi-core CPU tinyvgg's step is also timed on replicas (``--replicas N``,
default one per worker thread: :class:`tinyvgg.replicas.Replicas`, the model and
helper processes each stepping a share of the batch, what ``tinyvgg train`` runs by
default there for batches of at least ``MIN_DEFAULT_SHARE`` images per replica) in a third process of
the same alternating blocks.
Results go to ``<out>/bench_train.json`` and ``<out>/bench_train.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np


TARGETS = {"vgg11-32-w1": 1.0, "vgg11-32-w0.25": 1.3}
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def configs(quick):
    """(key, model name, input size, width, batch, classes, hidden, batch_norm)."""
    if quick:
        return [("vgg11-32-w1", "vgg11", 32, 1 / 16, 4, 10, 256, False),
                ("vgg11-bn-32-w0.25", "vgg11", 32, 1 / 64, 4, 10, 64, True),
                ("vgg16-224-w1", "vgg16", 64, 1 / 16, 2, 10, 256, False)]
    return [("vgg11-32-w1", "vgg11", 32, 1.0, 64, 10, 4096, False),
            ("vgg11-32-w1-h512", "vgg11", 32, 1.0, 64, 10, 512, False),
            ("vgg11-32-w0.25", "vgg11", 32, 0.25, 64, 10, 1024, False),
            ("vgg11-32-w0.25-h128", "vgg11", 32, 0.25, 64, 10, 128, False),
            ("vgg11-bn-32-w0.25", "vgg11", 32, 0.25, 64, 10, 1024, True),
            ("vgg16-224-w1", "vgg16", 224, 1.0, 8, 1000, 4096, False)]


def make_batch(n, size, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size), dtype=np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def tinyvgg_step(name, size, width, batch, classes, hidden, batch_norm, replicas=1):
    """A closure running one tinyvgg training step, and the model; with ``replicas`` > 1
    the step of ``tinyvgg train --replicas N`` (:class:`tinyvgg.replicas.Replicas`)."""
    from tinyvgg import backend
    from tinyvgg.losses import SoftmaxCrossEntropy
    from tinyvgg.models import vgg
    from tinyvgg.optim import SGD
    backend.seed(0)
    model = vgg(name, num_classes=classes, input_size=size, width=width, hidden=hidden,
                dropout=0.0 if batch_norm else 0.5, batch_norm=batch_norm, init="he")
    opt = SGD(model, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss_fn = SoftmaxCrossEntropy()
    x, y = make_batch(batch, size, classes)
    x, y = backend.to_device(x), backend.to_device(y)
    if replicas > 1:
        from tinyvgg.replicas import Replicas
        split = Replicas(model, loss_fn, replicas, max_batch=batch)

        def split_step():
            split.forward_backward(x, y)
            opt.step()
        split_step.replicas = split  # (kept alive with the closure)
        split_step.opt = opt
        return split_step, model

    def step():
        logits = model.forward(x, train=True)
        loss_fn.forward(logits, y)
        model.backward(loss_fn.backward(), input_grad=False)  # as the trainer: no dx for the images
        opt.step()
    step.opt = opt
    return step, model


def torch_net(torch, model):
    """The same network in PyTorch, layer for layer, from tinyvgg's layer list."""
    from tinyvgg import layers as L
    nn = torch.nn
    mods = []
    for layer in model.layers:
        if isinstance(layer, L.Conv2d):
            mods.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  layer.stride, layer.padding))
        elif isinstance(layer, L.BatchNorm2d):
            mods.append(nn.BatchNorm2d(layer.num_features))
        elif isinstance(layer, L.ReLU):
            mods.append(nn.ReLU(inplace=True))  # as torchvision's VGG
        elif isinstance(layer, L.MaxPool2d):
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, L.Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, L.Linear):
            mods.append(nn.Linear(layer.in_features, layer.out_features))
        elif isinstance(layer, L.Dropout):
            mods.append(nn.Dropout(layer.p))
        else:
            raise TypeError(f"bench_train: no PyTorch twin for {layer!r}")
    return nn.Sequential(*mods)


def torch_step(torch, model, size, batch, classes, device):
    dev = "cuda" if device == "gpu" else "cpu"
    torch.manual_seed(0)
    net = torch_net(torch, model).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = make_batch(batch, size, classes)
    tx, ty = torch.tensor(x, device=dev), torch.tensor(y, device=dev)
    nparams = sum(p.numel() for p in net.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(tx), ty).backward()
        opt.step()
    return step, nparams


def profile_step(name, size, width, batch, classes, hidden, batch_norm, repeats=3):
    """Where a tinyvgg step's time goes: each layer's forward and backward timed by
    wrapping it (grouped by layer type), the loss and the SGD update; seconds per
    step. The wrappers add microseconds per layer, nothing more."""
    import time
    from collections import defaultdict
    acc = defaultdict(float)

    def timed(key, fn):
        return C.accumulate_time(acc, key, fn)

    step, model = tinyvgg_step(name, size, width, batch, classes, hidden, batch_norm)
    for layer in model.layers:
        kind = type(layer).__name__
        layer.forward = timed(f"{kind} forward", layer.forward)
        layer.backward = timed(f"{kind} backward", layer.backward)
    step()
    acc.clear()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    total = (time.perf_counter() - t0) / repeats
    out = {k: v / repeats for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    out["loss, SGD update and the rest"] = total - sum(out.values())
    out["total"] = total
    return out


# PyTorch's profiler events that hold one layer type's whole forward or backward (each
# top-level op or autograd node includes the ops it calls), under tinyvgg's part names.
TORCH_PARTS = {
    "Conv2d forward": ("aten::conv2d",),
    "Conv2d backward": ("autograd::engine::evaluate_function: ConvolutionBackward0",),
    "BatchNorm2d forward": ("aten::batch_norm",),
    "BatchNorm2d backward": ("autograd::engine::evaluate_function: NativeBatchNormBackward0",),
    "ReLU forward": ("aten::relu_", "aten::relu"),
    "ReLU backward": ("autograd::engine::evaluate_function: ReluBackward0",
                      "autograd::engine::evaluate_function: ThresholdBackward0"),
    "MaxPool2d forward": ("aten::max_pool2d",),
    "MaxPool2d backward": ("autograd::engine::evaluate_function: MaxPool2DWithIndicesBackward0",),
    "Linear forward": ("aten::linear",),
    "Linear backward": ("autograd::engine::evaluate_function: AddmmBackward0",),
    "Dropout forward": ("aten::dropout",),
    "Dropout backward": ("autograd::engine::evaluate_function: MulBackward0",
                         "autograd::engine::evaluate_function: NativeDropoutBackward0"),
}


def torch_profile_step(torch, step, repeats):
    """Where a PyTorch step's time goes, in the parts of :func:`profile_step`:
    ``torch.profiler`` over ``repeats`` steps (after the caller's warm-up), the CPU
    time of the events in ``TORCH_PARTS``; seconds per step. The profiler's own cost
    (microseconds per op) stays in "loss, SGD update and the rest"."""
    import time
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
        total = (time.perf_counter() - t0) / repeats
    by_name = {e.key: e.cpu_time_total * 1e-6 / repeats for e in prof.key_averages()}
    out = {part: sum(by_name.get(n, 0.0) for n in names) for part, names in TORCH_PARTS.items()}
    out = {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}
    out["loss, SGD update and the rest"] = total - sum(out.values())
    out["total"] = total
    return out


def step_flops(model, batch, size):
    """Multiply-adds x 2 of one training step: every convolution and Linear layer's
    forward, dW and dx (no dx for the first layer, as in training)."""
    from tinyvgg import layers as L
    shape, total, first = (batch, 3, size, size), 0, True
    for layer in model.layers:
        if isinstance(layer, L.Conv2d):
            out = layer.output_shape(shape)
            kh, kw = layer.kernel_size
            fwd = 2 * out[0] * out[1] * out[2] * out[3] * layer.in_channels * kh * kw
            total += fwd * (2 if first else 3)
            first, shape = False, out
        elif isinstance(layer, L.MaxPool2d):
            shape = layer.output_shape(shape)
        elif isinstance(layer, L.Flatten):
            shape = (shape[0], shape[1] * shape[2] * shape[3])
        elif isinstance(layer, L.Linear):
            total += 3 * 2 * shape[0] * layer.in_features * layer.out_features
            shape = (shape[0], layer.out_features)
    return total


def probe(spec):
    """--probe (a fresh process): ``mode`` "rss": peak RSS of one training step
    (after one untimed step); "time": the times of ``steps`` steps after two
    untimed ones."""
    import time
    key, name, size, width, batch, classes, hidden, batch_norm = spec["config"]
    step, model = tinyvgg_step(name, size, width, batch, classes, hidden, batch_norm,
                               replicas=spec.get("replicas", 1) if spec["lib"] == "replicas" else 1)
    if spec["lib"] == "torch":
        import torch
        step, _ = torch_step(torch, model, size, batch, classes, "cpu")
        del model
    if spec.get("mode") == "profile":  # PyTorch's side of --profile (tinyvgg's: profile_step)
        for _ in range(2):
            step()
        print(json.dumps({"profile_s": torch_profile_step(torch, step, spec["steps"])}))
        return
    if spec.get("mode", "rss") == "rss":
        step()  # the first step creates the optimiser's buffers: measure a later one
        print(json.dumps({"rss_peak": C.rss_peak_of(step)}))
        return
    step()
    step()
    times = []
    for _ in range(spec["steps"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rss", choices=("all", "none"), default=None,
                   help="peak RSS of a step in a fresh process (default: all; none with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternating blocks of steps per library (default 3; 1 with --quick)")
    p.add_argument("--block-seconds", type=float, default=4.0, help="about how long one block of steps runs")
    p.add_argument("--only", default=None, help="comma-separated config keys to run")
    p.add_argument("--profile", action="store_true",
                   help="also time each layer type's forward and backward inside tinyvgg's step "
                        "(and inside PyTorch's, with torch.profiler, when it is installed)")
    p.add_argument("--replicas", type=int, default=None,
                   help="also time tinyvgg's step on this many replicas (tinyvgg.replicas, what `tinyvgg "
                        "train` uses by default on a multi-core CPU for large enough steps: "
                        "tinyvgg.replicas.default_replicas); default: one per worker thread (none on one core); 1: not timed")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe(json.loads(args.probe))
    if args.device != "cpu":
        raise SystemExit("bench_train: the CPU benchmark (the GPU one is benchmarks/gpu_check.sh)")
    rss_mode = args.rss or ("none" if args.quick else "all")
    rounds = args.rounds or (1 if args.quick else 3)
    if args.replicas is None:
        from tinyvgg.ops.cpu import parallel
        args.replicas = parallel.workers()
    torch, _, _, info = C.start(args)
    info["pinning_variables"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    # The GEMM ceiling, here in the parent process, with BLAS at its default threads.
    ceiling = C.gemm_rate(np, 512 if args.quick else 2048, 3 if args.quick else 7)[0]
    print(f"GEMM ceiling (NumPy sgemm, 2048 x 2048): {ceiling:.0f} GFLOP/s", flush=True)
    script = Path(__file__)
    rows = []
    for cfg in configs(args.quick):
        key, name, size, width, batch, classes, hidden, batch_norm = cfg
        if args.only and key not in args.only.split(","):
            continue
        step, model = tinyvgg_step(name, size, width, batch, classes, hidden, batch_norm)
        flops = step_flops(model, batch, size)
        # how many steps fill a block: one timed step here (after a warm-up)
        step()
        t_one = C.time_once(step, lambda: None)
        steps = 2 if args.quick else int(max(3, min(40, args.block_seconds / t_one)))
        libs = ["tinyvgg"] + (["replicas"] if args.replicas > 1 else []) + (["torch"] if torch is not None else [])
        times = {lib: [] for lib in libs}
        for _ in range(rounds):
            for lib in libs:
                r = C.run_probe(script, {"config": list(cfg), "lib": lib, "mode": "time", "steps": steps,
                                         "replicas": args.replicas})
                if r is None:
                    raise SystemExit(f"bench_train: the {lib} timing process failed for {key}")
                times[lib] += r["times"]
        med = {lib: C.median(v) for lib, v in times.items()}
        row = {"config": key, "model": name, "input_size": size, "width": width, "batch": batch,
               "classes": classes, "hidden": hidden, "batch_norm": batch_norm, "params": model.num_params(),
               "step_gflop": flops / 1e9, "rounds": rounds, "steps_per_block": steps,
               "tinyvgg_step_s": med["tinyvgg"], "torch_step_s": med.get("torch"),
               "tinyvgg_images_per_s": batch / med["tinyvgg"], "times": times,
               "tinyvgg_gemm_ceiling_share": flops / med["tinyvgg"] / 1e9 / ceiling}
        row["torch_images_per_s"] = batch / row["torch_step_s"] if row["torch_step_s"] else None
        row["torch_gemm_ceiling_share"] = (flops / row["torch_step_s"] / 1e9 / ceiling
                                           if row["torch_step_s"] else None)
        row["ratio"] = C.ratio(row["tinyvgg_step_s"], row["torch_step_s"])
        if "replicas" in med:
            row["replicas"] = args.replicas
            row["replicas_step_s"] = med["replicas"]
            row["replicas_ratio"] = C.ratio(med["replicas"], row["torch_step_s"])
            row["replicas_gemm_ceiling_share"] = flops / med["replicas"] / 1e9 / ceiling
        from bench_layers import release_scratch
        release_scratch()
        row["tinyvgg_peak_traced_bytes"] = C.traced_peak(step)
        del step, model
        if args.profile:
            row["profile_s"] = profile_step(name, size, width, batch, classes, hidden, batch_norm,
                                            repeats=2 if args.quick else 5)
            if torch is not None:
                r = C.run_probe(script, {"config": list(cfg), "lib": "torch", "mode": "profile",
                                         "steps": 2 if args.quick else 5})
                row["torch_profile_s"] = r and r["profile_s"]
        if rss_mode == "all":
            for lib in libs:
                r = C.run_probe(script, {"config": list(cfg), "lib": lib})
                row[f"{lib}_peak_rss_bytes"] = r and r["rss_peak"]
        rows.append(row)
        print(f"{key:20s} step {C.fmt_ms(row['tinyvgg_step_s']):>9s} ms  torch {C.fmt_ms(row['torch_step_s']):>9s} ms"
              f"  ratio {C.fmt_x(row['ratio'])}  ({row['tinyvgg_images_per_s']:.1f} img/s, "
              f"{100 * row['tinyvgg_gemm_ceiling_share']:.0f}% of the GEMM ceiling)"
              + (f"; {args.replicas} replicas {C.fmt_ms(row['replicas_step_s'])} ms, ratio "
                 f"{C.fmt_x(row['replicas_ratio'])}" if "replicas_step_s" in row else ""), flush=True)

    info["loadavg_at_end"] = C.loadavg()
    payload = {"benchmark": "bench_train", "quick": args.quick, "machine": info, "targets": TARGETS,
               "gemm_ceiling_gflops": ceiling,
               "optimizer": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
               "steps": rows}
    md = markdown(payload)
    print()
    print(md)
    C.write_results(args.out, "bench_train", payload, md)


def markdown(payload):
    rows, info = payload["steps"], payload["machine"]
    lines = ["# bench_train: one training step (forward, loss, backward, SGD update)", ""]
    if payload["quick"]:
        lines += ["**Quick (smoke) run: tiny networks, not the benchmark's numbers.**", ""]
    lines += C.machine_lines(info)
    pins = info.get("pinning_variables") or {}
    lines += [f"- OpenBLAS pinning variables: " + (", ".join(f"{k}={v}" for k, v in pins.items() if v)
                                                    or "none set (the user configuration)"),
              "- step: forward (train mode), softmax cross-entropy, backward (no dx for the images), "
              "SGD (lr 0.01, momentum 0.9, weight decay 5e-4)",
              "- times: medians; each library in its own fresh process, blocks of steps alternating "
              "between the two; PyTorch at its default threads",
              f"- GEMM ceiling: NumPy's sgemm on 2048 x 2048 matrices, {payload['gemm_ceiling_gflops']:.0f} "
              "GFLOP/s in this run; \"% ceiling\" = the step's arithmetic (2 x multiply-adds of every "
              "convolution and Linear layer's forward, dW and dx) / step time / ceiling", ""]
    reps = [r for r in rows if "replicas_step_s" in r]
    if reps:
        lines[-1:-1] = [f"- replicas: the same step on {reps[0]['replicas']} replicas (`tinyvgg.replicas`: the "
                        f"model and helper processes, each stepping a share of the batch, BatchNorm "
                        f"synchronised; what `tinyvgg train` runs by default on a multi-core CPU for "
                        f"large enough steps: `tinyvgg.replicas.default_replicas`), "
                        f"timed in its own process in the same alternating blocks"]
    headers = ["network", "hidden", "batch", "params", "GFLOP/step", "step ms", "torch step ms", "ratio",
               "% ceiling", "torch % ceiling", "img/s", "torch img/s", "peak MB (tracemalloc)",
               "peak MB (RSS)", "torch peak MB (RSS)"]
    trs = [[f"{r['model']}{'-BN' if r['batch_norm'] else ''} @{r['input_size']} w{r['width']:g}", r["hidden"],
            r["batch"], f"{r['params']:,}", f"{r['step_gflop']:.1f}",
            C.fmt_ms(r["tinyvgg_step_s"]), C.fmt_ms(r["torch_step_s"]), C.fmt_x(r["ratio"]),
            f"{100 * r['tinyvgg_gemm_ceiling_share']:.0f}%",
            "n/a" if r["torch_gemm_ceiling_share"] is None else f"{100 * r['torch_gemm_ceiling_share']:.0f}%",
            C.fmt_f(r["tinyvgg_images_per_s"], 1), C.fmt_f(r["torch_images_per_s"], 1),
            C.fmt_mb(r.get("tinyvgg_peak_traced_bytes")), C.fmt_mb(r.get("tinyvgg_peak_rss_bytes")),
            C.fmt_mb(r.get("torch_peak_rss_bytes"))] for r in rows]
    if reps:
        at = headers.index("% ceiling")
        headers[at:at] = ["replicas step ms", "replicas ratio", "replicas % ceiling"]
        for tr, r in zip(trs, rows):
            tr[at:at] = ([C.fmt_ms(r["replicas_step_s"]), C.fmt_x(r["replicas_ratio"]),
                          f"{100 * r['replicas_gemm_ceiling_share']:.0f}%"] if "replicas_step_s" in r
                         else ["n/a"] * 3)
    lines += [C.table(headers, trs), "",
              "Peak memory of one step above what the process held before it (the model, its "
              "optimiser state and the batch already exist): tracemalloc in this process after the "
              "timed steps, with tinyvgg's scratch pool emptied first so that it is counted; RSS in "
              "a fresh process, measured on its second step (the first creates the momentum "
              "buffers).", ""]
    prof = [r for r in rows if "profile_s" in r]
    if prof:
        title = ("where tinyvgg's step goes, and PyTorch's" if any(r.get("torch_profile_s") for r in prof)
                 else "where tinyvgg's step goes")
        lines += [f"## Profile: {title} (ms per step, % of tinyvgg's step)", "",
                  "Each layer's forward and backward timed by wrapping it, grouped by layer type; "
                  "the default configuration (worker threads on).", ""]
        if any(r.get("torch_profile_s") for r in prof):
            lines += ["PyTorch's column: `torch.profiler` over the same number of steps in its own "
                      "process, the CPU time of each layer type's top-level forward op and backward "
                      "autograd node (`TORCH_PARTS` in the script); the profiler's own cost stays in "
                      "the last row. \"gap\" = tinyvgg's ms minus PyTorch's: where the step's "
                      "difference comes from.", ""]
        for r in prof:
            p, tp = r["profile_s"], r.get("torch_profile_s")
            lines += [f"**{r['model']}{'-BN' if r['batch_norm'] else ''} @{r['input_size']} w{r['width']:g}, "
                      f"hidden {r['hidden']}, batch {r['batch']}**: {p['total'] * 1e3:.0f} ms"
                      + (f" (PyTorch, profiled: {tp['total'] * 1e3:.0f} ms)" if tp else ""), ""]
            if not tp:
                lines += [C.table(["part", "ms", "%"], [[k, C.fmt_ms(v), f"{100 * v / p['total']:.1f}%"]
                                                        for k, v in p.items() if k != "total"]), ""]
                continue
            parts = [k for k in p if k != "total"] + [k for k in tp if k not in p and k != "total"]
            trs = [[k, C.fmt_ms(p.get(k, 0.0)), f"{100 * p.get(k, 0.0) / p['total']:.1f}%",
                    C.fmt_ms(tp.get(k, 0.0)), C.fmt_ms(p.get(k, 0.0) - tp.get(k, 0.0))] for k in parts]
            trs.append(["total", C.fmt_ms(p["total"]), "100%", C.fmt_ms(tp["total"]),
                        C.fmt_ms(p["total"] - tp["total"])])
            lines += [C.table(["part", "ms", "%", "PyTorch ms", "gap ms"], trs), ""]
    lines += ["## Targets", ""]
    if payload["quick"]:
        lines += ["(quick run: tiny networks, so these lines only show the report works)", ""]
    by = {r["config"]: r for r in rows}
    for key, limit in payload["targets"].items():
        if key in by:
            lines.append(C.target_line(f"training step {key}", by[key]["ratio"], limit))
            if "replicas_ratio" in by[key]:
                lines.append(C.target_line(f"training step {key} on {by[key]['replicas']} replicas",
                                           by[key]["replicas_ratio"], limit))
    if "vgg11-32-w1" in by:
        share = by["vgg11-32-w1"]["tinyvgg_gemm_ceiling_share"]
        lines.append(f"- training step vgg11-32-w1 at {100 * share:.0f}% of the GEMM ceiling, target >= 50%: "
                     + ("met" if share >= 0.5 else f"**missed** by {50 - 100 * share:.0f} points"))
        if "replicas_gemm_ceiling_share" in by["vgg11-32-w1"]:
            share = by["vgg11-32-w1"]["replicas_gemm_ceiling_share"]
            lines.append(f"- the same on replicas at {100 * share:.0f}% of the GEMM ceiling: "
                         + ("met" if share >= 0.5 else f"**missed** by {50 - 100 * share:.0f} points"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
