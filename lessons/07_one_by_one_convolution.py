"""Lesson 7: the paper's second idea -- 1x1 convolutions.

Configuration C (paper, Table 1 and section 2.3) puts a 1x1 convolution at the
end of blocks 3, 4 and 5. The paper calls it "a way to increase the
non-linearity of the decision function without affecting the receptive fields
of the conv. layers": a linear projection onto a space of the same
dimensionality, followed by a ReLU. We check each part of that sentence.

Run:  python lessons/07_one_by_one_convolution.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.layers import Conv2d, ReLU, num_params


def receptive_field_side(layers, size=15):
    """Lesson 6's measurement: backpropagate a one-hot at the centre output
    pixel; return the side of the (asserted square) set of inputs it reaches."""
    y = np.random.default_rng(0).uniform(0.5, 1.5, (1, 1, size, size))  # positive input
    for layer in layers:
        y = layer.forward(y)
    dy = np.zeros_like(y)
    dy[0, 0, size // 2, size // 2] = 1.0
    for layer in reversed(layers):
        dy = layer.backward(dy)
    rows, cols = np.nonzero(dy[0, 0])
    side = rows.max() - rows.min() + 1
    assert cols.max() - cols.min() + 1 == side and len(rows) == side * side
    return side


def positive_conv(k):
    """1 channel in and out, k x k, 'same' padding, positive weights (lesson 6)."""
    conv = Conv2d(1, 1, kernel_size=k, padding=k // 2, dtype=np.float64)
    conv.params["weight"][...] = np.random.default_rng(k).uniform(0.5, 1.5, (1, 1, k, k))
    return conv

backend.seed(0)
rng = np.random.default_rng(0)

step("A 1x1 convolution is one matrix applied to every pixel")
say("""
    A 1x1 filter looks at one pixel, through all C input channels: its output
    at (i, j) is a weighted sum of the C values x[:, i, j]. F such filters form
    an F x C matrix W, and every output pixel is W @ x[:, i, j] + b -- the same
    fully connected layer, applied at every position.
""")
N, C, F, H, W = 2, 6, 4, 5, 5
conv = Conv2d(C, F, kernel_size=1, dtype=np.float64)
conv.params["weight"][...] = rng.standard_normal((F, C, 1, 1))
conv.params["bias"][...] = rng.standard_normal(F)
x = rng.standard_normal((N, C, H, W))
y = conv.forward(x)
Wm = conv.params["weight"][:, :, 0, 0]   # (F, C)
b = conv.params["bias"]
print(f"x {x.shape} -> Conv2d({C}, {F}, kernel_size=1) -> y {y.shape};  weight as a matrix {Wm.shape}")
i, j = 3, 1
print(f"\nat pixel ({i}, {j}) of image 0:")
print("  x[0, :, i, j]            =", x[0, :, i, j])
print("  W @ x[0, :, i, j] + b    =", Wm @ x[0, :, i, j] + b)
print("  y[0, :, i, j] (the conv) =", y[0, :, i, j])
np.testing.assert_allclose(y[0, :, i, j], Wm @ x[0, :, i, j] + b, rtol=1e-12)

step("All pixels at once: a matmul over the channel axis")
say("""
    Move channels last, so x becomes a stack of N*H*W row vectors of length C,
    and multiply by W.T: one (N*H*W, C) @ (C, F) product computes the whole
    layer. (tinyvgg's conv2d_forward does exactly this for 1x1 kernels: it
    skips im2col, because the image already is its own column matrix.)
""")
rows = np.moveaxis(x, 1, -1).reshape(-1, C)             # (N*H*W, C)
y_mat = (rows @ Wm.T + b).reshape(N, H, W, F)           # (N, H, W, F)
y_mat = np.moveaxis(y_mat, -1, 1)                       # back to (N, F, H, W)
print(f"rows {rows.shape} @ W.T {Wm.T.shape} -> {(rows @ Wm.T).shape} -> reshaped {y_mat.shape}")
np.testing.assert_allclose(y_mat, y, rtol=1e-12, atol=1e-12)
print("identical to the convolution at every pixel.")
print(f"parameters: {num_params(conv)} = F*C + F = {F * C} + {F}")
assert num_params(conv) == F * C + F

step("On its own it is linear; followed by a ReLU it is not")
say("""
    A linear map satisfies f(a + b) = f(a) + f(b) (without the bias). Stacking
    linear maps gives another linear map, so a 1x1 conv on its own adds
    nothing a neighbouring layer could not absorb. The ReLU after it is what
    adds expressive power -- a non-linearity -- at the cost of very few weights.
""")
lin = Conv2d(C, C, 1, bias=False, dtype=np.float64)     # C -> C, as in configuration C
lin.params["weight"][...] = rng.standard_normal((C, C, 1, 1))
relu = ReLU()
a, c = rng.standard_normal((2, 1, C, H, W))


def conv_then_relu(v):
    return relu.forward(lin.forward(v))


gap_lin = np.abs(lin.forward(a + c) - (lin.forward(a) + lin.forward(c))).max()
gap_relu = np.abs(conv_then_relu(a + c) - (conv_then_relu(a) + conv_then_relu(c))).max()
print(f"1x1 conv alone:   max |f(a+b) - f(a) - f(b)| = {gap_lin:.1e}   (linear)")
print(f"1x1 conv + ReLU:  max |f(a+b) - f(a) - f(b)| = {gap_relu:.2f}   (not linear)")
assert gap_lin < 1e-12 and gap_relu > 0.1

step("... and it leaves the receptive field unchanged")
say("""
    Measured the same way as in lesson 6 (backpropagate a one-hot from the
    centre output pixel): a 1x1 conv alone sees 1x1; after a 3x3 conv the
    field is still 3x3; a block of configuration C, 3x3 - 3x3 - 1x1, sees
    5x5 -- exactly what the 3x3 - 3x3 of configuration B sees.
""")
cases = {
    "1x1": [positive_conv(1), ReLU()],
    "3x3": [positive_conv(3), ReLU()],
    "3x3 -> 1x1": [positive_conv(3), ReLU(), positive_conv(1), ReLU()],
    "3x3 -> 3x3": [positive_conv(3), ReLU(), positive_conv(3), ReLU()],
    "3x3 -> 3x3 -> 1x1": [positive_conv(3), ReLU(), positive_conv(3), ReLU(),
                          positive_conv(1), ReLU()],
}
sides = {}
for name, layers in cases.items():
    sides[name] = receptive_field_side(layers)
    print(f"{name:20} receptive field {sides[name]}x{sides[name]}")
assert sides == {"1x1": 1, "3x3": 3, "3x3 -> 1x1": 3, "3x3 -> 3x3": 5, "3x3 -> 3x3 -> 1x1": 5}

step("What it costs, and what the paper found")
say("""
    Configuration C replaces the third 3x3 conv of blocks 3-5 in D by a 1x1:
    per layer 1x1 C^2 weights instead of 3x3 C^2, a ninth. The paper found
    C better than B (the extra non-linearity helps) but worse than D, which
    uses 3x3 there: capturing spatial context with non-trivial receptive
    fields matters too (section 4.1).
""")
print(f"{'channels':>9} {'Conv2d 1x1':>12} {'Conv2d 3x3':>12}")
for ch in (256, 512):
    p1, p3 = num_params(Conv2d(ch, ch, 1)), num_params(Conv2d(ch, ch, 3, padding=1))
    print(f"{ch:9d} {p1:12,d} {p3:12,d}")
    assert p3 - ch == 9 * (p1 - ch)

_lesson.done()
