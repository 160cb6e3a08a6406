"""The VGG models' in-place ReLUs against out-of-place ones: one training step, in one process.

    python benchmarks/bench_relu_inplace.py            # a few minutes on 2 cores
    python benchmarks/bench_relu_inplace.py --quick    # smoke run, seconds

The same model's step (bench_train.py's: forward, loss, backward, SGD) is timed in
blocks of steps that alternate between ``ReLU.inplace`` True and False on all of its
ReLUs, for ``--rounds`` rounds, so both see the same process, memory and machine
load (separate processes differed by up to 15 % between runs of the same code on the
2-core VMs). Reported: median step time of each and the ratio. Results go to
``<out>/bench_relu_inplace.{json,md}``.
"""

from __future__ import annotations

import sys
import time

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np

from bench_train import tinyvgg_step  # noqa: E402

# (key, model, input size, width, batch, classes, hidden, batch_norm)
CONFIGS = [("vgg11-32-w0.25-h128", "vgg11", 32, 0.25, 64, 10, 128, False),
           ("vgg11-bn-32-w0.25", "vgg11", 32, 0.25, 64, 10, 1024, True),
           ("vgg11-32-w1-h512", "vgg11", 32, 1.0, 64, 10, 512, False)]
QUICK = [("vgg11-bn-32-w1/16", "vgg11", 32, 1 / 16, 8, 10, 64, True)]


def measure(cfg, rounds, block):
    """{inplace: [step seconds]} over alternating blocks of ``block`` steps."""
    from tinyvgg.layers import ReLU
    _, name, size, width, batch, classes, hidden, bn = cfg
    step, model = tinyvgg_step(name, size, width, batch, classes, hidden, bn)
    relus = [layer for layer in model.layers if isinstance(layer, ReLU)]
    times = {False: [], True: []}
    for _ in range(2):
        step()
    for _ in range(rounds):
        for inplace in (False, True):
            for layer in relus:
                layer.inplace = inplace
            step()  # the first step after a switch: buffers of the new sizes
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                times[inplace].append(time.perf_counter() - t0)
    return times


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 8; 1 with --quick)")
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("bench_relu_inplace: a CPU benchmark")
    args.no_torch = True
    _, _, _, info = C.start(args)
    rounds = args.rounds or (1 if args.quick else 8)
    rows = []
    for cfg in (QUICK if args.quick else CONFIGS):
        block = 2 if args.quick else (2 if cfg[3] >= 1 else 5)
        t = measure(cfg, rounds, block)
        off, on = C.median(t[False]), C.median(t[True])
        rows.append({"config": cfg[0], "hidden": cfg[6], "batch_norm": cfg[7], "out_of_place_s": off,
                     "in_place_s": on, "ratio": on / off, "steps_each": len(t[True])})
        print(f"{cfg[0]:22s} out of place {off * 1e3:7.1f} ms  in place {on * 1e3:7.1f} ms  "
              f"ratio {on / off:.3f}", flush=True)
    info["loadavg_at_end"] = C.loadavg()
    lines = ["# In-place against out-of-place ReLUs: one training step, blocks alternating in one process", ""]
    if args.quick:
        lines += ["**Quick (smoke) run: tiny network, not the benchmark's numbers.**", ""]
    lines += C.machine_lines(info) + [
        f"- command: `python benchmarks/bench_relu_inplace.py{' --quick' if args.quick else ''}`, "
        f"{rounds} rounds; medians", ""]
    lines += [C.table(["network", "hidden", "out of place ms", "in place ms", "in place / out of place",
                       "steps each"],
                      [[r["config"], r["hidden"], C.fmt_ms(r["out_of_place_s"]), C.fmt_ms(r["in_place_s"]),
                        f"{r['ratio']:.3f}", r["steps_each"]] for r in rows])]
    C.write_results(args.out, "bench_relu_inplace",
                    {"benchmark": "bench_relu_inplace", "quick": args.quick, "machine": info, "rows": rows},
                    "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
