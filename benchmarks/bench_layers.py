"""Time every distinct VGG convolution and max-pool shape, against the GEMM ceiling and PyTorch.

    python benchmarks/bench_layers.py             # full run (several minutes on 2 cores)
    python benchmarks/bench_layers.py --quick     # smoke run: tiny shapes, seconds
    python benchmarks/bench_layers.py --device gpu

Two groups of layers:

- ``vgg11-32``: every layer of VGG-11 at 32x32 input, batch 64 (conv 3->64 @32,
  64->128 @16, 128->256 @8, 256->256 @8, 256->512 @4, 512->512 @4, 512->512 @2 twice,
  and the five 2x2 pools);
- ``imagenet-224``: the five C->C 3x3 convolutions of VGG at 224x224, batch 8
  ((64, 224), (128, 112), (256, 56), (512, 28), (512, 14)), and 2x2 pools of the same
  inputs.

For each: forward and forward+backward time (medians, tinyvgg and PyTorch
interleaved in one loop), GFLOP/s and its fraction of the machine's single-precision
GEMM rate measured in the same run, the ratio to PyTorch, and the peak memory of
forward+backward (tracemalloc for NumPy; peak RSS in a fresh process for both
libraries on the ImageNet-size convolutions). Results go to
``<out>/bench_layers.json`` and ``<out>/bench_layers.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np

# Targets of the performance issue (ratios to PyTorch's time, measured side by side).
TARGETS = {"imagenet_conv": 1.15, "vgg11_conv": 1.3, "pool": 1.3, "conv224_mem_gb": 1.0}


def layer_specs(quick):
    """(group, kind, name, n, c, f, h, count); ``count`` = occurrences in the network."""
    if quick:  # the same structure, tiny: a smoke test of the code paths
        vgg = [(3, 8, 8, 1), (8, 16, 4, 1), (16, 16, 2, 2)]
        pools_vgg = [(8, 8), (16, 4)]
        inet = [(8, 28), (16, 14)]
        nb_vgg, nb_inet = 2, 1
    else:
        vgg = [(3, 64, 32, 1), (64, 128, 16, 1), (128, 256, 8, 1), (256, 256, 8, 1),
               (256, 512, 4, 1), (512, 512, 4, 1), (512, 512, 2, 2)]
        pools_vgg = [(64, 32), (128, 16), (256, 8), (512, 4), (512, 2)]
        inet = [(64, 224), (128, 112), (256, 56), (512, 28), (512, 14)]
        nb_vgg, nb_inet = 64, 8
    specs = []
    for c, f, h, count in vgg:
        specs.append(("vgg11-32", "conv", f"conv {c}->{f} @{h}", nb_vgg, c, f, h, count))
    for c, h in pools_vgg:
        specs.append(("vgg11-32", "pool", f"pool {c} @{h}", nb_vgg, c, c, h, 1))
    for c, h in inet:
        specs.append(("imagenet-224", "conv", f"conv {c}->{c} @{h}", nb_inet, c, c, h, 1))
    for c, h in inet:
        specs.append(("imagenet-224", "pool", f"pool {c} @{h}", nb_inet, c, c, h, 1))
    return specs


def conv_flops(n, c, f, h):
    """Multiply-adds x 2 of a 3x3, padding-1 convolution's forward pass."""
    return 2.0 * n * f * c * 9 * h * h


def make_inputs(kind, n, c, f, h, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    if kind == "conv":
        w = (rng.standard_normal((f, c, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (9 * c))))
        b = rng.standard_normal(f, dtype=np.float32) * np.float32(0.1)
        dy = rng.standard_normal((n, f, h, h), dtype=np.float32)
    else:
        w = b = None
        dy = rng.standard_normal((n, c, h // 2, h // 2), dtype=np.float32)
    return x, w, b, dy


def tinyvgg_fns(kind, x, w, b, dy):
    """(forward, forward+backward) callables of tinyvgg's ops on the current device."""
    from tinyvgg import backend
    from tinyvgg.ops import conv2d_backward, conv2d_forward, maxpool2d_backward, maxpool2d_forward
    x, dy = backend.to_device(x), backend.to_device(dy)
    if kind == "conv":
        w, b = backend.to_device(w), backend.to_device(b)

        def fwd():
            conv2d_forward(x, w, b, 1, 1)

        def fb():
            _, cache = conv2d_forward(x, w, b, 1, 1)
            conv2d_backward(dy, cache)
    else:
        def fwd():
            maxpool2d_forward(x, 2, 2)

        def fb():
            _, cache = maxpool2d_forward(x, 2, 2)
            maxpool2d_backward(dy, cache)
    return fwd, fb


def torch_fns(torch, kind, x, w, b, dy, device):
    """The same two passes in PyTorch (training mode: inputs require gradients)."""
    import torch.nn.functional as F
    dev = "cuda" if device == "gpu" else "cpu"
    tx = torch.tensor(x, device=dev, requires_grad=True)
    tdy = torch.tensor(dy, device=dev)
    if kind == "conv":
        tw = torch.tensor(w, device=dev, requires_grad=True)
        tb = torch.tensor(b, device=dev, requires_grad=True)
        leaves = (tx, tw, tb)
        op = lambda: F.conv2d(tx, tw, tb, stride=1, padding=1)  # noqa: E731
    else:
        leaves = (tx,)
        op = lambda: F.max_pool2d(tx, 2, 2)  # noqa: E731

    def fwd():
        op()

    def fb():
        for t in leaves:
            t.grad = None
        op().backward(tdy)
    return fwd, fb


def release_scratch():
    """Drop tinyvgg's reusable scratch buffers (if the ops keep any), so that a
    memory measurement counts their allocation too."""
    try:
        from tinyvgg.ops.cpu import scratch
        scratch.clear()
    except ImportError:
        pass


CONV_STAGES = ("_columns", "_spread", "_fold", "_col2im_chunk")


def profile_conv(x, w, b, dy, repeats=3):
    """Where one core's time goes in a conv forward+backward: tinyvgg's copy
    stages (im2col columns incl. padding, spreading dy, folding the product into
    the output, col2im) timed by wrapping them, and the rest (the products, the
    dW/db sums) as the difference. Runs with one worker and single-threaded BLAS,
    so that the stages add up; returns {stage: seconds per call} and the total."""
    import time
    from collections import defaultdict

    from threadpoolctl import threadpool_limits

    from tinyvgg.ops.cpu import conv as conv_mod
    from tinyvgg.ops import conv2d_backward, conv2d_forward
    from tinyvgg.ops.cpu import parallel
    acc = defaultdict(float)
    originals = {name: getattr(conv_mod, name) for name in CONV_STAGES}

    def timed(name, fn):
        return C.accumulate_time(acc, name, fn)

    workers = parallel.workers()
    parallel.set_workers(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            y, cache = conv2d_forward(x, w, b, 1, 1)
            conv2d_backward(dy, cache)
            for name, fn in originals.items():
                setattr(conv_mod, name, timed(name, fn))
            t0 = time.perf_counter()
            for _ in range(repeats):
                y, cache = conv2d_forward(x, w, b, 1, 1)
                conv2d_backward(dy, cache)
            total = (time.perf_counter() - t0) / repeats
    finally:
        for name, fn in originals.items():
            setattr(conv_mod, name, fn)
        parallel.set_workers(workers)
    out = {name.strip("_"): acc[name] / repeats for name in CONV_STAGES}
    out["products and sums (rest)"] = total - sum(out.values())
    out["total"] = total
    return out


def probe(spec):
    """--probe: peak RSS of one forward+backward, run in this fresh process."""
    kind, n, c, f, h = spec["kind"], spec["n"], spec["c"], spec["f"], spec["h"]
    x, w, b, dy = make_inputs(kind, n, c, f, h)
    if spec["lib"] == "torch":
        import torch
        _, fb = torch_fns(torch, kind, x, w, b, dy, "cpu")
    else:
        _, fb = tinyvgg_fns(kind, x, w, b, dy)
    print(json.dumps({"rss_peak": C.rss_peak_of(fb)}))


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rss", choices=("imagenet", "all", "none"), default=None,
                   help="which layers get a peak-RSS measurement in a fresh process "
                        "(default: the ImageNet-size convolutions; none with --quick)")
    p.add_argument("--pause", type=float, default=0.02,
                   help="seconds of sleep between timed calls (lets spinning thread pools idle)")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings: run only the layers whose 'group layer' contains one")
    p.add_argument("--profile", action="store_true",
                   help="also break each convolution's single-core time into copy stages and products")
    p.add_argument("--probe", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.probe:
        return probe(json.loads(args.probe))
    rss_mode = args.rss or ("none" if args.quick or args.device == "gpu" else "imagenet")

    backend = C.select_device(args.device)
    torch, tv_sync, th_sync, info = C.start(args)

    gemm_n = 256 if args.quick else 1024
    reps = 2 if args.quick else 7
    ceiling, _ = C.gemm_rate(backend.xp(), gemm_n, reps, tv_sync)
    torch_gemm = C.torch_gemm_rate(torch, gemm_n, reps, args.device) if torch else None
    print(f"GEMM ceiling ({gemm_n}^3 float32, NumPy matmul): {ceiling:.0f} GFLOP/s"
          + (f"; torch.mm: {torch_gemm:.0f} GFLOP/s" if torch_gemm else ""))
    xp = backend.xp()
    ga = xp.asarray(np.random.default_rng(1).standard_normal((gemm_n, gemm_n), dtype=np.float32))
    gc_ = xp.empty_like(ga)
    gemm_fn = lambda: xp.matmul(ga, ga, out=gc_)  # noqa: E731

    rows = []
    specs = layer_specs(args.quick)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        specs = [s for s in specs if any(k in f"{s[0]} {s[2]}" for k in keys)]
    for group, kind, name, n, c, f, h, count in specs:
        x, w, b, dy = make_inputs(kind, n, c, f, h)
        fns, syncs = {}, {}
        fns["tv_fwd"], fns["tv_fb"] = tinyvgg_fns(kind, x, w, b, dy)
        syncs["tv_fwd"] = syncs["tv_fb"] = tv_sync
        # The ceiling is re-measured in every round of every layer: on a shared
        # machine the GEMM rate moves with the load, and a layer's fraction of the
        # ceiling only means something against the rate of the same moments.
        fns["gemm"], syncs["gemm"] = gemm_fn, tv_sync
        order = ["gemm", "tv_fwd", "th_fwd", "th_fwd1t", "tv_fb", "th_fb", "th_fb1t"]
        if torch is not None:
            th_fwd, th_fb = torch_fns(torch, kind, x, w, b, dy, args.device)
            for base, fn in (("th_fwd", th_fwd), ("th_fb", th_fb)):
                for suffix, variant in C.torch_variants(torch, fn, args.device).items():
                    fns[base + suffix], syncs[base + suffix] = variant, th_sync
        fns = {k: fns[k] for k in order if k in fns}
        repeats = args.repeats or (2 if args.quick else None)
        times = C.interleaved(fns, repeats=repeats, warmup=1, syncs=syncs,
                              budget=4.0, pause=0 if args.quick else args.pause)
        med = {k: C.median(v) for k, v in times.items()}
        flops = conv_flops(n, c, f, h) if kind == "conv" else None
        row = {
            "group": group, "kind": kind, "layer": name, "shape": [n, c, h, h], "filters": f,
            "count": count, "repeats": len(times["tv_fb"]),
            "tinyvgg_fwd_s": med["tv_fwd"], "tinyvgg_fwdbwd_s": med["tv_fb"],
            # PyTorch at its best: the faster of its default threads and one thread
            "torch_fwd_s": min((med[k] for k in ("th_fwd", "th_fwd1t") if k in med), default=None),
            "torch_fwdbwd_s": min((med[k] for k in ("th_fb", "th_fb1t") if k in med), default=None),
            "torch_default_threads_fwdbwd_s": med.get("th_fb"),
            "torch_1thread_fwdbwd_s": med.get("th_fb1t"),
            "times": times,
        }
        row["ratio_fwd"] = C.ratio(row["tinyvgg_fwd_s"], row["torch_fwd_s"])
        row["ratio_fwdbwd"] = C.ratio(row["tinyvgg_fwdbwd_s"], row["torch_fwdbwd_s"])
        if flops:
            row["gflops_fwd"] = flops / row["tinyvgg_fwd_s"] / 1e9
            row["gflops_fwdbwd"] = 3 * flops / row["tinyvgg_fwdbwd_s"] / 1e9
            row["gemm_gflops_same_rounds"] = 2 * gemm_n ** 3 / med["gemm"] / 1e9
            row["ceiling_fraction_fwdbwd"] = row["gflops_fwdbwd"] / row["gemm_gflops_same_rounds"]
            if row["torch_fwdbwd_s"]:
                row["torch_gflops_fwdbwd"] = 3 * flops / row["torch_fwdbwd_s"] / 1e9
        if args.device == "cpu":
            release_scratch()
            row["tinyvgg_peak_traced_bytes"] = C.traced_peak(fns["tv_fb"])
        if args.profile and kind == "conv" and args.device == "cpu":
            row["profile_1core_s"] = profile_conv(x, w, b, dy)
        if rss_mode == "all" or (rss_mode == "imagenet" and group == "imagenet-224" and kind == "conv"):
            spec = {"kind": kind, "n": n, "c": c, "f": f, "h": h}
            for lib in ("tinyvgg", "torch") if torch is not None else ("tinyvgg",):
                r = C.run_probe(Path(__file__), dict(spec, lib=lib))
                row[f"{lib}_peak_rss_bytes"] = r and r["rss_peak"]
        rows.append(row)
        print(f"{group:12s} {name:22s} fwd {C.fmt_ms(row['tinyvgg_fwd_s']):>8s} ms "
              f"({C.fmt_x(row['ratio_fwd'])} torch)  fwd+bwd {C.fmt_ms(row['tinyvgg_fwdbwd_s']):>8s} ms "
              f"({C.fmt_x(row['ratio_fwdbwd'])} torch)"
              + (f"  {row['gflops_fwdbwd']:.0f} GFLOP/s" if flops else ""), flush=True)

    info["loadavg_at_end"] = C.loadavg()
    summary = summarise(rows)
    payload = {"benchmark": "bench_layers", "quick": args.quick, "machine": info,
               "gemm_ceiling_gflops": ceiling, "torch_gemm_gflops": torch_gemm, "gemm_n": gemm_n,
               "targets": TARGETS, "summary": summary, "layers": rows}
    md = markdown(payload)
    print()
    print(md)
    C.write_results(args.out, "bench_layers", payload, md)


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def summarise(rows):
    """Sums (weighted by how often a layer occurs) per group and kind, and their ratios."""
    out = {}
    for group in ("vgg11-32", "imagenet-224", "all"):
        for kind in ("conv", "pool"):
            sel = [r for r in rows if r["kind"] == kind and (group == "all" or r["group"] == group)]
            if not sel:
                continue
            s = {}
            for key in ("tinyvgg_fwd_s", "tinyvgg_fwdbwd_s", "torch_fwd_s", "torch_fwdbwd_s",
                        "torch_default_threads_fwdbwd_s"):
                vals = [r[key] for r in sel]
                s[key] = None if any(v is None for v in vals) else sum(v * r["count"] for v, r in zip(vals, sel))
            s["ratio_fwd"] = C.ratio(s["tinyvgg_fwd_s"], s["torch_fwd_s"])
            s["ratio_fwdbwd"] = C.ratio(s["tinyvgg_fwdbwd_s"], s["torch_fwdbwd_s"])
            s["ratio_fwdbwd_vs_torch_default_threads"] = C.ratio(s["tinyvgg_fwdbwd_s"],
                                                                 s["torch_default_threads_fwdbwd_s"])
            out[f"{group}/{kind}"] = s
    big = [r for r in rows if r["group"] == "imagenet-224" and r["kind"] == "conv"]
    if big:
        first = big[0]
        out["conv224_peak_traced_bytes"] = first.get("tinyvgg_peak_traced_bytes")
        out["conv224_peak_rss_bytes"] = first.get("tinyvgg_peak_rss_bytes")
        out["conv224_torch_peak_rss_bytes"] = first.get("torch_peak_rss_bytes")
        out["conv224_layer"] = first["layer"]
    return out


def markdown(payload):
    rows, s, info = payload["layers"], payload["summary"], payload["machine"]
    ceiling = payload["gemm_ceiling_gflops"]
    lines = ["# bench_layers: VGG convolution and pooling layers", ""]
    if payload["quick"]:
        lines += ["**Quick (smoke) run: tiny shapes, not the benchmark's numbers.**", ""]
    lines += C.machine_lines(info)
    lines += [f"- GEMM ceiling (NumPy float32 matmul of two {payload['gemm_n']}x{payload['gemm_n']} "
              f"matrices, same run): **{ceiling:.0f} GFLOP/s** at the start; `% ceiling` divides a layer's "
              f"rate by the GEMM rate timed in the same rounds as the layer (shown as `GEMM GFLOP/s`)"
              + (f"; torch.mm {payload['torch_gemm_gflops']:.0f} GFLOP/s" if payload["torch_gemm_gflops"] else ""),
              "- times: medians over the repeats, tinyvgg and PyTorch interleaved in one loop; "
              "ratio = tinyvgg / PyTorch (below 1: tinyvgg faster)",
              "- fwd+bwd computes dx, dW and db (PyTorch: input, weight and bias require grad)",
              "- PyTorch column: the faster of PyTorch with its default threads and with one thread "
              "(each timed in the same loop); the sums also give the ratio to its default threads alone",
              ""]
    headers = ["group", "layer", "n", "fwd ms", "torch fwd ms", "fwd ratio", "fwd+bwd ms",
               "torch fwd+bwd ms", "fwd+bwd ratio", "GFLOP/s", "GEMM GFLOP/s", "% ceiling", "peak MB"]
    trs = []
    for r in rows:
        trs.append([r["group"], r["layer"], r["count"], C.fmt_ms(r["tinyvgg_fwd_s"]), C.fmt_ms(r["torch_fwd_s"]),
                    C.fmt_x(r["ratio_fwd"]), C.fmt_ms(r["tinyvgg_fwdbwd_s"]), C.fmt_ms(r["torch_fwdbwd_s"]),
                    C.fmt_x(r["ratio_fwdbwd"]), C.fmt_f(r.get("gflops_fwdbwd")),
                    C.fmt_f(r.get("gemm_gflops_same_rounds")),
                    C.fmt_f(100 * r["ceiling_fraction_fwdbwd"]) if "ceiling_fraction_fwdbwd" in r else "n/a",
                    C.fmt_mb(r.get("tinyvgg_peak_traced_bytes"))])
    lines += [C.table(headers, trs), "",
              "`n`: how often the layer occurs in the network (sums are weighted by it). "
              "`peak MB`: NumPy's peak allocation (tracemalloc) during forward+backward, "
              "above the inputs, scratch buffers included.", ""]
    lines += ["## Sums", ""]
    srows = []
    for key, v in s.items():
        if isinstance(v, dict):
            srows.append([key, C.fmt_ms(v["tinyvgg_fwd_s"]), C.fmt_ms(v["torch_fwd_s"]), C.fmt_x(v["ratio_fwd"]),
                          C.fmt_ms(v["tinyvgg_fwdbwd_s"]), C.fmt_ms(v["torch_fwdbwd_s"]), C.fmt_x(v["ratio_fwdbwd"]),
                          C.fmt_x(v["ratio_fwdbwd_vs_torch_default_threads"])])
    lines += [C.table(["group/kind", "fwd ms", "torch fwd ms", "fwd ratio", "fwd+bwd ms", "torch fwd+bwd ms",
                       "fwd+bwd ratio", "ratio vs torch default threads"], srows), ""]
    mem = [r for r in rows if r.get("tinyvgg_peak_rss_bytes") is not None]
    if mem:
        lines += ["## Peak memory of forward+backward (fresh process, peak RSS above the inputs)", ""]
        lines += [C.table(["layer", "tinyvgg MB (RSS)", "tinyvgg MB (tracemalloc)", "torch MB (RSS)"],
                          [[r["layer"], C.fmt_mb(r["tinyvgg_peak_rss_bytes"]),
                            C.fmt_mb(r.get("tinyvgg_peak_traced_bytes")), C.fmt_mb(r.get("torch_peak_rss_bytes"))]
                           for r in mem]), ""]
    prof = [r for r in rows if "profile_1core_s" in r]
    if prof:
        stages = list(prof[0]["profile_1core_s"])
        lines += ["## Profile: one core's forward+backward, by stage (% of the total)", "",
                  "One worker thread and single-threaded BLAS, so that the stages add up; "
                  "`columns` includes the padding, `rest` is the three matrix products and the "
                  "dW/db sums.", ""]
        lines += [C.table(["layer"] + [st if st != "total" else "total ms" for st in stages],
                          [[r["layer"]] + [f"{100 * r['profile_1core_s'][st] / r['profile_1core_s']['total']:.0f}%"
                                           if st != "total" else C.fmt_ms(r["profile_1core_s"]["total"])
                                           for st in stages] for r in prof]), ""]
    lines += ["## Targets", ""]
    if payload["quick"]:
        lines += ["(quick run: tiny shapes, so these lines only show the report works)", ""]
    t = payload["targets"]
    get = lambda k: s.get(k, {}).get("ratio_fwdbwd")  # noqa: E731
    lines.append(C.target_line("conv fwd+bwd, sum of the five ImageNet-size shapes", get("imagenet-224/conv"),
                               t["imagenet_conv"]))
    lines.append(C.target_line("conv fwd+bwd, sum over VGG-11's 32x32 layers", get("vgg11-32/conv"),
                               t["vgg11_conv"]))
    lines.append(C.target_line("max-pool 2x2 fwd+bwd, sum over all pool shapes", get("all/pool"), t["pool"]))
    peak = s.get("conv224_peak_traced_bytes")
    if peak is not None:
        gb = peak / 1e9
        verdict = "**met**" if gb <= t["conv224_mem_gb"] else f"**missed** by {gb - t['conv224_mem_gb']:.2f} GB"
        extra = ""
        if s.get("conv224_peak_rss_bytes") is not None:
            extra = f" (peak RSS {s['conv224_peak_rss_bytes'] / 1e9:.2f} GB"
            if s.get("conv224_torch_peak_rss_bytes") is not None:
                extra += f"; PyTorch {s['conv224_torch_peak_rss_bytes'] / 1e9:.2f} GB"
            extra += ")"
        lines.append(f"- peak memory of {s['conv224_layer']} (batch 8) fwd+bwd above its inputs: "
                     f"{gb:.2f} GB{extra}, target <= {t['conv224_mem_gb']} GB: {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
