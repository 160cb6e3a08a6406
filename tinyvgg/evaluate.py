"""Evaluating a model: accuracy, top-k, and the loss over a dataset.

Notation: N images, K classes, B batch size; logits (B, K).

``evaluate(model, loader)`` runs ``model.forward(x, train=False)`` (dropout off,
BatchNorm on its running statistics) over every batch and returns top-1 and
top-5 accuracy and the mean loss. Results are accumulated on the device and read
back once at the end.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .losses import log_softmax

__all__ = ["topk_correct", "evaluate", "predict_proba", "flip_posteriors", "confusion_matrix"]


def topk_correct(logits, labels, k):
    """Number of rows of ``logits`` (B, K) (or posteriors: any scores that rank the
    classes) whose label (B,) is among the ``k`` highest (k > K counts as K), as a
    device scalar. The package's one top-k: training, :func:`evaluate` and the test
    protocols (:func:`tinyvgg.evaluate_protocols.topk_accuracy`) all count with it."""
    xp = backend.get_array_module(logits)
    k = min(k, logits.shape[1])
    if k == 1:
        return (logits.argmax(axis=1) == labels).sum()
    top = xp.argpartition(-logits, k - 1, axis=1)[:, :k]
    return (top == labels[:, None]).any(axis=1).sum()


def predict_proba(model, x):
    """Softmax posteriors (N, K) of ``model`` on a batch, in evaluation mode."""
    return backend.get_array_module(x).exp(log_softmax(model.forward(x, train=False), axis=1))


def flip_posteriors(model, x):
    """Flip test-time augmentation: the mean of the softmax posteriors (N, K) of the
    batch ``x`` (N, C, H, W) and of its horizontal mirror image, as the paper averages
    the posteriors of an image and its flip (section 3.2)."""
    xp = backend.get_array_module(x)
    p = predict_proba(model, x)
    p += predict_proba(model, xp.ascontiguousarray(x[:, :, :, ::-1]))
    p *= p.dtype.type(0.5)
    return p


def evaluate(model, loader, progress=False, desc="evaluate", return_predictions=False, flip=False):
    """Top-1/top-5 accuracy and mean cross-entropy of ``model`` over ``loader``.

    Each batch ``(x (B, C, H, W), y (B,))`` runs in evaluation mode. ``flip=True``
    scores every image by the mean posterior of the image and its mirror image
    (:func:`flip_posteriors`; twice the work); the loss is then ``-log`` of that mean.
    Returns ``{"top1": float, "top5": float, "loss": float, "n": int}`` (plus
    ``"predictions"`` and ``"labels"``, host int arrays, with ``return_predictions``).
    Raises ValueError when the loader yields no batches.
    """
    xp = None
    c1 = c5 = loss_sum = 0
    n = 0
    preds, labels = [], []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    for x, y in it:
        if flip:
            logits = flip_posteriors(model, x)  # posteriors rank the classes as logits do
            xp = backend.get_array_module(logits)
            logp = xp.log(xp.maximum(logits, logits.dtype.type(1e-30)))
        else:
            logits = model.forward(x, train=False)
            xp = backend.get_array_module(logits)
            logp = log_softmax(logits, axis=1)
        c1 = c1 + topk_correct(logits, y, 1)
        c5 = c5 + topk_correct(logits, y, 5)
        loss_sum = loss_sum - logp[xp.arange(len(y)), y].sum()
        n += len(y)
        if return_predictions:
            preds.append(logits.argmax(axis=1))
            labels.append(y)
    if n == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    out = {"top1": float(c1) / n, "top5": float(c5) / n, "loss": float(loss_sum) / n, "n": n}
    if return_predictions:
        out["predictions"] = np.concatenate([backend.to_host(p) for p in preds])
        out["labels"] = np.concatenate([backend.to_host(t) for t in labels])
    return out


def confusion_matrix(predictions, labels, num_classes):
    """(K, K) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm
