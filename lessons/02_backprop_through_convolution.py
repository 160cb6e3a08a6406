"""Lesson 2: backpropagation through a convolution -- where dW and dx come from.

The paper trains with mini-batch gradient descent on back-propagated
gradients (section 3.1). For a convolution written as one matrix product,

    Y = W2 @ cols          W2 = weight.reshape(F, C*KH*KW),  cols = im2col(x)

the backward pass is the backward pass of a matrix product, plus one extra
move: col2im, which folds the column gradients back onto the image and ADDS
the contributions of windows that overlap.

Run:  python lessons/02_backprop_through_convolution.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.gradcheck import check_gradients
from tinyvgg.layers import Conv2d
from tinyvgg.ops import col2im, conv2d_backward, conv2d_forward, im2col
from tinyvgg.reference import conv2d_backward_loop

rng = np.random.default_rng(0)

step("The matrix product rule")
say("""
    If Y = A @ B and we are handed dY (the gradient of the loss with respect to
    Y, same shape as Y), then dA = dY @ B.T and dB = A.T @ dY. Each entry of A
    meets a row of B in the product, so its gradient collects dY along that
    row. Shapes check it: dA must have A's shape, and there is only one way to
    multiply dY and B to get it.
""")
F, C, H, W = 4, 3, 6, 6
x = rng.standard_normal((1, C, H, W))
w = rng.standard_normal((F, C, 3, 3))
cols = im2col(x, 3, padding=1)[0]          # (C*9, H*W)
w2 = w.reshape(F, -1)                      # (F, C*9)
dy = rng.standard_normal((F, H * W))       # pretend this came from the layer above
dw2 = dy @ cols.T
dcols = w2.T @ dy
print(f"W2 {w2.shape} @ cols {cols.shape} = Y {dy.shape}")
print(f"dW2   = dY @ cols.T : {dy.shape} @ {cols.T.shape} = {dw2.shape}  (the shape of W2)")
print(f"dcols = W2.T @ dY   : {w2.T.shape} @ {dy.shape} = {dcols.shape}  (the shape of cols)")
assert dw2.shape == w2.shape and dcols.shape == cols.shape

step("dW: every window, weighted by how much its output mattered")
say("""
    dW2 = dY @ cols.T is a sum over output positions p of dY[:, p] times the
    window at p. With a batch, the same sum also runs over the images: a
    filter is shared by every position of every image, so it collects
    gradient from all of them.
""")
dw_sum = sum(np.outer(dy[:, p], cols[:, p]) for p in range(H * W))
np.testing.assert_allclose(dw2, dw_sum, rtol=1e-12)
print("dY @ cols.T equals the sum over all 36 positions of outer(dY[:, p], window p).")

step("dx: col2im folds the columns back -- and adds where windows overlap")
say("""
    dcols holds one gradient for every COPY of a pixel that im2col made. A
    pixel that appears in four windows has four copies, each of which fed
    the loss; by the chain rule its gradient is the SUM of the four. col2im
    is exactly that: it scatters each column entry back to the pixel it came
    from, adding up. Fold columns of all ones and you count, for each pixel,
    how many windows saw it:
""")
counts = col2im(np.ones((1, 9, 4)), (1, 1, 4, 4), 3)
print("4x4 image, 3x3 windows, no padding -- windows covering each pixel:")
print(counts[0, 0])
np.testing.assert_array_equal(counts[0, 0], [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
counts_pad = col2im(np.ones((1, 9, 36)), (1, 1, 6, 6), 3, padding=1)
print("6x6 image, 3x3 windows, padding 1 (VGG's setting): 9 in the middle, fewer at the border:")
print(counts_pad[0, 0])
assert counts_pad[0, 0, 2, 2] == 9 and counts_pad[0, 0, 0, 0] == 4

step("col2im is the adjoint (the 'transpose') of im2col")
say("""
    im2col is a linear map from images to columns; col2im is its transpose,
    just as B.T appears in dA = dY @ B.T. The defining property:
    <im2col(x), c> = <x, col2im(c)> for every image x and columns c.
""")
c = rng.standard_normal((1, C * 9, H * W))
lhs = np.sum(im2col(x, 3, padding=1) * c)
rhs = np.sum(x * col2im(c, x.shape, 3, padding=1))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
np.testing.assert_allclose(lhs, rhs, rtol=1e-12)

step("tinyvgg's conv2d_backward against the loop version")
say("""
    The loop version (tinyvgg.reference.conv2d_backward_loop) does it the
    obvious way: for every output, add dy * window into dW and dy * filter into
    the window of dx. The fast version does the two matrix products and
    col2im. The bias gradient is simply dy summed over batch and positions.
""")
x = rng.standard_normal((2, C, H, W))
b = rng.standard_normal(F)
y, cache = conv2d_forward(x, w, b, padding=1)
dy = rng.standard_normal(y.shape)
dx, dw, db = conv2d_backward(dy, cache)
dx_l, dw_l, db_l = conv2d_backward_loop(dy, x, w, padding=1)
for name, fast, slow in [("dx", dx, dx_l), ("dW", dw, dw_l), ("db", db, db_l)]:
    print(f"{name}: shape {fast.shape}, largest difference from the loops {np.abs(fast - slow).max():.1e}")
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)
np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)))

step("Checked numerically: central differences on a real Conv2d layer")
say("""
    Last, the independent check: nudge each input and weight by +-h, see how
    sum(dy * y) changes, and compare with what backward() claims (lesson 5
    explains the method). In float64 they agree to far better than 1e-6 (the tolerance asserted).
""")
backend.seed(0)
layer = Conv2d(3, 4, kernel_size=3, padding=1, dtype=np.float64)
layer.params["weight"][...] = rng.standard_normal((4, 3, 3, 3))
layer.params["bias"][...] = rng.standard_normal(4)
report = check_gradients(layer, rng.standard_normal((2, 3, 5, 5)))
print(report)
assert report.passed(1e-6), report

_lesson.done()
