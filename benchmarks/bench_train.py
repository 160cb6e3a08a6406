"""Time one full training step (forward, loss, backward, SGD update) against PyTorch.

    python benchmarks/bench_train.py             # full run (a few minutes on 2 cores)
    python benchmarks/bench_train.py --quick     # smoke run: tiny networks, seconds
    python benchmarks/bench_train.py --device gpu

Networks (hidden = :func:`tinyvgg.models.hidden_width`, 4096 * width, as the
trainer and ``vgg()`` pick it; dropout 0.5):

- VGG-11 at 32x32, batch 64, width 1 and width 1/4 (10 classes);
- VGG-16 at 224x224, batch 8, width 1 (1000 classes).

The PyTorch network is built here layer for layer (same convolutions, pools,
Linear sizes, ReLU and dropout; SGD with momentum 0.9 and weight decay 5e-4,
cross-entropy loss) and timed interleaved with tinyvgg's in one loop. Reported:
median step time, images per second, the ratio to PyTorch and the peak memory
of a step (tracemalloc for NumPy; peak RSS of a fresh process for both).
Results go to ``<out>/bench_train.json`` and ``<out>/bench_train.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np

from tinyvgg.models import hidden_width  # noqa: E402  (the model's rule: 4096 * width, at least 16)

TARGETS = {"vgg11-32-w1": 1.3, "vgg11-32-w0.25": 2.0}
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4


def configs(quick):
    """(key, model name, input size, width, batch, classes)."""
    if quick:
        return [("vgg11-32-w1", "vgg11", 32, 1 / 16, 4, 10),
                ("vgg11-32-w0.25", "vgg11", 32, 1 / 64, 4, 10),
                ("vgg16-224-w1", "vgg16", 64, 1 / 16, 2, 10)]
    return [("vgg11-32-w1", "vgg11", 32, 1.0, 64, 10),
            ("vgg11-32-w0.25", "vgg11", 32, 0.25, 64, 10),
            ("vgg16-224-w1", "vgg16", 224, 1.0, 8, 1000)]


def make_batch(n, size, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size), dtype=np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def tinyvgg_step(name, size, width, batch, classes):
    """A closure running one tinyvgg training step, and the model."""
    from tinyvgg import backend
    from tinyvgg.losses import SoftmaxCrossEntropy
    from tinyvgg.models import vgg
    from tinyvgg.optim import SGD
    backend.seed(0)
    model = vgg(name, num_classes=classes, input_size=size, width=width, hidden=hidden_width(width),
                dropout=0.5, init="he")
    opt = SGD(model, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss_fn = SoftmaxCrossEntropy()
    x, y = make_batch(batch, size, classes)
    x, y = backend.to_device(x), backend.to_device(y)

    def step():
        logits = model.forward(x, train=True)
        loss_fn.forward(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
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


def profile_step(name, size, width, batch, classes, repeats=3):
    """Where a tinyvgg step's time goes: each layer's forward and backward timed by
    wrapping it (grouped by layer type), the loss and the SGD update; seconds per
    step. The wrappers add microseconds per layer, nothing more."""
    import time
    from collections import defaultdict

    from tinyvgg import backend
    from tinyvgg.losses import SoftmaxCrossEntropy
    from tinyvgg.models import vgg
    from tinyvgg.optim import SGD
    acc = defaultdict(float)

    def timed(key, fn):
        return C.accumulate_time(acc, key, fn)

    backend.seed(0)
    model = vgg(name, num_classes=classes, input_size=size, width=width, hidden=hidden_width(width),
                dropout=0.5, init="he")
    for layer in model.layers:
        kind = type(layer).__name__
        layer.forward = timed(f"{kind} forward", layer.forward)
        layer.backward = timed(f"{kind} backward", layer.backward)
    opt = SGD(model, LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward = timed("loss", loss_fn.forward)
    loss_fn.backward = timed("loss", loss_fn.backward)
    opt.step = timed("SGD update", opt.step)
    x, y = (backend.to_device(a) for a in make_batch(batch, size, classes))

    def step():
        logits = model.forward(x, train=True)
        loss_fn.forward(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
    step()
    acc.clear()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    total = (time.perf_counter() - t0) / repeats
    out = {k: v / repeats for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    out["other"] = total - sum(out.values())
    out["total"] = total
    return out


def probe(spec):
    """--probe: peak RSS of one training step (after one untimed step), fresh process."""
    key, name, size, width, batch, classes = spec["config"]
    step, model = tinyvgg_step(name, size, width, batch, classes)
    if spec["lib"] == "torch":
        import torch
        step, _ = torch_step(torch, model, size, batch, classes, "cpu")
        del model
    step()  # the first step creates the optimiser's buffers: measure a later one
    print(json.dumps({"rss_peak": C.rss_peak_of(step)}))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rss", choices=("all", "none"), default=None,
                   help="peak RSS of a step in a fresh process (default: all; none with --quick)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds of sleep between timed steps")
    p.add_argument("--only", default=None, help="comma-separated config keys to run")
    p.add_argument("--profile", action="store_true",
                   help="also time each layer type's forward and backward inside tinyvgg's step")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe(json.loads(args.probe))
    rss_mode = args.rss or ("none" if args.quick or args.device == "gpu" else "all")

    C.select_device(args.device)
    torch, tv_sync, th_sync, info = C.start(args)

    rows = []
    for cfg in configs(args.quick):
        key, name, size, width, batch, classes = cfg
        if args.only and key not in args.only.split(","):
            continue
        step, model = tinyvgg_step(name, size, width, batch, classes)
        fns, syncs = {"tinyvgg": step}, {"tinyvgg": tv_sync}
        nparams_torch = None
        if torch is not None:
            th_step, nparams_torch = torch_step(torch, model, size, batch, classes, args.device)
            for suffix, variant in C.torch_variants(torch, th_step, args.device).items():
                fns["torch" + suffix], syncs["torch" + suffix] = variant, th_sync
        times = C.interleaved(fns, repeats=args.repeats or (2 if args.quick else None), warmup=1,
                              syncs=syncs, budget=20.0 if not args.quick else 0.5,
                              pause=0 if args.quick else args.pause)
        med = {k: C.median(v) for k, v in times.items()}
        row = {"config": key, "model": name, "input_size": size, "width": width, "batch": batch,
               "classes": classes, "hidden": hidden_width(width), "params": model.num_params(),
               "torch_params": nparams_torch, "repeats": len(times["tinyvgg"]),
               "tinyvgg_step_s": med["tinyvgg"],
               # PyTorch at its best: the faster of its default threads and one thread
               "torch_step_s": min((med[k] for k in ("torch", "torch1t") if k in med), default=None),
               "torch_default_threads_step_s": med.get("torch"),
               "torch_1thread_step_s": med.get("torch1t"),
               "tinyvgg_images_per_s": batch / med["tinyvgg"],
               "times": times}
        row["torch_images_per_s"] = batch / row["torch_step_s"] if row["torch_step_s"] else None
        row["ratio"] = C.ratio(row["tinyvgg_step_s"], row["torch_step_s"])
        row["ratio_vs_torch_default_threads"] = C.ratio(row["tinyvgg_step_s"], row["torch_default_threads_step_s"])
        if args.device == "cpu":
            from bench_layers import release_scratch
            release_scratch()
            row["tinyvgg_peak_traced_bytes"] = C.traced_peak(step)
        del step, model, fns
        if args.profile:
            row["profile_s"] = profile_step(name, size, width, batch, classes, repeats=2 if args.quick else 3)
        if rss_mode == "all":
            for lib in ("tinyvgg", "torch") if torch is not None else ("tinyvgg",):
                r = C.run_probe(Path(__file__), {"config": list(cfg), "lib": lib})
                row[f"{lib}_peak_rss_bytes"] = r and r["rss_peak"]
        rows.append(row)
        print(f"{key:16s} step {C.fmt_ms(row['tinyvgg_step_s']):>9s} ms  torch {C.fmt_ms(row['torch_step_s']):>9s} ms"
              f"  ratio {C.fmt_x(row['ratio'])}  ({row['tinyvgg_images_per_s']:.1f} img/s)", flush=True)

    info["loadavg_at_end"] = C.loadavg()
    payload = {"benchmark": "bench_train", "quick": args.quick, "machine": info, "targets": TARGETS,
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
    lines += ["- step: forward (train mode, dropout 0.5), softmax cross-entropy, backward, "
              "SGD (lr 0.01, momentum 0.9, weight decay 5e-4); hidden = 4096 * width",
              "- times: medians, tinyvgg and PyTorch steps interleaved in one loop after a warm-up step",
              "- PyTorch: the faster of its default threads and one thread (both timed in the same loop)",
              ""]
    headers = ["network", "batch", "params", "step ms", "torch step ms", "ratio", "torch default threads ms",
               "img/s", "torch img/s", "peak MB (tracemalloc)", "peak MB (RSS)", "torch peak MB (RSS)"]
    trs = [[f"{r['model']} @{r['input_size']} w{r['width']:g}", r["batch"], f"{r['params']:,}",
            C.fmt_ms(r["tinyvgg_step_s"]), C.fmt_ms(r["torch_step_s"]), C.fmt_x(r["ratio"]),
            C.fmt_ms(r["torch_default_threads_step_s"]),
            C.fmt_f(r["tinyvgg_images_per_s"], 1), C.fmt_f(r["torch_images_per_s"], 1),
            C.fmt_mb(r.get("tinyvgg_peak_traced_bytes")), C.fmt_mb(r.get("tinyvgg_peak_rss_bytes")),
            C.fmt_mb(r.get("torch_peak_rss_bytes"))] for r in rows]
    lines += [C.table(headers, trs), "",
              "Peak memory of one step above what the process held before it (the model, its "
              "optimiser state and the batch already exist): tracemalloc in this process after the "
              "timed steps, with tinyvgg's scratch pool emptied first so that it is counted; RSS in "
              "a fresh process, measured on its second step (the first creates the momentum "
              "buffers).", ""]
    prof = [r for r in rows if "profile_s" in r]
    if prof:
        lines += ["## Profile: where tinyvgg's step goes (ms per step, % of the step)", "",
                  "Each layer's forward and backward timed by wrapping it, grouped by layer type; "
                  "the default configuration (worker threads on).", ""]
        for r in prof:
            p = r["profile_s"]
            lines += [f"**{r['model']} @{r['input_size']} w{r['width']:g}, batch {r['batch']}**: "
                      f"{p['total'] * 1e3:.0f} ms", ""]
            lines += [C.table(["part", "ms", "%"], [[k, C.fmt_ms(v), f"{100 * v / p['total']:.1f}%"]
                                                    for k, v in p.items() if k != "total"]), ""]
    lines += ["## Targets", ""]
    if payload["quick"]:
        lines += ["(quick run: tiny networks, so these lines only show the report works)", ""]
    by = {r["config"]: r for r in rows}
    for key, limit in payload["targets"].items():
        if key in by:
            lines.append(C.target_line(f"training step {key}", by[key]["ratio"], limit))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
