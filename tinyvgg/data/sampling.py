"""Seeded, class-balanced samples of a dataset: the one way tinyvgg draws subsets.

Class-folder datasets are stored class by class (sorted), so "the first n images"
holds only the first classes. Every subset the package draws (``--limit``, the
validation hold-out, the doctor's short run and its evaluation sample, ``evaluate
--limit``, the benchmarks) goes through :func:`stratified_sample` instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["stratified_sample"]


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
