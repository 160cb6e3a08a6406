"""What the doctor records: per-layer statistics through the model's hooks
(:class:`LayerRecorder`), its own evaluation at the end of every epoch
(:func:`evaluate_modes`) and, after a divergence, which layer blew up first
(:func:`probe_divergence`). Statistics stay on the device until one read-back
per recording step (:func:`read_back`)."""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..data import stratified_sample
from ..layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, LocalResponseNorm, ReLU

__all__ = ["LayerRecorder", "tracked_layers", "kind_of", "norm", "read_back", "evaluate_modes",
           "sample_indices", "probe_divergence", "failing_batch"]

_KIND_OF = ((Conv2d, "conv"), (Linear, "linear"), (BatchNorm2d, "bn"), (BatchNorm1d, "bn"),
            (LocalResponseNorm, "lrn"), (ReLU, "relu"))


def kind_of(layer):
    """``"conv"``, ``"linear"``, ``"bn"``, ``"lrn"``, ``"relu"``, or the class name
    in lower case for a layer the doctor does not track."""
    for cls, name in _KIND_OF:
        if isinstance(layer, cls):
            return name
    return type(layer).__name__.lower()


def tracked_layers(model):
    """``[(name, layer)]`` of the layers the doctor records (convolutions, linear
    layers, BatchNorm, LRN, ReLU), in forward order."""
    names = getattr(model, "layer_names", None) or [f"layer{i}" for i in range(len(model.layers))]
    tracked = tuple(cls for cls, _ in _KIND_OF)
    return [(n, l) for n, l in zip(names, model.layers) if isinstance(l, tracked)]


def norm(a):
    """Euclidean norm as a device scalar, accumulated in float64."""
    xp = backend.get_array_module(a)
    a = a.astype(xp.float64, copy=False)
    return xp.sqrt((a * a).sum())


def act_stats(y, relu):
    """Device scalars describing an activation array (no read-back here)."""
    xp = backend.get_array_module(y)
    s = {"act_mean": y.mean(dtype=xp.float64), "act_std": y.std(dtype=xp.float64),
         "act_absmax": xp.abs(y).max()}
    if relu and y.ndim >= 2:
        pos = y > 0
        axes = (0,) + tuple(range(2, y.ndim))
        s["dead"] = 1.0 - pos.any(axis=axes).mean(dtype=xp.float64)
        s["zero"] = 1.0 - pos.mean(dtype=xp.float64)
    return s


def read_back(nested):
    """{layer: {stat: device scalar}} -> the same with Python floats, in one copy."""
    keys, vals = [], []
    for lname, d in nested.items():
        for k, v in d.items():
            keys.append((lname, k))
            vals.append(v)
    out = {lname: {} for lname in nested}
    if not vals:
        return out
    if any(backend.is_device_array(v) for v in vals):
        xp = backend.xp()
        host = backend.to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for v in vals]))
    else:
        host = [float(v) for v in vals]
    for (lname, k), v in zip(keys, host):
        out[lname][k] = float(v)
    return out


class LayerRecorder:
    """A model hook (``model.add_hook(recorder)``) that keeps, per tracked layer, a
    few device scalars about its output in training mode (``acts``: mean, std,
    largest |value|; for a ReLU the fraction of dead units and of zeros) and the
    norm of the gradient reaching its output (``gouts``). The layers are untouched."""

    def __init__(self, tracked):
        self.kinds = {name: kind_of(layer) for name, layer in tracked}
        self.acts, self.gouts = {}, {}

    def after_forward(self, name, layer, y, train):
        kind = self.kinds.get(name)
        if train and kind is not None:
            self.acts[name] = act_stats(y, kind == "relu")

    def before_backward(self, name, layer, dy):
        if name in self.kinds:
            self.gouts[name] = norm(dy)


def eval_forward(model, x):
    """Logits in evaluation mode, layer by layer (never through a model.forward
    that could ignore ``train``)."""
    for layer in model.layers:
        x = layer.forward(x, train=False)
    return x


def sample_indices(ds, n):
    """Up to ``n`` indices of ``ds``, a seeded sample that keeps the class proportions
    (class folders are stored class by class, so the first images would all share
    one label)."""
    return stratified_sample(ds.labels, n, 0)


def _accuracy(ds, transform, forward, n_images, batch=256):
    sample = sample_indices(ds, n_images)
    n = len(sample)
    if n == 0:
        return None, 0
    correct = 0
    for lo in range(0, n, batch):
        idx = sample[lo:lo + batch]
        imgs = ds.images[idx] if isinstance(ds.images, np.ndarray) else [ds.images[i] for i in idx]
        x = backend.to_device(transform(imgs))
        y = backend.to_device(np.asarray(ds.labels[idx]))
        correct = correct + (forward(x).argmax(axis=1) == y).sum()
    return float(correct) / n, n


def evaluate_modes(trainer, model, record, eval_images):
    """What the doctor measures at the end of an epoch, on ``eval_images`` training
    and validation images: both accuracies in evaluation mode (layer by layer), the
    accuracies the trainer reported in ``record``, whether model.forward(train=False)
    is deterministic and equals the layers run one by one. BatchNorm buffers a buggy
    forward might touch are restored. Returns a dict of plain numbers."""
    ev = {"epoch": record.get("epoch"), "step": getattr(trainer, "global_step", None),
          "train_acc_reported": record.get("train_acc"), "val_acc_reported": record.get("val_acc")}
    data = getattr(trainer, "data", None)
    if not data or model is None or "eval_transform" not in data:
        return ev
    # Side effects of a buggy forward (BatchNorm batch statistics) are undone afterwards.
    buffers = [(l, {k: b.copy() for k, b in l.buffers.items()}, getattr(l, "num_batches_tracked", None))
               for l in model.layers if l.buffers]
    tf = data["eval_transform"]

    def forward(x):
        return eval_forward(model, x)
    try:
        ev["train_acc_eval"], ev["train_n"] = _accuracy(data["train"], tf, forward, eval_images)
        ev["val_acc_eval"], ev["val_n"] = _accuracy(data["val"], tf, forward, eval_images)
        ev["val_size"] = len(data["val"])
        # Evaluation must be deterministic: the same batch twice through model.forward(train=False).
        val = data["val"]
        idx = sample_indices(val, eval_images)[:16]
        if len(idx):
            imgs = val.images[idx] if isinstance(val.images, np.ndarray) else [val.images[i] for i in idx]
            x = backend.to_device(tf(imgs))
            a, b = model.forward(x, train=False), model.forward(x, train=False)
            c = forward(x)
            scale = float(backend.to_host(abs(c).max())) + 1e-12
            ev["eval_nondeterminism"] = float(backend.to_host(abs(a - b).max())) / scale
            ev["eval_vs_layers"] = float(backend.to_host(abs(a - c).max())) / scale
    finally:
        for layer, saved, nbt in buffers:
            for k, v in saved.items():
                layer.buffers[k][...] = v
            if nbt is not None:
                layer.num_batches_tracked = nbt
    return ev


def probe_divergence(trainer, model):
    """Which layer blew up first: the first weights that are not finite, else
    the first activation (forward order) and gradient (backward order) that is
    not finite when the failing batch is run again with the current weights."""
    where = {"weights": None, "activations": None, "gradients": None, "huge": None}
    if model is None:
        return where
    xp = backend.xp()
    for name, layer in zip(model.layer_names, model.layers):
        for k, p in layer.params.items():
            if not bool(xp.isfinite(p).all()):
                where["weights"] = f"{name}.{k}"
                break
        if where["weights"]:
            break
    batch = failing_batch(trainer)
    if batch is None:
        return where
    x, y = batch
    cfg = getattr(trainer, "cfg", None)
    if cfg is not None:
        backend.seed(hash((cfg.seed, trainer.epoch, trainer.step_in_epoch,
                           getattr(trainer, "rank", 0))) & 0x7FFFFFFF)
    try:
        with np.errstate(all="ignore"):
            h = x
            for name, layer in zip(model.layer_names, model.layers):
                h = layer.forward(h, train=True)
                m = float(backend.to_host(xp.abs(h).max()))
                if where["huge"] is None and (not math.isfinite(m) or m > 1e6):
                    where["huge"] = (name, m)
                if where["activations"] is None and not math.isfinite(m):
                    where["activations"] = name
            loss = trainer.loss_fn.forward(h, y)
            dy = trainer.loss_fn.backward()
            for name, layer in zip(reversed(model.layer_names), reversed(model.layers)):
                dy = layer.backward(dy)
                bad = not bool(xp.isfinite(dy).all()) or any(
                    not bool(xp.isfinite(g).all()) for g in layer.grads.values())
                if bad:
                    where["gradients"] = name
                    break
            where["loss"] = float(backend.to_host(xp.asarray(loss)))
    except Exception as e:  # a probe must never hide the original error
        where["probe_error"] = f"{type(e).__name__}: {e}"
    return where


def failing_batch(trainer):
    """The batch the trainer was on (its shard of it), on the device; None when unknown."""
    loader = getattr(trainer, "train_loader", None)
    if loader is None:
        return None
    try:
        epoch, b = trainer.epoch, min(trainer.step_in_epoch, len(loader) - 1)
        x, y = loader._batch(loader.order(epoch), epoch, b)
        if hasattr(trainer, "_shard"):
            x, y = trainer._shard(x, y)
        return backend.to_device(x), backend.to_device(y)
    except Exception:
        return None
