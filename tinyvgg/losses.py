"""Softmax and the softmax cross-entropy loss.

Notation: N batch, K classes; logits z (N, K), integer labels y (N,).

    softmax(z)[n, k] = exp(z[n, k] - m[n]) / sum_j exp(z[n, j] - m[n]),   m[n] = max_j z[n, j]

Subtracting the row maximum changes nothing mathematically and keeps every
exponent <= 0, so logits of 1e4 neither overflow nor produce NaN. The loss uses
the log-sum-exp form directly:

    loss = mean_n ( log sum_j exp(z[n, j] - m[n]) - (z[n, y[n]] - m[n]) )

and its gradient is (softmax(z) - onehot(y)) / N.

Label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture",
section 7; PyTorch's ``CrossEntropyLoss(label_smoothing=eps)``) trains against the
target q = (1 - eps) * onehot(y) + eps / K instead of onehot(y):

    loss = mean_n ( -sum_k q[n, k] * log softmax(z)[n, k] )
         = (1 - eps) * CE(z, y) + eps * mean_n ( -mean_k log softmax(z)[n, k] )

and its gradient is (softmax(z) - q) / N. With eps = 0 it is the plain loss.
"""

from __future__ import annotations

import numpy as np

from . import backend

__all__ = ["softmax", "log_softmax", "SoftmaxCrossEntropy"]


def softmax(x, axis=-1):
    """Numerically stable softmax along ``axis`` (default the last)."""
    xp = backend.get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    """Stable log-softmax: ``x - max - log(sum(exp(x - max)))``."""
    xp = backend.get_array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer labels.

    ``forward(logits (N, K), labels (N,)) -> float`` and ``backward() -> dlogits (N, K)``.
    The returned gradient is of the *mean* loss, ``(softmax - q) / N`` where
    ``q = (1 - label_smoothing) * onehot + label_smoothing / K`` (see the module
    docstring); ``label_smoothing`` must lie in [0, 1), else ValueError.
    On the GPU ``forward`` returns a 0-d device array (read it with ``float()``)
    so that a training loop reads the loss back only when it logs it.
    """

    def __init__(self, label_smoothing=0.0):
        eps = float(label_smoothing)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = eps
        self._cache = None

    def __repr__(self):
        if self.label_smoothing:
            return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"
        return "SoftmaxCrossEntropy()"

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def _check(self, logits, labels):
        if not hasattr(logits, "ndim") or logits.ndim != 2:
            raise ValueError(f"SoftmaxCrossEntropy: logits must be (N, K), got shape "
                             f"{tuple(getattr(logits, 'shape', ()))}")
        if not hasattr(labels, "ndim") or labels.ndim != 1:
            raise ValueError(f"SoftmaxCrossEntropy: labels must be (N,), got shape "
                             f"{tuple(getattr(labels, 'shape', ()))}")
        n, k = logits.shape
        if labels.shape[0] != n:
            raise ValueError(f"SoftmaxCrossEntropy: logits {tuple(logits.shape)} and labels "
                             f"{tuple(labels.shape)} have different batch sizes")
        if n == 0:
            raise ValueError("SoftmaxCrossEntropy: empty batch (logits of shape (0, K))")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"SoftmaxCrossEntropy: labels must be integers, got {labels.dtype}")
        if not np.issubdtype(logits.dtype, np.floating):
            raise TypeError(f"SoftmaxCrossEntropy: logits must be floating point, got {logits.dtype}")
        backend.check_same_device("SoftmaxCrossEntropy", logits, labels)
        if backend.is_device_array(labels):
            # Reading min/max back would stall the GPU every step; device labels come
            # from a DataLoader whose Dataset already checked them against its classes.
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"SoftmaxCrossEntropy: labels must lie in [0, {k}) for {k} classes, "
                             f"got values from {lo} to {hi}")

    def forward(self, logits, labels):
        self._check(logits, labels)
        xp = backend.get_array_module(logits)
        n = logits.shape[0]
        logp = log_softmax(logits, axis=1)
        rows = xp.arange(n)
        loss = -logp[rows, labels].mean()
        eps = self.label_smoothing
        if eps:
            # -sum_k q_k log p_k with q = (1 - eps) onehot + eps / K
            loss = (1 - eps) * loss - eps * logp.mean(axis=1).mean()
        self._cache = (logp, labels)
        if backend.is_device_array(loss):
            return loss
        return float(loss)

    def backward(self):
        if self._cache is None:
            raise RuntimeError("SoftmaxCrossEntropy: backward() called before forward()")
        logp, labels = self._cache
        xp = backend.get_array_module(logp)
        n = logp.shape[0]
        eps = self.label_smoothing
        grad = xp.exp(logp)  # softmax
        if eps:
            grad -= logp.dtype.type(eps / logp.shape[1])
        grad[xp.arange(n), labels] -= logp.dtype.type(1 - eps)
        grad /= logp.dtype.type(n)
        return grad
