"""The test protocols of the VGG paper (sections 3.2 and 4): single scale, multi-scale,
dense, multi-crop, dense + multi-crop, and ensembles of several models.

Notation
--------
N images, K classes, C channels, s the training input size (224 in the paper, 32 for
CIFAR-10), Q the test scale (the shorter image side after isotropic rescaling), S the
training scale (fixed S, or [S_min, S_max] with scale jittering).

Preprocessing (exactly the training pipeline's, :mod:`tinyvgg.data.transforms`)
------------------------------------------------------------------------------
Each uint8 (H, W, C) image is rescaled with Pillow (bilinear) so its shorter side is Q
(no resampling at all when it already is), then goes through the one preprocessing,
:func:`tinyvgg.data.transforms.to_network_input`: turned into float32, minus the training
mean and divided by the training std (the checkpoint's ``meta["mean"]``/``["std"]``,
[0, 255] units), then padded centred with zeros -- the mean colour -- up to s x s when
a side is shorter than s. So a 28 x 28 Fashion-MNIST image evaluated by a net trained
at input 32 is the padded 32 x 32 image, exactly as in training, and at Q = s (or the
native size) the "single" protocol is :class:`tinyvgg.data.EvalTransform`.
Grayscale (C = 1) images given to a 3-channel network are repeated over the channels
(after normalising with a 1-value mean, or before normalising with a 3-value one).

Protocols (posteriors are softmax probabilities; every average is of posteriors)
------------------------------------------------------------------------------
``single``         one scale Q; the central s x s crop.
``multi-scale``    the central crop at each Q of a set; posteriors averaged over Q.
``dense``          section 3.2: the fully convolutional net (fc layers as convolutions,
                   :meth:`tinyvgg.models.VGG.to_fully_convolutional`) on the whole
                   rescaled image (any aspect ratio, no crop); the class score map
                   (1, K, h, w) is spatially averaged (sum-pooled, as in the paper)
                   and *then* soft-maxed; the same for the horizontally flipped image;
                   the two posteriors are averaged, then averaged over the Q set.
``multi-crop``     a 5 x 5 grid of s x s crops and their horizontal flips at each Q
                   (50 per scale, 150 for three scales, as in the paper); posteriors
                   of all crops averaged. Crops at the same position (the image is
                   barely larger than s) are computed once and weighted by their count:
                   the result is the average over all 25 grid positions.
``dense+multi-crop``  the average of the dense and the multi-crop posteriors.
Ensembles          several models: each model's posteriors under the protocol (with
                   its own preprocessing and scales), averaged over the models.

Test scales (the rule, :func:`test_scales`)
-------------------------------------------
Single scale: Q = S for a model trained at fixed S, Q = (S_min + S_max) // 2 for a
jittered one (the paper's 0.5 (S_min + S_max)).
Multi-scale: {S - d, S, S + d} for fixed S and {S_min, (S_min + S_max) // 2, S_max} for
jittered S. The paper's offset is d = 32 at crop size 224 (Table 4: 224/256/288 for
S = 256, 352/384/416 for S = 384); tinyvgg scales it with the crop size,
d = round(32 s / 224) = round(s / 7): d = 32 at s = 224 (the paper's exact scales),
d = 5 at s = 32. A model trained *without* rescaling (``scale=None``: CIFAR's
pad-and-crop, Fashion-MNIST's 28 -> 32 padding) was trained at its images' native
scale, so S is the shorter side its training images had -- taken from how the checkpoint
was trained, never from the images evaluated: S = 32 for CIFAR-10 -> {27, 32, 37},
S = 28 for Fashion-MNIST -> {23, 28, 33}, S = s for class folders loaded at
``--input-size`` s and for converted weights (:func:`_train_sides`). Class folders
trained without ``--input-size`` kept their native side n, of which the checkpoint
records only s (the next multiple of 32 above n): evaluation images of one side that
pads to s are taken as they are (as training took its own), any others rescaled to s.
A model without a training record (a bare VGG) takes the native side of the images.
A test image whose shorter side Q is below s is padded centred (with the mean colour)
to s, as in training.
``dense``, ``multi-crop`` and ``dense+multi-crop`` use the multi-scale set by default
(as the paper's Table 5); pass ``scales=[Q]`` for one scale.

Dense evaluation at small resolution: every 2x2 max-pool floors an odd side, so an
image of side H yields a score map of side H // 32 - s/32 + 1; at s = 32 any image
smaller than 64 pixels gives a 1 x 1 map whose window is anchored at the top-left
(the last rows/columns of a 37-pixel image are dropped by the pools). At ImageNet
resolution this is a few pixels out of 256; on 32 x 32 images it is most of the
difference between "dense" and "central crop".
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .data.datasets import NATIVE_SIZE, load_size
from .data.transforms import rescale, single_test_scale, to_network_input
from .evaluate import topk_correct
from .losses import softmax

__all__ = [
    "PROTOCOLS",
    "EvalModel",
    "as_eval_model",
    "paper_offset",
    "test_scales",
    "model_test_scales",
    "default_scales",
    "grid_crops",
    "prepare_images",
    "single_scale_posteriors",
    "multi_scale_posteriors",
    "dense_posteriors",
    "multi_crop_posteriors",
    "protocol_posteriors",
    "ensemble_posteriors",
    "topk_accuracy",
    "evaluate_protocol",
    "load_eval_dataset",
]

PROTOCOLS = ("single", "multi-scale", "dense", "multi-crop", "dense+multi-crop")


# ----------------------------------------------------------------------------------
# Models with their preprocessing
# ----------------------------------------------------------------------------------

@dataclass
class EvalModel:
    """A network and what evaluating it needs from its training run.

    model : :class:`tinyvgg.models.VGG`
    mean, std : (C,) float32 in [0, 255] units, or None (no subtraction / division)
    input_size : s, the training crop side
    channels : input channels of the first convolution
    train_scale : None (trained at the images' native scale), S, or (S_min, S_max)
    train_sides : for a model trained without rescaling, the shorter sides (lo, hi) its
        training images may have had (:func:`_train_sides`; (S, S) when known), or None
        when there is no training record (the evaluation images' native side is used)
    name : shown in reports (the checkpoint path)
    """

    model: object
    mean: object = None
    std: object = None
    input_size: int = 224
    channels: int = 3
    train_scale: object = None
    train_sides: object = None
    name: str = "model"
    meta: dict = field(default_factory=dict, repr=False)
    _fc: object = field(default=None, repr=False)

    @property
    def fully_convolutional(self):
        """The dense-evaluation network (built once; it shares the weights)."""
        if self._fc is None:
            self._fc = self.model.to_fully_convolutional()
        return self._fc

    @property
    def num_classes(self):
        return int(self.model.config["num_classes"])

    @property
    def dtype(self):
        return np.dtype(self.model.config.get("dtype", "float32"))


def _norm_scale(scale):
    """None, S or (S_min, S_max) from what a config holds (int, list, tuple)."""
    if scale is None:
        return None
    if isinstance(scale, (list, tuple)):
        if len(scale) == 1:
            return int(scale[0])
        if len(scale) != 2:
            raise ValueError(f"a training scale is S or (S_min, S_max), got {scale!r}")
        lo, hi = int(scale[0]), int(scale[1])
        return lo if lo == hi else (lo, hi)
    return int(scale)


def _vector(v):
    return None if v is None else np.asarray(v, np.float32).reshape(-1)


def as_eval_model(obj, mean=None, std=None, train_scale=None, name=None):
    """An :class:`EvalModel` from a checkpoint path, a loaded
    :class:`tinyvgg.checkpoint.Checkpoint`, a VGG (with ``mean``, ``std`` and
    ``train_scale`` given here) or an EvalModel (returned as it is).

    From a checkpoint: mean, std and input_size come from its ``meta`` (as the trainer
    writes them), the training scale from ``meta["train_config"]["scale"]``, the side of
    its training images from its training config (:func:`_train_sides`).
    """
    if isinstance(obj, EvalModel):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from . import checkpoint
        obj = checkpoint.load(obj)
    if hasattr(obj, "meta") and hasattr(obj, "model") and hasattr(obj, "optimizer_state"):
        meta = obj.meta or {}
        model = obj.model
        tc = meta.get("train_config") or {}
        input_size = int(meta.get("input_size") or model.input_size)
        return EvalModel(
            model=model,
            mean=_vector(meta.get("mean") if mean is None else mean),
            std=_vector(meta.get("std") if std is None else std),
            input_size=input_size,
            channels=_first_conv(model).in_channels,
            train_scale=_norm_scale(tc.get("scale") if train_scale is None else train_scale),
            train_sides=_train_sides(tc, input_size),
            name=name or str(getattr(obj, "path", "checkpoint")),
            meta=meta)
    if hasattr(obj, "forward") and hasattr(obj, "to_fully_convolutional"):
        return EvalModel(model=obj, mean=_vector(mean), std=_vector(std),
                         input_size=int(obj.input_size), channels=_first_conv(obj).in_channels,
                         train_scale=_norm_scale(train_scale),
                         name=name or getattr(obj, "name", "model"))
    raise TypeError(f"as_eval_model: expected a VGG, a checkpoint (path or loaded) or an "
                    f"EvalModel, got {type(obj).__name__}")


def _train_sides(train_config, input_size):
    """The shorter sides ``(lo, hi)`` the training images of a checkpoint had when it was
    trained without ``--scale``, from its training config (``{}`` for converted weights)
    and its input size s, as :func:`tinyvgg.train.prepare_data` loaded them:

    - Fashion-MNIST, CIFAR-10: their native side (28, 32), or the input size when
      larger than that padded to 32 (:func:`tinyvgg.data.load_size`): (S, S).
    - class folders with ``--input-size``, converted weights: (s, s).
    - class folders without ``--input-size``: their native side n, which the checkpoint
      does not record, only s = :func:`tinyvgg.data.padded_side` (n): (s - 31, s).
    """
    name, size, s = train_config.get("dataset"), train_config.get("input_size"), int(input_size)
    if name in NATIVE_SIZE:
        side = load_size(name, size) or NATIVE_SIZE[name]
        return side, side
    if name == "folder" and size is None:
        return s - 31, s
    return s, s


def _first_conv(model):
    for layer in model.layers:
        if hasattr(layer, "in_channels"):
            return layer
    raise ValueError("the model has no convolution")


# ----------------------------------------------------------------------------------
# Test scales
# ----------------------------------------------------------------------------------

def paper_offset(input_size):
    """The multi-scale offset d for crop size s: the paper's 32 at s = 224, scaled
    with s (``round(32 s / 224)``, at least 1): 5 at s = 32."""
    return max(1, int(math.floor(32 * int(input_size) / 224 + 0.5)))


def test_scales(S, jittered=None, input_size=224, multi=True):
    """Test scales Q for a model trained at scale ``S``.

    S : int (fixed scale) or (S_min, S_max) (jittered; ``jittered`` may say so too).
    multi : False -> the single-scale Q as a one-element list: [S] or
        [(S_min + S_max) // 2] (:func:`tinyvgg.data.transforms.single_test_scale`,
        the rule validation during training uses too). True -> the multi-scale set: [S - d, S, S + d]
        (d = :func:`paper_offset` (input_size)) or [S_min, (S_min + S_max) // 2, S_max].

    >>> test_scales(256), test_scales(384), test_scales((256, 512))
    ([224, 256, 288], [352, 384, 416], [256, 384, 512])
    >>> test_scales(32, input_size=32), test_scales((32, 48), input_size=32, multi=False)
    ([27, 32, 37], [40])
    """
    if isinstance(S, (list, tuple)):
        if len(S) != 2:
            raise ValueError(f"test_scales: S must be an int or (S_min, S_max), got {S!r}")
        lo, hi = int(S[0]), int(S[1])
        if lo > hi:
            raise ValueError(f"test_scales: S_min {lo} > S_max {hi}")
        if jittered is False and lo != hi:
            raise ValueError(f"test_scales: a range {S!r} is a jittered scale")
        if lo == hi and not jittered:
            S = lo
        else:
            mid = single_test_scale((lo, hi))
            return [mid] if not multi else sorted({lo, mid, hi})
    elif jittered:
        raise ValueError(f"test_scales: a jittered scale needs (S_min, S_max), got {S!r}")
    S = int(S)
    if S < 1:
        raise ValueError(f"test_scales: S must be positive, got {S}")
    if not multi:
        return [S]
    d = paper_offset(input_size)
    return [q for q in (S - d, S, S + d) if q >= 1]


test_scales.__test__ = False  # a library function, not a pytest test


def _native_side(images, em):
    """The shorter side of the dataset's images when they share one size, else s."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return int(min(images.shape[1:3]))
    if len(images):
        shapes = {tuple(np.shape(im)[:2]) for im in images}
        if len(shapes) == 1:
            return int(min(next(iter(shapes))))
    return int(em.input_size)


def _single_q(em, images, Q):
    """``Q`` as given, or the model's single-scale Q for these images."""
    if Q is not None:
        return Q
    return model_test_scales(em, multi=False, native_size=_native_side(images, em))[0]


def _trained_side(em, native_size=None):
    """S of a model trained without rescaling: the side of its training images
    (``em.train_sides``) -- ``native_size``, the evaluation images' side, only when
    it is one of the sides they may have had, else the largest (s); a model without a
    training record: ``native_size`` (default: its input size)."""
    if em.train_sides is None:
        return int(native_size or em.input_size)
    lo, hi = (int(v) for v in em.train_sides)
    return int(native_size) if native_size is not None and lo <= native_size <= hi else hi


def model_test_scales(model, multi=True, native_size=None):
    """:func:`test_scales` for an EvalModel: its training scale, or for a model trained
    without rescaling the side of its training images (:func:`_trained_side`;
    ``native_size`` is the evaluation images' shorter side, used only where the
    checkpoint does not record that side)."""
    em = as_eval_model(model)
    S = em.train_scale
    if S is None:
        S = _trained_side(em, native_size)
    return test_scales(S, input_size=em.input_size, multi=multi)


def default_scales(model, protocol, native_size=None):
    """The scales a protocol uses when none are given: the single-scale Q for
    ``single``, the multi-scale set for every other protocol (the paper's Table 5)."""
    _check_protocol(protocol)
    return model_test_scales(model, multi=protocol != "single", native_size=native_size)


def _check_protocol(protocol):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


# ----------------------------------------------------------------------------------
# Images -> network inputs
# ----------------------------------------------------------------------------------

def grid_crops(image_hwc, crop, grid=5):
    """Top-left corners of a ``grid`` x ``grid`` set of ``crop`` x ``crop`` windows.

    image_hwc : an (H, W, ...) array, or an (H, W) pair.
    Positions are evenly spaced and the outer ones touch the borders:
    top_i = round(i (H - crop) / (grid - 1)), i = 0 .. grid-1 (halves rounded up), and
    the same for left; ``grid == 1`` gives the central crop. Returned row-major, as a
    list of (top, left): [(t0, l0), (t0, l1), ..., (t1, l0), ...]. Positions repeat
    when the image is less than grid - 1 pixels larger than the crop.
    """
    if isinstance(image_hwc, (tuple, list)) and len(image_hwc) == 2:
        h, w = int(image_hwc[0]), int(image_hwc[1])
    else:
        h, w = (int(v) for v in np.shape(image_hwc)[:2])
    crop, grid = int(crop), int(grid)
    if grid < 1 or crop < 1:
        raise ValueError(f"grid_crops: grid and crop must be positive, got {grid}, {crop}")
    if crop > h or crop > w:
        raise ValueError(f"grid_crops: crop {crop} is larger than the image {h}x{w}")

    def coords(n):
        r = n - crop
        if grid == 1:
            return [r // 2]
        return [(2 * i * r + grid - 1) // (2 * (grid - 1)) for i in range(grid)]

    return [(t, l) for t in coords(h) for l in coords(w)]


def _to_input(batch, em):
    """uint8 (n, H, W, C) -> float32 (n, channels, H', W'): the training pipeline's
    :func:`tinyvgg.data.transforms.to_network_input` with this model's statistics."""
    return to_network_input(batch, em.mean, em.std, em.input_size, em.channels, np.float32,
                            what=em.name)


def prepare_images(images, Q, model):
    """Rescale (shorter side Q; None keeps the native size), normalise and pad every
    image as in training. Returns ``[(indices (n,), x float32 (n, C, H, W))]``, one
    entry per distinct resulting shape (one entry for same-sized images)."""
    em = as_eval_model(model)
    if isinstance(images, np.ndarray) and images.ndim == 4 and \
            (Q is None or int(Q) == min(images.shape[1:3])):
        return [(np.arange(len(images)), _to_input(images, em))]
    groups = {}
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim == 2:
            im = im[:, :, None]
        if Q is not None:
            im = rescale(im, int(Q))
        groups.setdefault(im.shape, []).append((i, im))
    out = []
    for _, items in groups.items():
        idx = np.array([i for i, _ in items], dtype=np.int64)
        out.append((idx, _to_input(np.stack([im for _, im in items]), em)))
    return out


def _forward_posteriors(fn, x, em, batch_size):
    """Softmax posteriors (n, K) float64 on the host of ``fn`` (logits (b, K)) over
    ``x`` (host (n, C, H, W)), in batches."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = backend.to_device(np.ascontiguousarray(x[i:i + batch_size], dtype=em.dtype))
        logits = np.asarray(backend.to_host(fn(xb)), dtype=np.float64)
        out.append(softmax(logits, axis=1))
    return np.concatenate(out) if out else np.zeros((0, em.num_classes))


def _fill(groups, n, k, per_group):
    post = np.zeros((n, k), dtype=np.float64)
    for idx, x in groups:
        post[idx] = per_group(x)
    return post


def _flip(x):
    return np.ascontiguousarray(x[..., ::-1])


def _batch_size(batch_size):
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return b


def single_scale_posteriors(model, images, Q=None, batch_size=64, flip=False):
    """Posteriors (N, K) of the central s x s crop of each image rescaled to shorter
    side ``Q`` (default: the model's single-scale Q). ``flip=True`` averages with the
    mirrored crop (off by default: the paper's single-scale numbers use none)."""
    em = as_eval_model(model)
    Q = _single_q(em, images, Q)
    s, b = em.input_size, _batch_size(batch_size)
    fwd = lambda xb: em.model.forward(xb, train=False)  # noqa: E731

    def per_group(x):
        h, w = x.shape[2:]
        top, left = (h - s) // 2, (w - s) // 2
        crop = np.ascontiguousarray(x[:, :, top:top + s, left:left + s])
        p = _forward_posteriors(fwd, crop, em, b)
        if flip:
            p = 0.5 * (p + _forward_posteriors(fwd, _flip(crop), em, b))
        return p

    return _fill(prepare_images(images, Q, em), len(images), em.num_classes, per_group)


def multi_scale_posteriors(model, images, scales=None, batch_size=64, flip=False):
    """Central-crop posteriors averaged over the test scales (default: the model's
    multi-scale set)."""
    em = as_eval_model(model)
    if scales is None:
        scales = model_test_scales(em, multi=True, native_size=_native_side(images, em))
    return np.mean([single_scale_posteriors(em, images, q, batch_size, flip) for q in scales],
                   axis=0)


def dense_posteriors(model, images, Q=None, flip=True, batch_size=64, return_maps=False):
    """Dense evaluation (section 3.2) at scale ``Q`` (default: single-scale Q).

    The fully convolutional net runs on the whole rescaled (and, when smaller than s,
    padded) image; its class score map (n, K, h, w) is averaged over (h, w), then
    soft-maxed; with ``flip`` the posteriors of the mirrored image are averaged in.
    Returns (N, K), and with ``return_maps`` also the list of score-map shapes per
    image group.
    """
    em = as_eval_model(model)
    Q = _single_q(em, images, Q)
    fc, b = em.fully_convolutional, _batch_size(batch_size)
    shapes = []

    def score(xb):
        m = fc.forward(xb, train=False)
        if not shapes or shapes[-1][2:] != tuple(m.shape[2:]):
            shapes.append(tuple(m.shape))
        return m.mean(axis=(2, 3))

    def per_group(x):
        p = _forward_posteriors(score, x, em, b)
        if flip:
            p = 0.5 * (p + _forward_posteriors(score, _flip(x), em, b))
        return p

    post = _fill(prepare_images(images, Q, em), len(images), em.num_classes, per_group)
    return (post, shapes) if return_maps else post


def multi_crop_posteriors(model, images, Q=None, grid=5, flip=True, batch_size=64):
    """Posteriors of a ``grid`` x ``grid`` set of s x s crops (and their mirror images
    with ``flip``) of each image rescaled to ``Q``, averaged: (N, K)."""
    em = as_eval_model(model)
    Q = _single_q(em, images, Q)
    s, b = em.input_size, _batch_size(batch_size)
    fwd = lambda xb: em.model.forward(xb, train=False)  # noqa: E731

    def per_group(x):
        m = len(x)
        positions = grid_crops(x.shape[2:], s, grid)
        counts = {}
        for p in positions:
            counts[p] = counts.get(p, 0) + 1
        items = list(counts.items())
        # Several positions per forward pass when the group has few images (small
        # networks pay per call), never more than about batch_size crops at once.
        per_pass = max(1, b // m)
        acc = np.zeros((m, em.num_classes))
        for i in range(0, len(items), per_pass):
            part = items[i:i + per_pass]
            crops = np.concatenate([x[:, :, t:t + s, l:l + s] for (t, l), _ in part])
            p = _forward_posteriors(fwd, crops, em, b)
            if flip:
                p = 0.5 * (p + _forward_posteriors(fwd, _flip(crops), em, b))
            weights = np.repeat(np.array([c for _, c in part], np.float64), m)
            acc += (weights[:, None] * p).reshape(len(part), m, -1).sum(axis=0)
        return acc / len(positions)

    return _fill(prepare_images(images, Q, em), len(images), em.num_classes, per_group)


def protocol_posteriors(model, images, protocol, scales=None, batch_size=64, grid=5):
    """Posteriors (N, K) of one model under ``protocol`` (see the module docstring),
    averaged over ``scales`` (default: :func:`default_scales`)."""
    _check_protocol(protocol)
    em = as_eval_model(model)
    if scales is None:
        scales = default_scales(em, protocol, native_size=_native_side(images, em))
    scales = [int(q) for q in scales]
    if not scales:
        raise ValueError("protocol_posteriors: no test scales")
    if protocol == "single":
        if len(scales) != 1:
            raise ValueError(f"the single-scale protocol takes one scale, got {scales}; use "
                             f"multi-scale")
        return single_scale_posteriors(em, images, scales[0], batch_size)
    if protocol == "multi-scale":
        return multi_scale_posteriors(em, images, scales, batch_size)

    def dense():
        return np.mean([dense_posteriors(em, images, q, True, batch_size) for q in scales], axis=0)

    def crops():
        return np.mean([multi_crop_posteriors(em, images, q, grid, True, batch_size)
                        for q in scales], axis=0)

    if protocol == "dense":
        return dense()
    if protocol == "multi-crop":
        return crops()
    return 0.5 * (dense() + crops())


def ensemble_posteriors(models, images, protocol, scales=None, batch_size=64):
    """The average over ``models`` of their :func:`protocol_posteriors` (the paper's
    fusion: soft-max class posteriors averaged)."""
    models = [as_eval_model(m) for m in models]
    if not models:
        raise ValueError("ensemble_posteriors: no models")
    return np.mean([protocol_posteriors(m, images, protocol, scales, batch_size) for m in models],
                   axis=0)


def topk_accuracy(posteriors, labels, k):
    """Fraction of the N rows of ``posteriors`` (N, K) whose label (N,) is among the
    ``k`` largest: :func:`tinyvgg.evaluate.topk_correct` (the one top-k) over N; NaN
    for N = 0."""
    y = np.asarray(labels)
    return float(topk_correct(np.asarray(posteriors), y, int(k))) / len(y) if len(y) else float("nan")


# ----------------------------------------------------------------------------------
# Whole datasets
# ----------------------------------------------------------------------------------

def _dataset_parts(dataset):
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        return dataset.images, np.asarray(dataset.labels), getattr(dataset, "classes", None)
    images, labels = dataset
    return images, np.asarray(labels), None


def evaluate_protocol(models, dataset, protocol, scales=None, batch_size=64, progress=True,
                      return_posteriors=False, desc=None):
    """Top-1 and top-5 accuracy and error of a model, or an ensemble, under a protocol.

    models : one model (checkpoint path, Checkpoint, VGG or EvalModel) or a list
        (an ensemble: posteriors averaged over the models).
    dataset : a :class:`tinyvgg.data.Dataset` or ``(images, labels)``.
    scales : test scales for every model, or None for each model's default
        (:func:`default_scales`).
    batch_size : images per chunk and network inputs per forward pass.
    progress : a tqdm bar over the images (on stderr).

    Returns ``{"top1", "top5", "top1_error", "top5_error", "n", "protocol", "scales",
    "models", "time_s"}``; ``scales`` is the list of Q when every model uses the same,
    else one list per model. With ``return_posteriors``: also ``"posteriors"`` (N, K)
    (the ensemble's), ``"model_posteriors"`` (one (N, K) per model), ``"labels"`` and
    ``"predictions"``.
    """
    _check_protocol(protocol)
    if not isinstance(models, (list, tuple)):
        models = [models]
    ems = [as_eval_model(m) for m in models]
    if not ems:
        raise ValueError("evaluate_protocol: no models")
    images, labels, _ = _dataset_parts(dataset)
    n = len(labels)
    if n == 0:
        raise ValueError("evaluate_protocol: the dataset is empty")
    k = {em.num_classes for em in ems}
    if len(k) != 1:
        raise ValueError(f"evaluate_protocol: the models predict different numbers of classes "
                         f"({sorted(k)}); an ensemble needs the same classes")
    k = k.pop()
    if labels.max() >= k:
        raise ValueError(f"evaluate_protocol: labels go up to {labels.max()} but the model has "
                         f"{k} classes")
    native = _native_side(images, ems[0])
    per_model_scales = [[int(q) for q in scales] if scales is not None
                        else default_scales(em, protocol, native_size=_native_side(images, em))
                        for em in ems]
    b = _batch_size(batch_size)
    posts = [np.zeros((n, k)) for _ in ems]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=desc or f"evaluate ({protocol})", unit="img", leave=False,
                   dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for start in range(0, n, b):
            stop = min(start + b, n)
            chunk = images[start:stop]
            for j, em in enumerate(ems):
                posts[j][start:stop] = protocol_posteriors(em, chunk, protocol,
                                                           per_model_scales[j], b)
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    post = np.mean(posts, axis=0)
    top1, top5 = topk_accuracy(post, labels, 1), topk_accuracy(post, labels, 5)
    same = all(s == per_model_scales[0] for s in per_model_scales)
    out = {"top1": top1, "top5": top5, "top1_error": 1.0 - top1, "top5_error": 1.0 - top5,
           "n": int(n), "protocol": protocol,
           "scales": per_model_scales[0] if same else per_model_scales,
           "models": [em.name for em in ems], "time_s": elapsed, "native_size": native}
    if return_posteriors:
        out.update(posteriors=post, model_posteriors=posts, labels=labels,
                   predictions=post.argmax(axis=1))
    return out


# ----------------------------------------------------------------------------------
# The images to evaluate on (the command itself is tinyvgg.cli's evaluate)
# ----------------------------------------------------------------------------------

def _load_side(models, train_config):
    """The side to load evaluation images at for ``models`` trained without rescaling:
    the side of their training images when every checkpoint records the same one
    (``train_sides`` (S, S)), else -- a class folder trained at native sizes, or
    models without a training record -- the training config's input size (None: native
    sizes), else the first model's input size."""
    sides = {getattr(em, "train_sides", None) for em in models}
    if len(sides) == 1:
        (only,) = sides
        if only is not None and only[0] == only[1]:
            return int(only[1])
    if "input_size" in train_config:
        return train_config["input_size"]
    return int(models[0].input_size)


def _model_name(em, i):
    return str(getattr(em, "name", None) or f"model {i + 1}")


def _check_same_input_size(models):
    """ValueError naming the models and their input sizes when they differ: an
    ensemble's images are loaded once, at one size."""
    sizes = [int(em.input_size) for em in models]
    if len(set(sizes)) > 1:
        shown = ", ".join(f"{_model_name(em, i)} at {s}" for i, (em, s) in
                          enumerate(zip(models, sizes)))
        raise ValueError(f"the checkpoints were trained at different input sizes ({shown}); "
                         f"an ensemble's images are loaded once, at one size, so a model "
                         f"would see them at a size it was not trained at. Evaluate them one "
                         f"at a time, or ensemble checkpoints trained at the same input size")


def _split_settings(train_config):
    """What draws a training run's held-out validation images (as
    :func:`tinyvgg.train.prepare_data` calls :func:`tinyvgg.data.train_val_split`):
    ``{"dataset", "data folder", "val_size", "split seed", "limit", "sampling"}``."""
    tc = train_config
    folder = tc.get("data_dir") if tc.get("dataset") == "folder" else None
    return {"dataset": tc.get("dataset"),
            "data folder": os.path.realpath(folder) if folder is not None else None,
            "val_size": tc.get("val_size", 0.1),
            "split seed": int(tc["split_seed"] if tc.get("split_seed") is not None
                              else tc.get("seed", 0)),
            "limit": tc.get("limit"),
            # Checkpoints saved before stratified sampling drew their split by a shuffle.
            "sampling": tc.get("sampling", "shuffle")}


def _check_same_split(models, train_config):
    """ValueError when the models held out different validation images: the first
    model's split (``train_config``) would contain images another one trained on.
    Models without a training config are not compared."""
    runs = []
    for i, em in enumerate(models):
        tc = train_config if i == 0 and train_config else \
            (getattr(em, "meta", None) or {}).get("train_config")
        if tc:
            runs.append((_model_name(em, i), _split_settings(tc)))
    for other, settings in runs[1:]:
        first, ref = runs[0]
        diff = [f"{k} {ref[k]} vs {settings[k]}" for k in ref if settings[k] != ref[k]]
        if diff:
            raise ValueError(f"{first} and {other} held out different validation images "
                             f"({'; '.join(diff)}): one may have trained on images the other "
                             f"held out. Evaluate them one at a time on their validation "
                             f"images, or the ensemble on images neither trained on (a test "
                             f"split or folder)")


def _check_unnamed_classes(dataset, models, where, folder=True):
    """Models without class names score ``dataset`` by position (label k is output k):
    ValueError naming both numbers when a model's number of outputs is not the number
    of classes of ``dataset``, else a warning that the labels are matched by position.
    Nothing when a model has class names (the caller matches them by name) or the
    models or dataset do not say how many classes they have."""
    if any((getattr(em, "meta", None) or {}).get("classes") for em in models):
        return
    classes = [str(c) for c in (getattr(dataset, "classes", None) or [])]
    unnamed = [(_model_name(em, i), int(em.num_classes)) for i, em in enumerate(models)
               if hasattr(em, "num_classes")]
    if not classes or not unnamed:
        return
    for model, k in unnamed:
        if k != len(classes):
            raise ValueError(f"{model} has no class names and {k} outputs, but {where} has "
                             f"{len(classes)} classes ({_some(classes)}): its labels cannot be "
                             f"matched to the outputs. Evaluate it on a folder of {k} classes "
                             f"whose sorted names follow the order of its outputs, or use a "
                             f"checkpoint that records its class names")
    order = "sorted folder names" if folder else f"{where}'s class order"
    pairs = [f"{c} -> {k}" for k, c in enumerate(classes)]
    warnings.warn(f"{', '.join(m for m, _ in unnamed)}: the checkpoint has no class names, so "
                  f"the {len(classes)} classes of {where} are matched to its outputs by "
                  f"position ({order}: {_some(pairs)}); check that this is the order of the "
                  f"model's outputs", stacklevel=3)


def _some(items, n=5):
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _folder_root(data_dir, split=None):
    """The folder ``load_dataset("folder", data_dir, split)`` reads, and whether
    ``data_dir`` has split sub-folders (train, val, test)."""
    from pathlib import Path
    root = Path(data_dir).expanduser()
    layout = any((root / s).is_dir() for s in ("train", "val", "test"))
    sub = root / str(split)
    if split is not None and sub.is_dir() and any(p.is_dir() for p in sub.iterdir()):
        return sub, layout
    return root, layout


def load_eval_dataset(name, data_dir, split, models, train_config=None):
    """The dataset to evaluate on, loaded as the training run loaded it.

    split : None (the default), "test", "val", "train" or "all".
        "val" is the validation set held out by the training run (``train_config``'s
        limit, val_size, split_seed (its seed when None) and sampling, drawn by
        :func:`tinyvgg.data.train_val_split` as training drew it) from the training split
        of ``data_dir``. "train" and "all" are every image of the training split / folder;
        "test" is the test split.
        A class folder without train/val/test sub-folders is evaluated whole for
        None and "test", except the very folder the model was trained on, which has
        no test images: then its held-out validation images are used, as training did.
        None is "test" otherwise.
    Images are loaded as training loaded them (:func:`tinyvgg.data.load_size`), at the
    side of the models' training images (:func:`_load_side`), never at a size read from
    the images evaluated: class folders rescaled and centre-cropped to it when every
    model was trained without ``scale``, otherwise (and for a folder trained at its
    native side, which the checkpoint does not record) at their native sizes, each then
    rescaled to its test scale Q; Fashion-MNIST and CIFAR-10 rescaled only for a network
    larger than their images padded to 32.
    Returns ``(dataset, split_used, description)``: the description names the images
    used (folder, split, how they were drawn).

    Models without class names (no ``meta["classes"]``, e.g. converted weights) score
    the dataset by position -- label k is output k, the k-th sorted class folder --
    which :func:`_check_unnamed_classes` allows only when the numbers of classes agree,
    with a warning (``warnings.warn``); models with class names are matched by name by
    the caller (:func:`tinyvgg.data.align_classes`).

    Raises ValueError when the models of an ensemble were trained at different input
    sizes (the images are loaded once, at one size), or -- for the held-out validation
    images -- with different split settings (dataset, data folder, val_size, split seed,
    limit or sampling: one model may have trained on images another held out), or when
    models without class names have another number of outputs than the dataset has
    classes.
    """
    tc = dict(train_config or {})
    name = str(name)
    _check_same_input_size(models)
    ds, used, desc = _load_eval_split(name, data_dir, split, models, tc)
    _check_unnamed_classes(ds, models, name if name != "folder" else str(data_dir),
                           folder=name == "folder")
    return ds, used, desc


def _load_eval_split(name, data_dir, split, models, tc):
    """:func:`load_eval_dataset`'s images, before the class check: ``(dataset,
    split_used, description)``."""
    from .data import load_dataset, train_val_split

    # As prepare_data: rescaled at load time to the side training used when it did not
    # rescale (a folder's None there keeps native sizes).
    scale = next((em.train_scale for em in models if em.train_scale is not None), None)
    size = load_size(name, _load_side(models, tc), scale)

    def load(sp):
        return load_dataset(name, data_dir, split=sp, size=size)

    where = name if name != "folder" else str(data_dir)

    def held_out(why=""):
        _check_same_split(models, tc)
        settings = _split_settings(tc)
        limit, seed, vs = settings["limit"], settings["split seed"], settings["val_size"]
        stratify = settings["sampling"] != "shuffle"
        val = train_val_split(load("train"), vs, seed, stratify, limit)[1]
        return val, "val", (f"the {len(val)} validation images the training run held out of "
                            f"{where} (training split; val_size {vs:g}, seed {seed}"
                            f"{f', limit {limit}' if limit is not None else ''}){why}")

    if split in ("val", "validation"):
        return held_out()
    if split not in (None, "test", "train", "all"):
        raise ValueError(f"--split must be test, val, train or all, got {split!r}")
    if name != "folder":
        sp = "train" if split in ("train", "all") else "test"
        return load(sp), sp, f"the {sp} split of {name}"
    if data_dir is None:
        raise ValueError("the folder dataset needs --data-dir, the root of the class folders")
    if split in ("train", "all"):
        root, _ = _folder_root(data_dir, "train")
        return load("train"), split, f"every image of {root}"
    root, layout = _folder_root(data_dir, "test")
    if layout:
        return load("test"), "test", f"the test split {root}"
    trained_on = tc.get("data_dir") if tc.get("dataset") == "folder" else None
    if trained_on is not None and \
            os.path.realpath(_folder_root(trained_on, "train")[0]) == os.path.realpath(root):
        # The training folder itself: its images were trained on, except the held-out ones.
        return held_out(" -- the model was trained on this folder, which has no test split; "
                        "give --split all to score every image")
    return load("test"), "all", (f"every image of {root} (a folder without train/test "
                                 f"sub-folders is evaluated whole; --split val for the "
                                 f"training run's held-out part)")
