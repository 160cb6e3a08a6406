"""Lesson 3: max-pooling, ReLU and dropout -- forward, backward, and where the gradient goes.

VGG's other layers (paper, section 2.1 and 3.1): 2x2 max-pooling with stride 2
after each block of convolutions, ReLU after every convolution and fully
connected layer, and dropout (p = 0.5) after the first two fully connected
layers. None of them has a weight, but each decides where the gradient goes.

Run:  python lessons/03_pool_relu_dropout.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.gradcheck import check_gradients
from tinyvgg.layers import Dropout, MaxPool2d, ReLU
from tinyvgg.reference import maxpool2d_backward_loop, maxpool2d_forward_loop

step("Max-pooling forward: the largest value of each 2x2 window")
x = np.array([[1, 3, 2, 0],
              [4, 2, 1, 8],
              [0, 5, 6, 6],
              [3, 1, 6, 6]], dtype=np.float64).reshape(1, 1, 4, 4)
pool = MaxPool2d(2, 2)
y = pool.forward(x)
print("x:\n", x[0, 0])
print("y = MaxPool2d(2, 2)(x):\n", y[0, 0])
np.testing.assert_array_equal(y[0, 0], [[4, 8], [5, 6]])
np.testing.assert_array_equal(y, maxpool2d_forward_loop(x))
say("""
    The 4x4 map became 2x2: each pool halves height and width, and VGG's five
    pools take 224 down to 7.
""")

step("Max-pooling backward: the whole gradient goes to the winner")
say("""
    Only the maximum of a window affected the output, so only it gets a
    gradient: dx is zero everywhere except at each window's winner, which
    receives that window's dy unchanged. We send dy = [[10, 20], [30, 40]].
""")
dy = np.array([[10, 20], [30, 40]], dtype=np.float64).reshape(1, 1, 2, 2)
dx = pool.backward(dy)
print("dx:\n", dx[0, 0])
np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [10, 0, 0, 20], [0, 30, 40, 0], [0, 0, 0, 0]])
np.testing.assert_array_equal(dx, maxpool2d_backward_loop(dy, x))

step("Ties: the first maximum in reading order takes it all")
say("""
    The bottom-right window is [[6, 6], [6, 6]]: four equal maxima. Splitting
    the gradient four ways would be one choice; tinyvgg
    picks ONE winner: the first in row-major order (top row first, then left
    to right). So the 40 above went to the top-left 6 only. Another tie, in
    the top-right of the window this time:
""")
t = np.array([[1, 7], [7, 2]], dtype=np.float64).reshape(1, 1, 2, 2)
p2 = MaxPool2d(2, 2)
p2.forward(t)
dt = p2.backward(np.ones((1, 1, 1, 1)))
print("window:\n", t[0, 0])
print("gradient:\n", dt[0, 0])
np.testing.assert_array_equal(dt[0, 0], [[0, 1], [0, 0]])
assert dx[0, 0, 2, 2] == 40 and dx[0, 0, 3, 3] == 0
say("""
    Whatever the rule, the total is preserved: the gradients in dx add up to
    the gradients in dy. (At a tie the max has no derivative; lesson 5 shows
    how gradient checking deals with such kinks.)
""")
assert dx.sum() == dy.sum()

step("ReLU: y = max(x, 0); the gradient passes where x > 0")
relu = ReLU()
x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
y = relu.forward(x)
d = relu.backward(np.ones_like(x))
# (+ 0.0 only tidies the printout: x * 0 for a negative x is -0.0, which equals 0)
print(f"x                {x}\nReLU(x)          {y + 0.0}\ngradient (dy=1)  {d}")
np.testing.assert_array_equal(y, [0, 0, 0, 0.5, 2])
np.testing.assert_array_equal(d, [0, 0, 0, 1, 1])
say("""
    The gradient is a gate: 1 where the unit was active, 0 where it was off.
    At exactly x = 0 the slope is undefined; tinyvgg uses 0 there. A unit that
    is off for every input never gets a gradient again: a "dead" ReLU.
""")

step("Dropout at training time: zero half the units, double the rest")
say("""
    Dropout(p=0.5) zeroes each unit with probability 0.5. tinyvgg uses
    INVERTED dropout: the survivors are multiplied by 1/(1-p) = 2, so the
    expected value of every unit stays what it was.
""")
backend.seed(0)
drop = Dropout(0.5)
small = np.arange(1, 11, dtype=np.float64)
print("x               ", small)
print("dropout(x)      ", drop.forward(small, train=True))
g = drop.backward(np.ones_like(small))
print("gradient (dy=1) ", g)
print("The gradient uses the same mask: a dropped unit gets none, a kept one gets x2.")
out = drop.forward(small, train=True)  # a fresh mask
np.testing.assert_array_equal(drop.backward(np.ones_like(small)) * small, out)
assert set(np.unique(out / small)) <= {0.0, 2.0}

ones = np.ones(200_000)
kept = drop.forward(ones, train=True)
print(f"\nOn 200,000 ones: fraction kept {np.mean(kept > 0):.4f}, mean output {kept.mean():.4f}")
assert abs(np.mean(kept > 0) - 0.5) < 0.01
assert abs(kept.mean() - 1.0) < 0.02

step("Dropout at test time: nothing to do -- that is why we scale while training")
say("""
    At test time every unit is kept. Without the training-time x2, the next
    layer would see inputs twice as large as during training, and we would
    have to remember to halve them (the original dropout paper scaled the
    weights at test time instead). With inverted dropout the test-time pass
    is simply the identity, so evaluation code needs no special case.
""")
test_out = drop.forward(small, train=False)
print("dropout(x, train=False) =", test_out)
np.testing.assert_array_equal(test_out, small)
plain = np.where(kept > 0, 1.0, 0.0)  # what dropout WITHOUT rescaling would give
print(f"without the 1/(1-p) scale the training mean would be {plain.mean():.3f} instead of 1")
assert abs(plain.mean() - 0.5) < 0.01

step("All three checked numerically")
say("""
    Central differences (lesson 5) agree with backward() for all three layers,
    on random float64 inputs. (Dropout is checked with a fixed mask: the
    checker reseeds before every forward pass.)
""")
rng = np.random.default_rng(1)
for layer, shape in [(MaxPool2d(2, 2), (2, 3, 6, 6)), (ReLU(), (2, 3, 5, 5)), (Dropout(0.5), (4, 20))]:
    report = check_gradients(layer, rng.standard_normal(shape))
    print(f"{layer!r:32} max relative error {report.max_error:.1e}")
    assert report.passed(1e-6), report

_lesson.done()
