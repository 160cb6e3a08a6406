"""Mini-batches in true epochs, prepared in a background thread.

Notation
--------
N : images in the dataset
B : batch size (the last batch may be smaller unless drop_last)
C, H, W : channels, height, width of the transformed images

Iterating a :class:`DataLoader` yields ``(x, y)``: ``x`` (B, C, H, W) in the
loader's ``dtype`` (float32 by default; the model's, float64 for a float64
model) and ``y`` int64 (B,), both on the current device (each moved once per batch
with ``tinyvgg.backend.to_device``, in the iterating thread).

Reproducibility: epoch e visits the images in the order
``numpy.random.default_rng((seed, e)).permutation(N)`` and batch b of that
epoch is transformed with ``numpy.random.default_rng((seed, e, b))``, so the
batches depend only on (seed, epoch) and not on thread timing. Each ``iter()``
uses the current epoch and then advances it; ``set_epoch(e)`` resumes exactly.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from .. import backend
from .transforms import to_float_nchw

__all__ = ["DataLoader"]

_DONE = object()


def _default_transform(images, rng=None):
    # No augmentation or normalisation: uint8 -> float32 (N, C, H, W).
    if not isinstance(images, np.ndarray):
        images = np.stack(images)
    return to_float_nchw(images)


class DataLoader:
    """Batches of a Dataset.

    dataset : Dataset (``images`` array or list, ``labels`` int64 (N,)).
    batch_size : int B.
    transform : callable ``(images, rng) -> float (B, C, H, W)`` host array,
        e.g. TrainTransform / EvalTransform; None converts to float only.
    shuffle : a fresh seeded order each epoch (False: dataset order).
    seed : int, seeds the order and the transforms.
    drop_last : skip the final batch when it is smaller than B.
    prefetch : batches prepared ahead in a background thread; 0 prepares each
        batch synchronously when it is requested.
    dtype : float32 or float64, the dtype of the batches (give the model's); a
        transform returning another float dtype is converted, a non-float one
        raises TypeError.
    """

    def __init__(self, dataset, batch_size, transform=None, shuffle=True, seed=0,
                 drop_last=False, prefetch=2, dtype=np.float32):
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if int(prefetch) != prefetch or prefetch < 0:
            raise ValueError(f"DataLoader: prefetch must be an int >= 0, got {prefetch!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.transform = transform if transform is not None else _default_transform
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch = int(prefetch)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"DataLoader: dtype must be float32 or float64 (the model's), got {self.dtype}")
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """The next ``iter()`` runs epoch ``epoch`` (its order and augmentation)."""
        self.epoch = int(epoch)

    def order(self, epoch):
        """Indices (N,) in the order epoch ``epoch`` visits them."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, int(epoch))).permutation(n)

    def _batch(self, order, epoch, b):
        """Host ``(x (B, C, H, W) in self.dtype, y int64 (B,))`` for batch ``b``."""
        idx = order[b * self.batch_size:(b + 1) * self.batch_size]
        images = self.dataset.images
        if isinstance(images, np.ndarray):
            imgs = images[idx]
        else:
            imgs = [images[i] for i in idx]
        y = np.asarray(self.dataset.labels[idx], np.int64)
        x = self.transform(imgs, rng=np.random.default_rng((self.seed, epoch, b)))
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"DataLoader: transform returned {x.dtype}, expected a float array")
        return np.ascontiguousarray(x, dtype=self.dtype), y

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        if self.prefetch == 0:
            return self._sync(epoch)
        return self._threaded(epoch)

    def _sync(self, epoch):
        order = self.order(epoch)
        for b in range(len(self)):
            x, y = self._batch(order, epoch, b)
            yield backend.to_device(x), backend.to_device(y)

    def _threaded(self, epoch):
        order = self.order(epoch)
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item):
            # Blocks while the queue is full, but gives up once the consumer left.
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for b in range(len(self)):
                    if stop.is_set() or not put(("ok", self._batch(order, epoch, b))):
                        return
                put(("done", None))
            except BaseException as e:  # handed to the consumer, re-raised there
                put(("error", e))

        thread = threading.Thread(target=work, name="tinyvgg-DataLoader", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise item
                x, y = item
                yield backend.to_device(x), backend.to_device(y)
        finally:
            stop.set()
            # Free a producer blocked on a full queue, then wait for it.
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=5)

    def __repr__(self):
        return (f"DataLoader({len(self.dataset)} images, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
                f"prefetch={self.prefetch}, epoch={self.epoch})")
