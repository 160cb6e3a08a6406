"""Softmax and softmax cross-entropy: values, stability, gradient, errors."""

import numpy as np
import pytest

from tinyvgg.gradcheck import check_loss
from tinyvgg.losses import SoftmaxCrossEntropy, log_softmax, softmax


def test_softmax_rows_sum_to_one_and_are_stable():
    x = np.array([[1e4, 0.0, -1e4], [1.0, 2.0, 3.0]], np.float32)
    p = softmax(x)
    assert np.all(np.isfinite(p)) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(p[1], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)


def test_loss_value_matches_definition():
    r = np.random.default_rng(0)
    z = r.standard_normal((6, 4))
    y = np.array([0, 3, 1, 2, 2, 0])
    loss = SoftmaxCrossEntropy()
    expected = -np.mean(np.log(np.exp(z)[np.arange(6), y] / np.exp(z).sum(axis=1)))
    assert isinstance(loss.forward(z, y), float)
    assert abs(loss.forward(z, y) - expected) < 1e-12


def test_loss_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], np.float32)
    loss = SoftmaxCrossEntropy()
    value = loss.forward(z, np.array([1, 1]))
    assert np.isfinite(value) and abs(value - 1e4) < 1  # first row: 2e4/2, second ~0
    g = loss.backward()
    assert np.all(np.isfinite(g)) and g.dtype == np.float32


def test_gradient_is_softmax_minus_onehot_over_n():
    z = np.random.default_rng(1).standard_normal((5, 3))
    y = np.array([0, 1, 2, 1, 0])
    loss = SoftmaxCrossEntropy()
    loss.forward(z, y)
    np.testing.assert_allclose(loss.backward(), (softmax(z) - np.eye(3)[y]) / 5, rtol=1e-12)


def test_loss_gradient_check():
    z = np.random.default_rng(2).standard_normal((7, 5)) * 3
    report = check_loss(SoftmaxCrossEntropy(), z, np.array([0, 1, 2, 3, 4, 0, 1]))
    assert report.max_error <= 1e-6, str(report)


def test_log_softmax_matches_log_of_softmax():
    z = np.random.default_rng(3).standard_normal((4, 6))
    np.testing.assert_allclose(log_softmax(z), np.log(softmax(z)), rtol=1e-12)


@pytest.mark.parametrize("z, y, err, pattern", [
    (np.zeros((3, 4)), np.array([0, 4, 1]), ValueError, r"labels must lie in \[0, 4\).*from 0 to 4"),
    (np.zeros((3, 4)), np.array([-1, 0, 1]), ValueError, r"labels must lie in \[0, 4\)"),
    (np.zeros((3, 4)), np.array([0, 1]), ValueError, r"logits \(3, 4\) and labels \(2,\) have different batch"),
    (np.zeros((3,)), np.array([0, 1, 2]), ValueError, r"logits must be \(N, K\)"),
    (np.zeros((3, 4)), np.zeros((3, 1), int), ValueError, r"labels must be \(N,\)"),
    (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), TypeError, r"labels must be integers"),
])
def test_bad_input_errors(z, y, err, pattern):
    with pytest.raises(err, match=pattern):
        SoftmaxCrossEntropy().forward(z, y)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().backward()


# --- label smoothing ------------------------------------------------------------

def _smoothed_loss_by_loops(z, y, eps):
    """The definition, one sample and one class at a time: -sum_k q_k log p_k."""
    n, k = z.shape
    total = 0.0
    for i in range(n):
        p = np.exp(z[i] - z[i].max())
        p /= p.sum()
        for j in range(k):
            q = (1 - eps) * (j == y[i]) + eps / k
            total -= q * np.log(p[j])
    return total / n


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.5])
def test_label_smoothing_value_and_gradient_match_definition(eps):
    r = np.random.default_rng(4)
    z = r.standard_normal((6, 5)) * 2
    y = np.array([0, 4, 1, 2, 2, 3])
    loss = SoftmaxCrossEntropy(label_smoothing=eps)
    assert abs(loss.forward(z, y) - _smoothed_loss_by_loops(z, y, eps)) < 1e-12
    q = (1 - eps) * np.eye(5)[y] + eps / 5
    np.testing.assert_allclose(loss.backward(), (softmax(z) - q) / 6, rtol=1e-12, atol=1e-15)


def test_label_smoothing_gradient_check():
    z = np.random.default_rng(5).standard_normal((7, 5)) * 3
    report = check_loss(SoftmaxCrossEntropy(label_smoothing=0.1), z, np.array([0, 1, 2, 3, 4, 0, 1]))
    assert report.max_error <= 1e-6, str(report)


def test_label_smoothing_zero_is_the_plain_loss_and_float32_stays_float32():
    z = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    y = np.array([2, 0, 1, 1])
    a, b = SoftmaxCrossEntropy(), SoftmaxCrossEntropy(label_smoothing=0.0)
    assert a.forward(z, y) == b.forward(z, y)
    np.testing.assert_array_equal(a.backward(), b.backward())
    c = SoftmaxCrossEntropy(label_smoothing=0.1)
    c.forward(z, y)
    assert c.backward().dtype == np.float32


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2])
def test_label_smoothing_out_of_range(eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        SoftmaxCrossEntropy(label_smoothing=eps)
