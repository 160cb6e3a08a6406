"""Lesson 6: the paper's first idea -- a stack of three 3x3 convolutions sees a 7x7 region.

Section 2.3 of the paper: "a stack of two 3x3 conv. layers (without spatial
pooling in between) has an effective receptive field of 5x5; three such layers
have a 7x7 effective receptive field." Why prefer the stack to one 7x7 layer?
Three non-linearities instead of one, and fewer weights: 3 (3^2 C^2) = 27 C^2
against 7^2 C^2 = 49 C^2. We measure the first claim and count the second.

Run:  python lessons/06_three_3x3_see_7x7.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.layers import Conv2d, ReLU, num_params

S = 15            # a 15x15 input, large enough that the borders play no part
CENTRE = S // 2   # pixel (7, 7)


def receptive_field(layers, size=S):
    """Which input pixels can change the centre output pixel?

    Run forward, then backward with dy = a one-hot at the centre of the output:
    dx is the gradient of that single output with respect to every input pixel,
    non-zero exactly where the input reaches it.
    """
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 1, size, size))  # positive
    y = x
    for layer in layers:
        y = layer.forward(y)
    dy = np.zeros_like(y)
    dy[0, 0, size // 2, size // 2] = 1.0
    for layer in reversed(layers):
        dy = layer.backward(dy)
    return dy[0, 0] != 0


def positive_conv(k):
    """A 1-channel Conv2d (k x k, 'same' padding) with positive weights, so that
    no gradient can cancel or be switched off by a ReLU by chance."""
    conv = Conv2d(1, 1, kernel_size=k, padding=k // 2, dtype=np.float64)
    conv.params["weight"][...] = np.random.default_rng(k).uniform(0.5, 1.5, (1, 1, k, k))
    return conv


def square_side(mask):
    """The side of the square the mask fills -- asserting it IS a filled square."""
    rows, cols = np.nonzero(mask)
    side = rows.max() - rows.min() + 1
    assert cols.max() - cols.min() + 1 == side and mask.sum() == side * side, "not a filled square"
    assert (rows.min() + rows.max()) / 2 == CENTRE == (cols.min() + cols.max()) / 2, "not centred"
    return side


backend.seed(0)

step("How to measure a receptive field: backpropagate from one output pixel")
say("""
    The receptive field of an output pixel is the set of input pixels it
    depends on. Backpropagation tells us exactly that: set dy to zero
    everywhere except a 1 at the centre output pixel and run backward; dx is
    then d(centre output)/d(input), non-zero precisely where the input can
    reach the centre. (We use positive inputs and weights, so every ReLU is
    active and no gradient vanishes by accident.)
""")
one = receptive_field([positive_conv(3)])
print(f"One Conv2d(3x3, padding 1): input pixels that reach the centre ({one.sum()} of them):")
print(one[CENTRE - 4:CENTRE + 5, CENTRE - 4:CENTRE + 5].astype(int))
assert square_side(one) == 3

step("Stack them: 3x3, then 5x5, then 7x7")
masks = {}
for depth in (1, 2, 3):
    layers = []
    for _ in range(depth):
        layers += [positive_conv(3), ReLU()]
    masks[depth] = receptive_field(layers)
    side = square_side(masks[depth])
    print(f"{depth} x (Conv2d 3x3 + ReLU): receptive field {side}x{side}")
    assert side == 2 * depth + 1
print("\nThree layers -- the centre 9x9 of the 15x15 input (1 = reaches the centre output):")
print(masks[3][CENTRE - 4:CENTRE + 5, CENTRE - 4:CENTRE + 5].astype(int))
say("""
    Each 3x3 layer widens the field by one pixel on every side: 3, 5, 7.
    Every output of layer 2 looks at a 3x3 patch of layer 1, each of whose
    pixels looks at a 3x3 patch of the input.
""")
single7 = receptive_field([positive_conv(7), ReLU()])
print(f"One Conv2d(7x7, padding 3): receptive field {square_side(single7)}x{square_side(single7)}")
np.testing.assert_array_equal(masks[3], single7)
print("Exactly the same input pixels as the three-layer stack.")

step("A picture of the three receptive fields")
plt = _lesson.pyplot()
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for ax, (title, m) in zip(axes, [("1 x 3x3", masks[1]), ("2 x 3x3", masks[2]),
                                 ("3 x 3x3", masks[3]), ("1 x 7x7", single7)]):
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1.3)
    ax.plot(CENTRE, CENTRE, "r+", ms=10)
    ax.set_title(f"{title}: {square_side(m)}x{square_side(m)}")
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Input pixels with non-zero gradient from the centre output pixel (red +)")
_lesson.save(fig, "06_receptive_field.png")

step("Counting weights: 27 C^2 against 49 C^2")
say("""
    Take C channels in and out, as inside a VGG block. One 3x3 layer has
    3*3*C*C weights (plus C biases); three of them 27 C^2. One 7x7 layer has
    49 C^2: 81% more, for the same receptive field. We count the parameters
    of real tinyvgg layers for C = 64, 256 and 512.
""")
print(f"{'C':>5} {'3 x Conv2d(3x3)':>17} {'1 x Conv2d(7x7)':>17} {'ratio':>7}")
for C in (64, 256, 512):
    stack = sum(num_params(Conv2d(C, C, 3, padding=1)) for _ in range(3))
    big = num_params(Conv2d(C, C, 7, padding=3))
    print(f"{C:5d} {stack:17,d} {big:17,d} {big / stack:7.3f}")
    assert stack == 27 * C * C + 3 * C      # 3 (3^2 C^2) weights + 3 C biases
    assert big == 49 * C * C + C            # 7^2 C^2 weights + C biases
    assert abs((big - C) / (stack - 3 * C) - 49 / 27) < 1e-12
print(f"\n49/27 = {49 / 27:.3f}: the 7x7 layer needs 81% more weights.")
say("""
    The paper reads this as a regularisation: the stack is like a 7x7 filter
    forced to decompose into three 3x3 ones (with non-linearities in between).
""")

step("Three non-linearities instead of one")
say("""
    The stack applies a ReLU after each of its three convolutions, the single
    layer only once, so the stack's decision function is more discriminative
    (section 2.3). Counting the ReLUs in each option, as the layers are built:
""")
stack = [Conv2d(8, 8, 3, padding=1), ReLU(), Conv2d(8, 8, 3, padding=1), ReLU(),
         Conv2d(8, 8, 3, padding=1), ReLU()]
single = [Conv2d(8, 8, 7, padding=3), ReLU()]
for name, layers in [("three 3x3", stack), ("one 7x7", single)]:
    n_relu = sum(isinstance(layer, ReLU) for layer in layers)
    print(f"{name}: {n_relu} ReLU(s)")
    for layer in layers:
        print(f"    {layer!r}")
assert sum(isinstance(layer, ReLU) for layer in stack) == 3
assert sum(isinstance(layer, ReLU) for layer in single) == 1
x = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32)
ys, y1 = x, x
for layer in stack:
    ys = layer.forward(ys)
for layer in single:
    y1 = layer.forward(y1)
print(f"\nBoth map {x.shape} to {ys.shape} / {y1.shape}: the same shape, the same field.")
assert ys.shape == y1.shape == x.shape

_lesson.done()
