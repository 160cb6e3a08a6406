"""Pictures of a training run: curves, first-layer filters, feature maps, confusion matrix.

Every function writes a PNG to ``path`` and returns the path. Matplotlib runs
with the non-interactive Agg backend, so this works on machines without a
screen. Arrays may live on either device; they are brought to the host here.
"""

from __future__ import annotations

import os

import numpy as np

from . import backend
from .fileio import atomic_open

__all__ = ["plot_history", "plot_filters", "plot_feature_maps", "plot_confusion_matrix"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    path = os.fspath(path)
    with atomic_open(path) as f:  # a viewer never sees a half-written picture
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


def plot_history(history, path):
    """Loss and accuracy per epoch (train and validation) from a list of epoch records."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for a, key, ylabel, title in ((a1, "loss", "cross-entropy", "loss"),
                                  (a2, "acc", "accuracy", "accuracy")):
        a.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        if any(f"val_{key}" in h for h in history):
            a.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "s-",
                   label="validation")
        a.set_xlabel("epoch")
        a.set_ylabel(ylabel)
        a.set_title(title)
        a.legend()
        a.grid(alpha=0.3)
    return _save(fig, path)


def plot_filters(weight, path, max_filters=64):
    """The first convolution's filters (F, C, KH, KW) as an image grid (C = 1 or 3 shown
    as grey or colour; other C shown as the mean over channels)."""
    plt = _plt()
    w = backend.to_host(weight).astype(np.float64)[:max_filters]
    f = w.shape[0]
    cols = int(np.ceil(np.sqrt(f)))
    rows = int(np.ceil(f / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= f:
            continue
        k = w[i]
        k = (k - k.min()) / (np.ptp(k) + 1e-12)  # each filter on its own colour scale
        if k.shape[0] == 3:
            ax.imshow(k.transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(k.mean(axis=0), cmap="gray", interpolation="nearest")
    fig.suptitle(f"first-layer filters ({f} of shape {tuple(weight.shape[1:])})")
    return _save(fig, path)


def plot_feature_maps(model, image, path, layers=None, max_maps=8):
    """Feature maps of one image (C, H, W) after the ReLUs of ``model`` (up to
    ``max_maps`` channels of each chosen layer index)."""
    plt = _plt()
    x = backend.to_device(np.asarray(backend.to_host(image), dtype=np.float32)[None])
    outputs = []
    for i, layer in enumerate(model.layers):
        if x.ndim != 4:
            break
        x = layer.forward(x, train=False)
        if type(layer).__name__ == "ReLU" and (layers is None or i in layers):
            outputs.append((i, backend.to_host(x[0])))
    if not outputs:
        raise ValueError("plot_feature_maps: no convolutional ReLU output to show")
    fig, axes = plt.subplots(len(outputs), max_maps, figsize=(max_maps * 1.1, len(outputs) * 1.2),
                             squeeze=False)
    for r, (i, fm) in enumerate(outputs):
        for c in range(max_maps):
            ax = axes[r, c]
            ax.axis("off")
            if c < fm.shape[0]:
                ax.imshow(fm[c], cmap="viridis", interpolation="nearest")
        axes[r, 0].set_title(f"layer {i} {fm.shape[1]}x{fm.shape[2]}", fontsize=7, loc="left")
    return _save(fig, path)


def plot_confusion_matrix(cm, classes, path, normalize=True):
    """A (K, K) confusion matrix (rows true, columns predicted) as a heat map."""
    plt = _plt()
    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(1 + 0.5 * k, 0.8 + 0.5 * k))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=90, fontsize=7)
    ax.set_yticks(range(k), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else int(cm[i, j]), ha="center",
                        va="center", fontsize=6, color="white" if cm[i, j] > 0.5 * cm.max() else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
