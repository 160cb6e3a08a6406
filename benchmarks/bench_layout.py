"""Channels-last against channels-first, and what the kept columns save.

    python benchmarks/bench_layout.py            # a minute on 2 cores
    python benchmarks/bench_layout.py --quick    # smoke run

1. One convolution's forward+backward (3x3, padding 1, dx, dW, db) on NumPy, with
   ``OPTIMISATIONS["channels_last"]`` off (the channels-first version with wide or
   compact columns) and on (the default; its input stored channels-last, as the
   layer before it leaves it), one after the other in this process, medians of
   ``--repeats`` calls after a warm-up: the ratio channels-last / channels-first.
2. How many times a VGG-11-BN training step (width 1/4, batch 64, 32 x 32) builds
   im2col columns, with the forward's columns kept for backward
   (``channels_last.KEEP_COLUMNS_BYTES``) and without.

Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter

import _common as C  # noqa: F401  (puts the repo root on sys.path)
import numpy as np

from tinyvgg import backend
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.ops.cpu import channels_last as cl
from tinyvgg.ops.cpu import conv as cm

SHAPES = [(8, 64, 64, 224), (8, 128, 128, 112), (8, 256, 256, 56), (64, 64, 128, 16), (64, 32, 64, 8)]
QUICK_SHAPES = [(2, 8, 8, 32), (8, 16, 16, 8)]


def conv_time(x, w, b, repeats):
    def step():
        y, cache = cm.conv2d_forward_fast(x, w, b, 1, 1)
        cm.conv2d_backward_fast(np.ones_like(y), cache)
    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layout_rows(shapes, repeats):
    rows, old = [], cm.OPTIMISATIONS["channels_last"]
    try:
        for n, c, f, h in shapes:
            rng = np.random.default_rng(0)
            x = rng.random((n, c, h, h), dtype=np.float32)
            w, b = rng.random((f, c, 3, 3), dtype=np.float32), np.zeros(f, np.float32)
            cm.OPTIMISATIONS["channels_last"] = False
            first = conv_time(x, w, b, repeats)
            cm.OPTIMISATIONS["channels_last"] = True
            last = conv_time(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2), w, b, repeats)
            rows.append([f"{c}->{f} @{h}, batch {n}", f"{first * 1e3:.1f}", f"{last * 1e3:.1f}",
                         f"{last / first:.2f}x"])
    finally:
        cm.OPTIMISATIONS["channels_last"] = old
    return rows


def column_builds(batch):
    """im2col calls of one VGG-11-BN training step, without and with kept columns."""
    calls = Counter()
    original, old_keep = cl._columns, cl.KEEP_COLUMNS_BYTES

    def counted(x, g, xp):
        calls["n"] += 1
        return original(x, g, xp)
    cl._columns = counted
    out = {}
    try:
        backend.seed(0)
        model = vgg("vgg11", num_classes=10, input_size=32, width=0.25, hidden=1024, batch_norm=True,
                    dropout=0.0, init="he")
        loss = SoftmaxCrossEntropy()
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        y = np.arange(batch) % 10
        for keep in (0, old_keep):
            cl.KEEP_COLUMNS_BYTES = keep
            calls.clear()
            loss.forward(model.forward(x, train=True), y)
            model.backward(loss.backward(), input_grad=False)
            out[keep] = calls["n"]
    finally:
        cl._columns, cl.KEEP_COLUMNS_BYTES = original, old_keep
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rows = layout_rows(QUICK_SHAPES if args.quick else SHAPES, 1 if args.quick else args.repeats)
    print(C.table(["convolution, forward+backward", "channels-first ms", "channels-last ms",
                   "channels-last / channels-first"], rows))
    builds = column_builds(8 if args.quick else 64)
    print()
    print(f"im2col builds per VGG-11-BN w1/4 training step: {builds[0]} without kept columns, "
          f"{builds[max(builds)]} with them (KEEP_COLUMNS_BYTES = {max(builds) >> 20} MiB)")


if __name__ == "__main__":
    sys.exit(main())
