"""Lesson 5: gradient checking -- how we know a hand-written backward pass is right.

Every backward pass in tinyvgg is written by hand, and a wrong gradient does
not crash: the network just learns badly. So each one is compared with a
numerical derivative (tinyvgg.gradcheck). This lesson takes the method apart:
central differences, relative error, why float64, and the kinks of ReLU.

Run:  python lessons/05_gradient_checking.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.gradcheck import check_gradients, numerical_gradient, relative_error
from tinyvgg.layers import Conv2d, ReLU
from tinyvgg.losses import SoftmaxCrossEntropy

rng = np.random.default_rng(0)

step("Forward versus central differences")
say("""
    The derivative of f at x is the limit of a difference quotient. The
    forward difference (f(x+h) - f(x)) / h is off by about h * f''/2; the
    central difference (f(x+h) - f(x-h)) / 2h cancels that term and is off by
    about h^2 * f'''/6. We differentiate a real function -- the softmax
    cross-entropy loss -- with respect to one logit, and compare with its
    exact gradient (lesson 4) for shrinking h.
""")
loss = SoftmaxCrossEntropy()
z = rng.standard_normal((1, 5))
label = np.array([2])
loss.forward(z, label)
exact = loss.backward()[0, 0]


def L(v):
    zz = z.copy()
    zz[0, 0] = v
    return loss.forward(zz, label)


hs = 10.0 ** -np.arange(1, 13)
fwd = np.array([abs((L(z[0, 0] + h) - L(z[0, 0])) / h - exact) for h in hs])
cen = np.array([abs((L(z[0, 0] + h) - L(z[0, 0] - h)) / (2 * h) - exact) for h in hs])
print(f"exact dL/dz0 = {exact:.12f}")
print(f"{'h':>8} {'forward error':>15} {'central error':>15}")
for h, a, b in zip(hs, fwd, cen):
    print(f"{h:8.0e} {a:15.2e} {b:15.2e}")
i3, i5, i12 = 2, 4, 11  # h = 1e-3, 1e-5, 1e-12
assert cen[i3] < fwd[i3] / 100, "central differences should be far better at h=1e-3"
assert cen[i5] < 1e-9
assert cen[i12] > 100 * cen[i5], "too small an h: round-off takes over"
say("""
    Shrink h tenfold: the forward error drops tenfold, the central error a
    hundredfold -- until h is so small that f(x+h) - f(x-h) is mostly
    round-off (float64 keeps about 16 digits), and the error grows again.
    tinyvgg uses central differences with h = 1e-6 in float64.
""")
plt = _lesson.pyplot()
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(hs, np.maximum(fwd, 1e-17), "o-", label="forward difference")
ax.loglog(hs, np.maximum(cen, 1e-17), "s-", label="central difference")
ax.set_xlabel("step h")
ax.set_ylabel("|numerical - exact|")
ax.invert_xaxis()
ax.legend()
ax.set_title("Truncation error shrinks with h, round-off grows (float64)")
_lesson.save(fig, "05_finite_differences.png")

step("Relative error, not absolute")
say("""
    Gradients come in every size: 1e-8 deep in an untrained network, 1e3 at a
    diverging one. An absolute error of 1e-8 is perfect for the second and a
    100% error for the first. So we compare |a - n| / max(|a|, |n|). tinyvgg
    adds a floor (1e-3 of the array's largest gradient) so that entries which
    are practically zero are not judged on round-off alone.
""")
a = np.array([1e-8, 2e-8])
n = np.array([1.5e-8, 2e-8])
print(f"analytic {a[0]:.1e} {a[1]:.1e}, numerical {n[0]:.1e} {n[1]:.1e}")
print(f"absolute error {np.abs(a - n).max():.1e} (looks fine)   relative error {relative_error(a, n):.2f} (it is not)")
assert np.abs(a - n).max() < 1e-8 and relative_error(a, n) > 0.3

step("A gradient check catches a real bug")
say("""
    Lesson 2 said col2im must ADD the contributions of overlapping windows.
    Here is a Conv2d whose backward forgets that: it overwrites instead of
    adding. Its weight gradient is still right, its input gradient is not.
    check_gradients compares backward() with central differences for the
    input and for every parameter, with a random upstream gradient dy.
""")


class ForgetfulConv2d(Conv2d):
    """A deliberately broken Conv2d (3x3, padding 1): its backward folds the
    column gradients back with '=' where col2im uses '+='."""

    def forward(self, x, train=False):
        self.x_shape = x.shape
        return super().forward(x, train)

    def backward(self, dy):
        super().backward(dy)                      # the weight and bias gradients are right
        n, c, h, w = self.x_shape
        f = self.out_channels
        w2 = self.params["weight"].reshape(f, -1)
        dcols = (w2.T @ dy.reshape(n, f, -1)).reshape(n, c, 3, 3, h, w)
        dxpad = np.zeros((n, c, h + 2, w + 2))
        for i in range(3):
            for j in range(3):
                dxpad[:, :, i:i + h, j:j + w] = dcols[:, :, i, j]  # BUG: should be +=
        return dxpad[:, :, 1:-1, 1:-1]


x = rng.standard_normal((2, 3, 5, 5))
for cls in (Conv2d, ForgetfulConv2d):
    backend.seed(0)
    layer = cls(3, 4, 3, padding=1, dtype=np.float64)
    report = check_gradients(layer, x)
    print(f"--- {cls.__name__}")
    print(report)
    if cls is Conv2d:
        assert report.passed(1e-6)
    else:
        assert report["input"].max_error > 0.1 and report["weight"].max_error < 1e-6

step("Why float64: the same check in float32 fails")
say("""
    float32 keeps about 7 significant digits. With h = 1e-6, x + h cannot even
    be represented accurately (the spacing of float32 numbers near 1 is 1.2e-7),
    and f(x+h) - f(x-h) is mostly round-off. A larger h cuts the round-off (a
    convolution is linear, so here nothing else limits it), but in a network
    with non-linearities a large h brings back the error of step 1; and even
    here float32 stays far from the 1e-6 we demand. That is why tinyvgg's check_gradients
    refuses anything but float64. The layer below is correct in both cases.
""")
x64 = rng.standard_normal((1, 3, 6, 6))
idx = rng.choice(x64.size, 40, replace=False)
errors = {}
for dtype in (np.float64, np.float32):
    backend.seed(0)
    layer = Conv2d(3, 4, 3, padding=1, dtype=dtype)
    layer.params["weight"][...] = rng.standard_normal((4, 3, 3, 3))
    xx = x64.astype(dtype)
    y = layer.forward(xx)
    dy = rng.standard_normal(y.shape).astype(dtype)
    analytic = layer.backward(dy).reshape(-1)[idx]
    for h in (1e-6, 1e-3, 1e-2):
        num, _ = numerical_gradient(lambda: layer.forward(xx), xx, dy, idx, h=h)
        errors[np.dtype(dtype).name, h] = relative_error(analytic, num)
        print(f"{np.dtype(dtype).name}, h = {h:.0e}: relative error {errors[np.dtype(dtype).name, h]:.1e}")
assert errors["float64", 1e-6] < 1e-6
assert min(errors["float32", h] for h in (1e-6, 1e-3, 1e-2)) > 1e-6
assert errors["float32", 1e-6] > 1e-2
try:
    check_gradients(Conv2d(3, 4, 3, dtype=np.float32), x64.astype(np.float32))
    raise AssertionError("float32 should be refused")
except TypeError as e:
    print(f"check_gradients on float32 says: {e}")

step("Kinks: ReLU at 0")
say("""
    ReLU has no derivative at 0: the slope is 0 on the left and 1 on the
    right. The central difference averages the two and reports 0.5, which
    matches neither choice a backward pass can make (tinyvgg's ReLU says 0).
    A point closer to 0 than h (here 1e-7, with h = 1e-6) is straddled by the
    difference and gives a wrong answer too.
""")
relu = ReLU()
x = np.array([-1.0, 0.0, 1e-7, 2.0])
dy = np.ones_like(x)
relu.forward(x)
analytic = relu.backward(dy)
num, kink = numerical_gradient(lambda: relu.forward(x), x, dy, np.arange(4), h=1e-6)
print("x                ", np.array2string(x, formatter={"float": "{:7.0e}".format}))
print(f"backward()        {analytic}\ncentral diff.     {num}\nat a kink?        {kink}")
np.testing.assert_allclose(num[1], 0.5)
np.testing.assert_allclose(num[2], 0.55)
np.testing.assert_array_equal(kink, [False, True, True, False])
say("""
    The checker spots such points: it also computes the two one-sided slopes
    (f(x+h) - f(x)) / h and (f(x) - f(x-h)) / h. At a smooth point they agree
    to O(h); at a kink they differ by O(1). Those coordinates are skipped and
    counted, not failed. Random inputs almost never hit a kink, but exact
    zeros do happen (padding, a ReLU before a ReLU, ties in max-pooling):
""")
x = rng.standard_normal((4, 10))
x[:, :3] = 0.0  # twelve exact zeros
report = check_gradients(ReLU(), x)
print(report)
assert report["input"].skipped_kinks == 12 and report.passed(1e-6)

_lesson.done()
