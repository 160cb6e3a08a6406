"""Lesson 4: softmax cross-entropy -- the stable form, and why its gradient is softmax minus one-hot.

VGG ends in a 1000-way soft-max and is trained by minimising the multinomial
logistic regression objective (paper, sections 2.1 and 3.1), i.e. the
cross-entropy between softmax(logits) and the true class.

Run:  python lessons/04_softmax_cross_entropy.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg.gradcheck import check_loss
from tinyvgg.losses import SoftmaxCrossEntropy, log_softmax, softmax

step("Softmax turns scores into probabilities")
z = np.array([2.0, 1.0, 0.1])
p = softmax(z)
print(f"logits z = {z}\nsoftmax  = {p}   (sums to {p.sum():.6f})")
np.testing.assert_allclose(p.sum(), 1.0)
np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum())
say("""
    softmax(z)_k = exp(z_k) / sum_j exp(z_j): positive, sums to 1, and the
    largest logit gets the largest probability.
""")

step("The naive formula breaks on big logits")
say("""
    exp(1e4) is far beyond the largest float (about 1.8e308), so the naive
    formula computes inf / inf = NaN. A network that is badly scaled or
    diverging (lesson 10) produces logits like these.
""")
big = np.array([1e4, 0.0, -1e4])
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(big) / np.exp(big).sum()
print(f"logits {big}\nnaive softmax  {naive}")
assert np.isnan(naive).any()

step("The stable form: subtract the maximum first")
say("""
    Subtracting any constant m from every logit multiplies numerator and
    denominator by exp(-m): nothing changes mathematically. Choosing m = max(z)
    makes every exponent <= 0, so nothing overflows, and the largest term is
    exp(0) = 1, so the sum is never 0 either. tinyvgg.losses.softmax does this.
""")
stable = softmax(big)
print(f"tinyvgg softmax {stable}")
np.testing.assert_allclose(stable, [1.0, 0.0, 0.0])
np.testing.assert_allclose(softmax(z + 1000.0), softmax(z))
print("softmax(z + 1000) == softmax(z): the shift does not matter.")

step("Cross-entropy straight from log-softmax (no log of 0)")
say("""
    The loss for a true class y is -log softmax(z)_y. Computing softmax first
    and then its log fails when a probability underflows to 0 (log 0 = -inf).
    The log-sum-exp form never leaves log space:
    -log softmax(z)_y = log sum_j exp(z_j - m) - (z_y - m).
""")
loss = SoftmaxCrossEntropy()
for label in (0, 2):
    with np.errstate(divide="ignore"):
        naive_loss = -np.log(softmax(big)[label]) + 0.0
    value = loss.forward(big.reshape(1, 3), np.array([label])) + 0.0  # + 0.0: print -0.0 as 0.0
    print(f"true class {label}: -log(softmax) = {naive_loss}   stable loss = {value}")
    assert np.isfinite(value)
assert loss.forward(big.reshape(1, 3), np.array([0])) == 0.0
np.testing.assert_allclose(loss.forward(big.reshape(1, 3), np.array([2])), 2e4)
say("""
    Confidently right: loss 0. Confidently wrong: loss 2e4, the gap between
    the winning logit and the true one -- large but finite, and its gradient
    is still useful.
""")
K = 10
print(f"Know this number: with all logits equal, the loss is log(K) = log({K}) = {np.log(K):.4f}")
np.testing.assert_allclose(loss.forward(np.zeros((4, K)), np.arange(4)), np.log(K))
say("""
    An untrained network (small random weights, near-equal logits) starts
    there: 6.91 for ImageNet's 1000 classes, 2.30 for 10.
""")

step("The gradient: softmax minus one-hot")
say("""
    L = -z_y + log sum_j exp(z_j). Differentiate with respect to z_k: the
    first term gives -1 when k = y and 0 otherwise; the second gives
    exp(z_k) / sum_j exp(z_j) = softmax(z)_k. So dL/dz = softmax(z) - onehot(y).
    For a batch of N the loss is the MEAN, so each row is also divided by N.
""")
rng = np.random.default_rng(0)
N = 3
logits = rng.standard_normal((N, 4))
labels = np.array([1, 0, 3])
loss.forward(logits, labels)
grad = loss.backward()
onehot = np.eye(4)[labels]
print("softmax(logits):\n", softmax(logits, axis=1))
print("one-hot(labels):\n", onehot)
print("loss.backward() * N:\n", grad * N)
np.testing.assert_allclose(grad, (softmax(logits, axis=1) - onehot) / N)
np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)
say("""
    Read it row by row: the true class is pushed up (negative gradient: by 1
    minus its probability), every other class pushed down by its probability.
    Each row sums to 0. When the network is right and sure, the row is all
    near 0: nothing left to learn from that example.
""")

step("Checked numerically, also at logits of 1e4")
report = check_loss(loss, logits, labels)
print(report)
assert report.passed(1e-6), report
huge = np.array([[1e4, 1e4, -1e4], [3.0, 1e4, 2.0]])
loss.forward(huge, np.array([2, 1]))
g = loss.backward()
print("logits:\n", huge, "\nlabels [2, 1]\ngradient (already divided by N = 2):\n", g)
assert np.isfinite(g).all()
np.testing.assert_allclose(g, [[0.25, 0.25, -0.5], [0, 0, 0]], atol=1e-12)
report = check_loss(loss, huge, np.array([2, 1]))
print(f"numerical check at these logits: max relative error {report.max_error:.1e}")
assert report.passed(1e-6), report
np.testing.assert_allclose(log_softmax(huge, axis=1)[0], [-np.log(2), -np.log(2), -2e4 - np.log(2)])

_lesson.done()
