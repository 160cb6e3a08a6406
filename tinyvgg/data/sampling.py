"""Seeded, class-balanced samples of a dataset: the one way tinyvgg draws subsets.

Class-folder datasets are stored class by class (sorted), so "the first n images"
holds only the first classes. Every subset the package draws (``--limit``, the
validation hold-out, the doctor's short run and its evaluation sample, ``evaluate
--limit``, the benchmarks) goes through :func:`stratified_sample` instead, and the
training/validation split of a run is :func:`train_val_split`, the one function
training draws it with and ``evaluate --split val`` rebuilds it with.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["stratified_sample", "train_val_split", "split_source", "warn_if_source_changed"]


def stratified_sample(labels, n, seed=0):
    """Indices of a seeded sample of ``n`` of the N ``labels`` that keeps the class
    proportions.

    labels : int array-like (N,)
    n : int, 0 <= n; n >= N returns every index.
    seed : int, the NumPy ``default_rng`` seed; the same (labels, n, seed) always
        give the same sample.

    Class c with N_c images gets floor(n N_c / N) images, and the remaining places
    go to the classes with the largest remainders (ties broken at random); when
    n >= K (the classes present) every class gets at least one image. The images of
    a class are chosen uniformly at random. Returns a sorted int64 array (n,).
    Raises ValueError for a negative or non-integer ``n``.
    """
    y = np.asarray(labels).reshape(-1)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"stratified_sample: n must be a non-negative integer, got {n!r}")
    total = len(y)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(np.int64)
    # Largest remainders first; a random key breaks ties without favouring low labels.
    order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
    quota[order[:n - quota.sum()]] += 1
    if n >= len(classes):
        # Every class at least once: take from the classes with the most.
        for c in np.flatnonzero(quota == 0):
            quota[np.argmax(quota)] -= 1
            quota[c] = 1
    chosen = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _validation_count(val_size, n):
    """The number of images ``val_size`` holds out of ``n``: a fraction in (0, 1)
    (rounded) or a count (an int, or a whole float such as a config's 5000.0)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise ValueError(f"val_size must be an int or a float in (0, 1), got {val_size!r}")
    if isinstance(val_size, (float, np.floating)):
        if 0.0 < val_size < 1.0:
            return int(round(val_size * n))
        if val_size < 1.0 or val_size != int(val_size):
            raise ValueError(f"val_size as a fraction must lie in (0, 1), got {val_size}")
    return int(val_size)


def train_val_split(dataset, val_size, seed=0, stratify=True, limit=None, batch_norm=False):
    """``(train, val)``: a training run's images and its held-out validation images.

    dataset : a :class:`~tinyvgg.data.Dataset` (N images).
    val_size : a fraction in (0, 1) of the (limited) images, rounded, or a number of
        images (int, or a whole float).
    seed : int; the same arguments always give the same split.
    stratify : True: ``limit`` and the validation set are :func:`stratified_sample`
        (seeded, the class proportions kept). False: a seeded permutation (how runs
        saved before stratified sampling drew them: the first ``limit`` of one
        permutation, then the last ``val_size`` of another).
    limit : None, or first keep a seeded sample of that many images (``--limit``).
    batch_norm : the training part must hold 2 images (BatchNorm's batches), not 1.

    Each part keeps the original order of its images. Raises ValueError naming
    --val-size / --limit with the numbers when ``val_size`` is not a valid count or
    fraction, or when either part would be empty.
    """
    n_all = len(dataset)
    if limit is not None and limit < n_all:
        if stratify:
            keep = stratified_sample(dataset.labels, int(limit), seed)
        else:
            keep = np.sort(np.random.default_rng(seed).permutation(n_all)[:int(limit)])
        dataset = dataset.subset(keep)
    n = len(dataset)
    n_val = _validation_count(val_size, n)
    what = f"the {n} images" + (f" (--limit {limit} of {n_all})" if limit is not None else "")
    if n_val < 1:
        raise ValueError(f"--val-size {val_size:g} holds out {n_val} of {what}: the validation set "
                         f"would be empty; give a number of images (--val-size 1 or more) or a "
                         f"larger fraction")
    need = 2 if batch_norm else 1
    if n - n_val < need:
        raise ValueError(f"--val-size {val_size:g} holds out {n_val} of {what}, leaving "
                         f"{n - n_val} for training; training needs at least {need}"
                         f"{' (BatchNorm needs batches of 2)' if batch_norm else ''}: use a smaller "
                         f"--val-size{' or a larger --limit' if limit is not None else ''}, or more images")
    if stratify:
        val_idx = stratified_sample(dataset.labels, n_val, seed)
        train_idx = np.setdiff1d(np.arange(n), val_idx)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        train_idx, val_idx = np.sort(perm[:n - n_val]), np.sort(perm[n - n_val:])
    return dataset.subset(train_idx), dataset.subset(val_idx)


def split_source(dataset):
    """What a validation split is drawn from, to check later that it is drawn again from
    the same images: ``{"images": N, "fingerprint": Dataset.fingerprint()}`` (checkpoints
    store it as ``data_source``)."""
    return {"images": len(dataset), "fingerprint": dataset.fingerprint()}


def warn_if_source_changed(saved, now, where, consequence, out=None):
    """Print a warning to ``out`` (default stderr) when ``now`` (:func:`split_source` of
    the data as it is) differs from ``saved`` (a checkpoint's ``data_source``; None for
    checkpoints saved before it was recorded: no check). :func:`train_val_split` draws
    the validation images by a seed from what the data holds, so a folder with images
    added or removed yields other ones, some of which the run trained on.
    ``consequence``: a sentence on what that means for the caller. Returns True when
    it warned."""
    if not saved or saved.get("fingerprint") == now["fingerprint"]:
        return False
    print(f"warning: {where} has changed since the run was trained ({saved.get('images')} "
          f"training images then, {now['images']} now, or other files): the validation images "
          f"drawn from it now are not the ones the run held out, and it has trained on some of "
          f"them. {consequence} Restore the data as it was for a clean held-out split.",
          file=out or sys.stderr)
    return True
