"""Lesson 1: convolution two ways -- four nested loops, then im2col and one matrix product.

Every layer of VGG's body is a 3x3 convolution with stride 1 and padding 1
(paper, section 2.1). Here we compute one twice: with the plain loops of
tinyvgg.reference, and the way tinyvgg computes it: copy every 3x3 window into a
column (im2col), then multiply all the columns by the filter matrix at once.
That is literally the code at the top of tinyvgg/ops/conv.py
(conv2d_forward_simple, which every network runs with TINYVGG_FAST=0); the
default fast path computes the same numbers with the data moved more cleverly
(lesson 13 takes it apart).

Run:  python lessons/01_convolution_two_ways.py   [--no-pause]
"""

import time

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg.ops import conv2d_forward, conv2d_forward_simple, im2col
from tinyvgg.reference import conv2d_forward_loop

step("A tiny image and a filter")
say("""
    One image (N=1) with one channel (C=1), 4x4 pixels numbered 0..15, and one
    3x3 filter (F=1). Without padding, a 3x3 window fits in 2x2 places, so the
    output is 2x2.
""")
x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
w = np.eye(3).reshape(1, 1, 3, 3)
print("image x[0, 0]:\n", x[0, 0])
print("filter w[0, 0] (it adds up the diagonal of its window):\n", w[0, 0])

step("Way 1: loops (tinyvgg.reference.conv2d_forward_loop)")
say("""
    For every output pixel (i, j): take the 3x3 window of x whose top-left
    corner is (i, j), multiply it elementwise by the filter and add it all up.
""")
y_loop = conv2d_forward_loop(x, w)
print("y by loops:\n", y_loop[0, 0])
by_hand = np.sum(x[0, 0, 0:3, 0:3] * w[0, 0])
print(f"output (0, 0) by hand = sum(window * filter) = {by_hand}")
assert y_loop.shape == (1, 1, 2, 2)
assert y_loop[0, 0, 0, 0] == by_hand

step("Way 2a: im2col -- every window becomes one column")
say("""
    im2col copies each 3x3 window into a column of length C*3*3 = 9. There are
    OH*OW = 4 windows, so we get a 9x4 matrix per image. Read a column top to
    bottom and you read a window row by row.
""")
cols = im2col(x, kernel_size=3)
print("cols[0] (shape %s):" % (cols[0].shape,))
print(cols[0])
for p in range(4):
    i, j = divmod(p, 2)
    window = x[0, 0, i:i + 3, j:j + 3]
    print(f"  column {p} = window at ({i}, {j}) = {window.ravel()}")
    np.testing.assert_array_equal(cols[0, :, p], window.ravel())
say("""
    Notice the repeats: pixel 5 sits in all four windows, so it is copied four
    times. im2col trades memory (for a large image, 3x3 windows make nearly
    9 copies of every pixel) for speed: one big matrix product is what CPUs
    and GPUs do fastest.
""")

step("Way 2b: ... and one matrix product does all the arithmetic")
say("""
    Flatten the filter into a row of 9 numbers (a 1x9 matrix). The product
    (1x9) @ (9x4) gives all 4 outputs at once: each entry is a dot product
    of the filter with one window, which is exactly what the loops computed.
""")
w_row = w.reshape(1, -1)
y_mat = (w_row @ cols[0]).reshape(2, 2)
print("filter as a row:", w_row)
assert y_mat[0, 0] == 0 + 5 + 10  # the diagonal of the first window
print("w_row @ cols, reshaped to 2x2:\n", y_mat)
np.testing.assert_array_equal(y_mat, y_loop[0, 0])
print("identical to the loops.")

step("A VGG-sized layer in miniature: many channels, many filters, padding 1")
say("""
    A real layer has C input channels and F filters. Each column is then
    C*3*3 long (one 3x3 patch from every channel), and the filters form an
    F x (C*9) matrix: weight.reshape(F, -1). Padding 1 keeps the output as
    large as the input: the "same" convolution VGG uses everywhere.
""")
rng = np.random.default_rng(0)
N, C, H, W, F = 2, 8, 12, 12, 16
x = rng.standard_normal((N, C, H, W))
w = rng.standard_normal((F, C, 3, 3))
b = rng.standard_normal(F)
cols = im2col(x, 3, stride=1, padding=1)
print(f"x {x.shape}  weight {w.shape}")
print(f"cols {cols.shape} = (N, C*3*3, OH*OW) = ({N}, {C * 9}, {H * W})")
print(f"weight.reshape(F, -1) {w.reshape(F, -1).shape}")
y_mat = (w.reshape(F, -1) @ cols + b.reshape(1, F, 1)).reshape(N, F, H, W)
t0 = time.perf_counter()
y_loop = conv2d_forward_loop(x, w, b, padding=1)
t_loop = time.perf_counter() - t0
t0 = time.perf_counter()
y_simple, _ = conv2d_forward_simple(x, w, b, padding=1)
t_simple = time.perf_counter() - t0
t0 = time.perf_counter()
y_fast, _ = conv2d_forward(x, w, b, padding=1)
t_fast = time.perf_counter() - t0
print(f"output {y_simple.shape}: same H and W as the input, thanks to padding 1")
print(f"loops:                                  {t_loop * 1e3:8.2f} ms")
print(f"im2col + matmul (conv2d_forward_simple): {t_simple * 1e3:8.2f} ms")
print(f"the fast path (conv2d_forward):          {t_fast * 1e3:8.2f} ms")
print(f"largest difference loops vs im2col: {np.abs(y_loop - y_simple).max():.2e}")
say("""
    conv2d_forward_simple is the three lines above (im2col, one product, the
    bias), so its result is identical to ours bit for bit. conv2d_forward, what
    the layers call, takes the fast path; it agrees to the last few digits.
""")
np.testing.assert_array_equal(y_simple, y_mat)
np.testing.assert_allclose(y_mat, y_loop, rtol=1e-10, atol=1e-10)
np.testing.assert_allclose(y_fast, y_loop, rtol=1e-10, atol=1e-10)
assert y_simple.shape == y_fast.shape == (N, F, H, W)

step("Stride 2 -- fewer windows, fewer columns")
say("""
    With stride 2 the windows start every second pixel: fewer columns, a
    smaller output. (VGG never strides its convolutions -- the 2x2 max-pools do
    the down-sampling -- but im2col handles it just the same.)
""")
cols2 = im2col(x, 3, stride=2, padding=1)
y2, _ = conv2d_forward(x, w, b, stride=2, padding=1)
print(f"cols {cols2.shape}, output {y2.shape}")
np.testing.assert_allclose(y2, conv2d_forward_loop(x, w, b, stride=2, padding=1), rtol=1e-10, atol=1e-10)
assert y2.shape == (N, F, 6, 6)

step("A picture of the column matrix")
plt = _lesson.pyplot()
x_small = np.arange(25, dtype=float).reshape(1, 1, 5, 5)
c_small = im2col(x_small, 3)[0]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
axes[0].imshow(x_small[0, 0], cmap="viridis")
axes[0].set_title("5x5 image (pixel numbers)")
for (i, j), v in np.ndenumerate(x_small[0, 0]):
    axes[0].text(j, i, int(v), ha="center", va="center", color="w", fontsize=8)
axes[1].imshow(c_small, cmap="viridis", aspect="auto")
axes[1].set_title("im2col: 9 rows (window offsets) x 9 columns (windows)")
axes[1].set_xlabel("window (output pixel)")
axes[1].set_ylabel("offset in the 3x3 window")
for (i, j), v in np.ndenumerate(c_small):
    axes[1].text(j, i, int(v), ha="center", va="center", color="w", fontsize=7)
_lesson.save(fig, "01_im2col.png")
say("""
    Each column of the right panel is one 3x3 window of the left image. The
    diagonal stripes are the same pixel showing up in neighbouring windows.
""")
assert c_small.shape == (9, 9)

_lesson.done()
