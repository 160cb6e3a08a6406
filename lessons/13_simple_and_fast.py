"""Lesson 13: the textbook convolution and the fast one -- same numbers, different speed.

tinyvgg's convolution has two CPU versions. The textbook one (the top of
tinyvgg/ops/conv.py, lesson 1's im2col and one matrix product) is about twenty
lines. The fast one (tinyvgg/ops/cpu/) computes the same numbers but moves the
data differently: activations stored channels-last, chunks of images, dx as a
convolution, reused buffers, worker threads (and, in its channels-first
version, "wide" columns). One switch picks the path for a whole network:
tinyvgg.backend.use_fast(False), or TINYVGG_FAST=0 in the environment.

Here we train a small network on both paths, check that they agree, time them,
and then switch the fast path's optimisations off one at a time to measure what
each one buys.

Run:  python lessons/13_simple_and_fast.py   [--no-pause]
"""

import time
import tracemalloc

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.ops import choose_path, conv2d_backward, conv2d_forward, maxpool2d_backward, maxpool2d_forward
from tinyvgg.ops.cpu import conv as fast_conv
from tinyvgg.ops.cpu import parallel, scratch
from tinyvgg.optim import SGD

step("One switch, three paths")
say("""
    Every op asks one function, tinyvgg.ops.choose_path, which code to run:
    "gpu" (CUDA kernels) for an array on the GPU, "fast" for a NumPy array, and
    "simple" -- the textbook version -- whenever the fast paths are switched
    off. use_fast returns the previous setting, so it can be put back.
""")
x = np.zeros((1, 3, 8, 8))
print(f"backend.fast() = {backend.fast()}, choose_path(x) = {choose_path(x)!r}")
assert choose_path(x) == "fast"
old = backend.use_fast(False)
print(f"after use_fast(False): choose_path(x) = {choose_path(x)!r}")
assert choose_path(x) == "simple" and old is True
backend.use_fast(True)


def train(fast, steps=4):
    """A narrow VGG-11 (float64, no dropout) trained a few SGD steps on one batch
    (so the loss must fall), on one path. Returns (losses, final weights, seconds
    of the fastest step)."""
    old = backend.use_fast(fast)
    try:
        backend.seed(0)
        model = vgg("vgg11", num_classes=10, input_size=32, width=1 / 4, hidden=64, dropout=0.0,
                    init="glorot", dtype=np.float64)
        opt, loss_fn = SGD(model, lr=0.05, momentum=0.9), SoftmaxCrossEntropy()
        data = np.random.default_rng(0)
        xb, yb = data.standard_normal((16, 3, 32, 32)), data.integers(0, 10, 16)
        losses, times = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = loss_fn.forward(model.forward(xb, train=True), yb)
            model.backward(loss_fn.backward())
            opt.step()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
        return losses, [p.copy() for p in model.parameters()], min(times)
    finally:
        backend.use_fast(old)


step("Train the same network on both paths")
say("""
    Same seed, same batch (four steps on it, so the loss must fall), float64
    so that rounding differences stay tiny.
    Only the order of the additions differs between the paths, so the losses
    and the weights agree to about 12 digits, not bit for bit.
""")
simple_losses, simple_w, t_simple = train(False)
fast_losses, fast_w, t_fast = train(True)
print(f"textbook path: losses {np.round(simple_losses, 6)}  {t_simple * 1e3:7.1f} ms per step")
print(f"fast path:     losses {np.round(fast_losses, 6)}  {t_fast * 1e3:7.1f} ms per step")
worst = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)) for a, b in zip(simple_w, fast_w))
print(f"largest relative difference of the final weights: {worst:.1e}")
print(f"the fast path's step took {t_fast / t_simple:.2f}x the time of the textbook one")
np.testing.assert_allclose(simple_losses, fast_losses, rtol=1e-9)
assert worst < 1e-9
assert simple_losses[-1] < simple_losses[0]  # it trains


def best_time(fn, repeats=7):
    fn()  # warm-up (and the scratch buffers get allocated)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_pass(x, w, **kw):
    """One forward and backward pass of a 'same' convolution (3x3 or 1x1, no bias);
    returns (y, dx, dw)."""
    y, cache = conv2d_forward(x, w, None, 1, (w.shape[2] - 1) // 2, **kw)
    dx, dw, _ = conv2d_backward(np.ones_like(y), cache)
    return y, dx, dw


def measure(x, w, turn_off=None, turn_on=None, off_args=None):
    """(seconds with one optimisation off, seconds with it on) for conv_pass; checks
    that both give the same numbers. ``off_args``: extra arguments while off."""
    off_args = off_args or {}
    (turn_off or nothing)()
    try:
        off = conv_pass(x, w, **off_args)
        t_off = best_time(lambda: conv_pass(x, w, **off_args))
    finally:
        (turn_on or nothing)()
    on = conv_pass(x, w)
    t_on = best_time(lambda: conv_pass(x, w))
    for a, b in zip(off, on):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    return t_off, t_on


def switch(key, value):
    return lambda: fast_conv.OPTIMISATIONS.__setitem__(key, value)


def nothing():
    pass


step("What each optimisation buys, one at a time")
say("""
    Each line below times one convolution (forward and backward, float32) with
    one optimisation of the fast path switched off, then on, and checks that
    the numbers are the same. The layers are small so that this lesson is
    quick; on VGG's real sizes (tinyvgg/ops/cpu/conv.py, benchmarks/README.md)
    the effects are larger. Timings on a busy machine wobble by 10-20%.
""")
rng = np.random.default_rng(0)
big = rng.standard_normal((16, 32, 32, 32), dtype=np.float32)     # a 32x32 map, 32 channels
small = rng.standard_normal((32, 64, 4, 4), dtype=np.float32)      # a 4x4 map, 64 channels
w_big = rng.standard_normal((32, 32, 3, 3), dtype=np.float32)
w_small = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
w_1x1 = rng.standard_normal((32, 32, 1, 1), dtype=np.float32)
workers = parallel.workers()
limit = scratch.limit()
# (one sentence on what the optimisation buys, seconds with it off, seconds with it on)
rows = [
    ("The channels-last layout (activations stored (N, H, W, C), so im2col copies runs of "
     "3*C numbers and the product needs no folding), the default: {on_ms} ms instead of "
     "{off_ms} ms ({ratio}x) on a 4x4 map with 64 channels, against the channels-first "
     "version with all of its optimisations below.",
     *measure(small, w_small, switch("channels_last", False), switch("channels_last", True))),
]
# The rows below measure the channels-first version's own optimisations.
fast_conv.OPTIMISATIONS["channels_last"] = False
rows += [
    ("One product per chunk of images instead of one per image: on a 4x4 map, where a "
     "single image's product is only 16 columns wide, {on_ms} ms instead of {off_ms} ms ({ratio}x).",
     *measure(small, w_small, off_args={"chunk_bytes": 1})),
    ("Wide columns, which make im2col long contiguous copies for stride 1: {on_ms} ms "
     "instead of {off_ms} ms ({ratio}x) on a 32x32 map.",
     *measure(big, w_big, switch("wide_columns", False), switch("wide_columns", True))),
    ("dx as a convolution of dy with the flipped weights, instead of col2im's read-add-write "
     "passes: {on_ms} ms instead of {off_ms} ms ({ratio}x).",
     *measure(big, w_big, switch("dx_as_convolution", False), switch("dx_as_convolution", True))),
    ("dW's product oriented as cols @ dy.T (when K > F): {on_ms} ms instead of {off_ms} ms "
     "({ratio}x); it was chosen for multi-threaded OpenBLAS, where the other way ran several "
     "times slower.",
     *measure(big, w_big, switch("oriented_dw", False), switch("oriented_dw", True))),
    ("A 1x1 convolution without im2col (the image already is its column matrix): "
     "{on_ms} ms instead of {off_ms} ms ({ratio}x).",
     *measure(big, w_1x1, switch("pointwise", False), switch("pointwise", True))),
    ("Scratch buffers reused between calls, which saves the page faults of fresh memory: "
     "{on_ms} ms instead of {off_ms} ms ({ratio}x); large only at VGG's sizes.",
     *measure(big, w_big, lambda: scratch.set_limit(0), lambda: scratch.set_limit(limit))),
]
parallel.set_workers(2)  # two worker threads (one per core of a small machine), then one
try:
    fast_conv.OPTIMISATIONS["channels_last"] = True
    rows.append(("Chunks on two worker threads instead of one: {on_ms} ms instead of {off_ms} ms "
                 "({ratio}x), when a second core is free.",
                 *measure(big, w_big, lambda: parallel.set_workers(1), lambda: parallel.set_workers(2))))
finally:
    parallel.set_workers(workers)
    fast_conv.OPTIMISATIONS["channels_last"] = True

for sentence, t_off, t_on in rows:
    print("- " + sentence.format(on_ms=f"{t_on * 1e3:.2f}", off_ms=f"{t_off * 1e3:.2f}",
                                 ratio=f"{t_off / t_on:.2f}"))
assert len(rows) == 8 and all(t_off > 0 and t_on > 0 for _, t_off, t_on in rows)
say("""
    A ratio near 1 means "no gain at this size" (or a machine too busy to
    show it), not that the idea is wrong: benchmarks/bench_layers.py measures
    each on VGG's real layers.
""")

step("What chunking buys: memory")
say("""
    The textbook version keeps the columns of the whole batch from forward to
    backward: C*3*3 numbers per output position, 9x the input. The fast path
    keeps only the input and recomputes the columns chunk by chunk. tracemalloc
    counts the peak of NumPy's allocations during one forward and backward.
""")


def peak_bytes(fast):
    old = backend.use_fast(fast)
    scratch.clear()
    tracemalloc.start()
    try:
        conv_pass(big, w_big)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        backend.use_fast(old)


peak_simple, peak_fast = peak_bytes(False), peak_bytes(True)
print(f"input {big.nbytes / 2**20:.1f} MiB; peak during forward+backward: textbook "
      f"{peak_simple / 2**20:.1f} MiB, fast {peak_fast / 2**20:.1f} MiB")
assert peak_simple > peak_fast

step("And the pooling: VGG's 2x2 windows take an early branch")
say("""
    Max-pooling's textbook version walks the window offsets with a running
    maximum; for 2x2 windows with stride 2 the fast path compares the four
    corners pairwise and stores the winner in one byte.
""")
xp_ = rng.standard_normal((32, 32, 32, 32), dtype=np.float32)


def pool_pass():
    y, cache = maxpool2d_forward(xp_, 2, 2)
    return y, maxpool2d_backward(np.ones_like(y), cache)


backend.use_fast(False)
try:
    y_simple, dx_simple = pool_pass()
    t_pool_simple = best_time(pool_pass)
finally:
    backend.use_fast(True)
y_fast, dx_fast = pool_pass()
t_pool_fast = best_time(pool_pass)
print(f"textbook {t_pool_simple * 1e3:.2f} ms, 2x2 branch {t_pool_fast * 1e3:.2f} ms "
      f"-> {t_pool_simple / t_pool_fast:.2f}x")
np.testing.assert_array_equal(y_simple, y_fast)
np.testing.assert_array_equal(dx_simple, dx_fast)

_lesson.done()
