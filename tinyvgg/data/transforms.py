"""Training and evaluation transforms of VGG section 3.1, vectorised over batches.

Notation
--------
N : images in a batch
C : channels (1 or 3)
H, W : height and width before cropping
S : training scale, the shorter image side after isotropic rescaling; fixed, or
    drawn per image from [S_min, S_max] ("scale jittering")
size : the network's input side (224 in the paper, 32 for CIFAR-10)

Images arrive as uint8 (H, W, C) arrays (channels last, as stored); batches
leave as float32 (N, C, H, W) (channels first, as the layers expect), or in the
``dtype`` the transform was built with (float64 for a float64 model).

The paper's pipeline (and AlexNet's, which it follows):

1. rescale isotropically so the shorter side is S (Pillow, bilinear, per
   image, before batching);
2. take a random size x size crop (per image, its own offset);
3. flip horizontally with probability 1/2;
4. shift the colour along the principal components of the training set's pixel
   colours (AlexNet's "PCA colour augmentation");
5. subtract the mean RGB value of the training set (optionally divide by the
   per-channel standard deviation, which the paper does not do).

Images smaller than ``size`` (Fashion-MNIST is 28 x 28, the network input 32)
are padded centred with zeros *after* mean subtraction, i.e. with the mean
colour. Batch-level functions work on NumPy or CuPy arrays
(``xp = tinyvgg.backend.get_array_module(x)``); random numbers always come from
a host ``numpy.random.Generator`` (``rng``, default
``tinyvgg.backend.host_rng()``), so results are reproducible and the same on
both backends.
"""

from __future__ import annotations

import numpy as np

from .. import backend

__all__ = [
    "compute_mean_std",
    "compute_pca",
    "rescale",
    "to_float_nchw",
    "center_pad",
    "random_crop",
    "random_flip",
    "pca_color_shift",
    "center_crop",
    "single_test_scale",
    "to_network_input",
    "TrainTransform",
    "EvalTransform",
]


def _rng(rng):
    return backend.host_rng() if rng is None else rng


def _images_of(data):
    """Dataset, (N, H, W, C) array or list of (H, W, C) arrays -> images."""
    return getattr(data, "images", data)


def _chunks(images, n=2048):
    """Yield uint8 (n_i, H, W, C) blocks (stacked) or single (1, H, W, C) images."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"expected images (N, H, W, C), got shape {images.shape}")
        for i in range(0, len(images), n):
            yield images[i:i + n]
    else:
        for im in images:
            im = np.asarray(im)
            if im.ndim != 3:
                raise ValueError(f"expected an image (H, W, C), got shape {im.shape}")
            yield im[None]


def compute_mean_std(dataset):
    """Per-channel mean and standard deviation over all pixels of all images.

    dataset : Dataset, uint8 (N, H, W, C) array or list of (H, W, C) arrays.
    Returns ``(mean (C,), std (C,))`` float32, in pixel units [0, 255].
    """
    images = _images_of(dataset)
    total = 0
    s = s2 = None
    for block in _chunks(images):
        b = block.reshape(-1, block.shape[-1]).astype(np.float64)
        if s is None:
            s, s2 = np.zeros(b.shape[1]), np.zeros(b.shape[1])
        elif b.shape[1] != len(s):
            raise ValueError("compute_mean_std: images have different numbers of channels")
        s += b.sum(axis=0)
        s2 += np.einsum("pc,pc->c", b, b)
        total += b.shape[0]
    if not total:
        raise ValueError("compute_mean_std: the dataset holds no pixels")
    mean = s / total
    var = np.maximum(s2 / total - mean ** 2, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def compute_pca(dataset, max_pixels=1_000_000, seed=0):
    """Principal components of pixel colours (scaled to [0, 1]), as in AlexNet.

    At most ``max_pixels`` pixels are sampled (uniformly, with replacement,
    seeded by ``seed``). Returns ``(eigvals (C,), eigvecs (C, C))`` float32,
    eigenvalues in decreasing order, eigenvector i in column ``eigvecs[:, i]``.
    """
    images = _images_of(dataset)
    rng = np.random.default_rng(seed)
    if isinstance(images, np.ndarray):
        n, h, w, c = images.shape
        flat = images.reshape(n, h * w, c)
        if n * h * w <= max_pixels:
            px = flat.reshape(-1, c)
        else:
            px = flat[rng.integers(0, n, max_pixels), rng.integers(0, h * w, max_pixels)]
    else:
        if not len(images):
            raise ValueError("compute_pca: the dataset holds no images")
        k = max(1, -(-max_pixels // len(images)))
        parts = []
        for im in images:
            im = np.asarray(im).reshape(-1, np.shape(im)[-1])
            parts.append(im if len(im) <= k else im[rng.integers(0, len(im), k)])
        px = np.concatenate(parts)
    if len(px) < 2:
        raise ValueError("compute_pca: need at least 2 pixels")
    px = px.astype(np.float64) / 255.0
    cov = np.atleast_2d(np.cov(px, rowvar=False))
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    return np.maximum(vals[order], 0).astype(np.float32), vecs[:, order].astype(np.float32)


def _rescaled_size(w, h, shorter_side):
    """(W', H') with min(W', H') == shorter_side and the aspect ratio kept."""
    if w <= h:
        return shorter_side, max(shorter_side, int(round(h * shorter_side / w)))
    return max(shorter_side, int(round(w * shorter_side / h))), shorter_side


def _pil_rescale(im, shorter_side):
    """A PIL image rescaled isotropically so its shorter side is ``shorter_side``."""
    from PIL import Image

    new = _rescaled_size(im.size[0], im.size[1], int(shorter_side))
    if new == im.size:
        return im
    return im.resize(new, Image.BILINEAR)


def rescale(image, shorter_side):
    """Rescale a uint8 (H, W, C) image isotropically (bilinear, Pillow) so that
    min(H', W') == shorter_side. Returns uint8 (H', W', C)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"rescale: expected a uint8 (H, W, C) image with C 1 or 3, "
                         f"got {image.dtype} {image.shape}")
    if int(shorter_side) < 1:
        raise ValueError(f"rescale: shorter_side must be positive, got {shorter_side}")
    h, w, c = image.shape
    if min(h, w) == shorter_side:
        return image
    pil = Image.fromarray(image[..., 0] if c == 1 else image)
    out = np.asarray(_pil_rescale(pil, shorter_side))
    return out[..., None] if c == 1 else out


def to_float_nchw(batch, mean=None, std=None, dtype=np.float32):
    """uint8 (N, H, W, C) -> ``dtype`` (float32 or float64) (N, C, H, W), minus ``mean``
    (C,) and divided by ``std`` (C,) when given (both in [0, 255] units; scalars
    allowed), computed in ``dtype``."""
    xp = backend.get_array_module(batch)
    if batch.ndim != 4:
        raise ValueError(f"to_float_nchw: expected a batch (N, H, W, C), got shape {batch.shape}")
    x = batch.astype(dtype)
    if mean is not None:
        x -= _channel_vector(xp, mean, x.shape[-1], "mean", x.dtype)
    if std is not None:
        x /= _channel_vector(xp, std, x.shape[-1], "std", x.dtype)
    return xp.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _float_dtype(dtype, what):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"{what}: dtype must be float32 or float64 (the model's), got {dtype}")
    return dtype


def _channel_vector(xp, v, c, what, dtype=np.float32):
    v = np.asarray(backend.to_host(v) if backend.is_device_array(v) else v, dtype)
    if v.ndim == 0:
        v = np.full(c, v, dtype)
    if v.shape != (c,):
        raise ValueError(f"{what} must be a scalar or have shape ({c},), got {v.shape}")
    return v if xp is np else backend.to_device(v)


def _pair(size, what="size"):
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{what} must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    else:
        h = w = int(size)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return h, w


def center_pad(batch, size):
    """Pad a (N, C, H, W) batch with zeros, centred, to at least (size, size);
    sides already at least ``size`` are left alone."""
    xp = backend.get_array_module(batch)
    th, tw = _pair(size)
    h, w = batch.shape[2:]
    ph, pw = max(th - h, 0), max(tw - w, 0)
    if not ph and not pw:
        return batch
    return xp.pad(batch, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def random_crop(batch, size, padding=0, rng=None):
    """Per-image random crops of a (N, C, H, W) batch -> (N, C, size, size).

    The batch is first padded with ``padding`` zeros on every side (zeros are
    the mean colour once the mean is subtracted); each image then gets its own
    offset, uniform over all positions where the crop fits.
    """
    xp = backend.get_array_module(batch)
    if batch.ndim != 4:
        raise ValueError(f"random_crop: expected a batch (N, C, H, W), got shape {batch.shape}")
    th, tw = _pair(size)
    rng = _rng(rng)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding:
        batch = xp.pad(batch, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c, h, w = batch.shape
    if th > h or tw > w:
        raise ValueError(f"random_crop: crop {th}x{tw} larger than the (padded) images {h}x{w}")
    oy = rng.integers(0, h - th + 1, size=n)
    ox = rng.integers(0, w - tw + 1, size=n)
    if th == h and tw == w:
        return batch
    # A read-only view of every th x tw window, (N, C, H-th+1, W-tw+1, th, tw);
    # picking window (oy[i], ox[i]) of image i is one gather. Faster than fancy
    # indexing with per-pixel index arrays (and than a loop) on NumPy.
    sn, sc, sh, sw = batch.strides
    windows = xp.lib.stride_tricks.as_strided(
        batch, shape=(n, c, h - th + 1, w - tw + 1, th, tw),
        strides=(sn, sc, sh, sw, sh, sw))
    idx = np.arange(n)
    if xp is not np:
        idx, oy, ox = (backend.to_device(a) for a in (idx, oy, ox))
    return xp.ascontiguousarray(windows[idx, :, oy, ox])


def random_flip(batch, rng=None, p=0.5):
    """Mirror each image of a (N, C, H, W) batch left-right with probability ``p``."""
    xp = backend.get_array_module(batch)
    flip = _rng(rng).random(batch.shape[0]) < p
    if not flip.any():
        return batch
    if xp is not np:
        flip = backend.to_device(flip)
    return xp.where(flip[:, None, None, None], batch[..., ::-1], batch)


def pca_color_shift(batch, eigvals, eigvecs, std=0.1, rng=None, scale=255.0):
    """AlexNet's colour augmentation on a float (N, C, H, W) batch.

    Each image gets the constant colour ``sum_i alpha_i * eigvals[i] * eigvecs[:, i]``
    added to every pixel, alpha_i ~ N(0, std) drawn per image. ``eigvals``,
    ``eigvecs`` come from :func:`compute_pca` in [0, 1] colour units; ``scale``
    (a scalar or (C,)) converts to the batch's units: 255 for pixel units, 255 / std
    for a standardised batch.
    """
    xp = backend.get_array_module(batch)
    eigvals = np.asarray(eigvals, np.float32)
    eigvecs = np.asarray(eigvecs, np.float32)
    c = batch.shape[1]
    if eigvals.shape != (c,) or eigvecs.shape != (c, c):
        raise ValueError(f"pca_color_shift: eigvals {eigvals.shape} and eigvecs {eigvecs.shape} "
                         f"do not match a batch with {c} channels")
    alpha = _rng(rng).normal(0.0, std, size=(batch.shape[0], c)).astype(np.float32)
    shift = (alpha * eigvals) @ eigvecs.T  # (N, C): row n = sum_i alpha_ni lambda_i p_i
    shift = (shift * np.asarray(scale, np.float32)).astype(np.float32)
    if xp is not np:
        shift = backend.to_device(shift)
    return batch + shift[:, :, None, None].astype(batch.dtype, copy=False)


def center_crop(batch, size):
    """The central (size, size) window of a (N, C, H, W) batch."""
    th, tw = _pair(size)
    h, w = batch.shape[2:]
    if th > h or tw > w:
        raise ValueError(f"center_crop: crop {th}x{tw} larger than the images {h}x{w}")
    top, left = (h - th) // 2, (w - tw) // 2
    return batch[:, :, top:top + th, left:left + tw]


def single_test_scale(scale):
    """The single test scale Q for a training scale (section 3.2, Table 3): Q = S for
    a fixed S, Q = (S_min + S_max) // 2 (the paper's 0.5 (S_min + S_max)) for a
    jittered (S_min, S_max). The one rule: :class:`EvalTransform` (validation during
    training) and :func:`tinyvgg.evaluate_protocols.test_scales` both use it.

    >>> single_test_scale(256), single_test_scale((256, 512)), single_test_scale((32, 48))
    (256, 384, 40)
    """
    if isinstance(scale, (tuple, list)):
        lo, hi = (int(v) for v in scale)
        return (lo + hi) // 2
    return int(scale)


def to_network_input(batch, mean=None, std=None, size=None, channels=None, dtype=np.float32,
                     what="images"):
    """The one preprocessing from an image batch to network input, after any rescale
    or crop: uint8 (N, H, W, C) -> ``dtype`` (N, channels, H', W').

    mean, std : (C,) or 1-value, [0, 255] units, or None (no subtraction/division);
        see :func:`to_float_nchw`.
    size : None, or pad centred with zeros (the mean colour) to at least
        (size, size) (:func:`center_pad`); larger sides are left alone.
    channels : None, or the network's input channels: grayscale (C = 1) images given
        to a 3-channel network are repeated over the channels (before normalising
        with a 3-value mean, after normalising with a 1-value one).
    what : names the images in errors.

    Raises ValueError when the channels cannot be matched.
    """
    xp = backend.get_array_module(batch)
    c = batch.shape[-1]
    nmean = None if mean is None else np.size(mean)
    if nmean not in (None, 1, c):
        if c == 1 and nmean == 3:
            batch = xp.repeat(batch, 3, axis=-1)
        else:
            raise ValueError(f"{what}: the images have {c} channel(s) but the training mean "
                             f"has {nmean} values")
    x = to_float_nchw(batch, mean, std, dtype=dtype)
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] != 1:
            raise ValueError(f"{what}: the network takes {channels} channel(s), the images "
                             f"have {x.shape[1]}")
        x = xp.repeat(x, channels, axis=1)
    if size is not None:
        x = center_pad(x, size)
    return xp.ascontiguousarray(x, dtype=dtype)


def _stack(images, what):
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"{what}: expected uint8 images (N, H, W, C), got "
                             f"{images.dtype} {images.shape}")
        return images
    images = [np.asarray(im) for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{what}: the images of a batch have different shapes "
                         f"({sorted(shapes)[:3]}...); give scale= to rescale them, or load "
                         f"the folder with size=")
    out = np.stack(images)
    if out.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 images, got {out.dtype}")
    return out


def _check_scale(scale, size, what):
    if scale is None:
        return None
    if isinstance(scale, (tuple, list)):
        if len(scale) != 2 or int(scale[0]) > int(scale[1]):
            raise ValueError(f"{what}: scale must be an int S or (S_min, S_max), got {scale!r}")
        lo, hi = int(scale[0]), int(scale[1])
    else:
        lo = hi = int(scale)
    if lo < max(_pair(size)):
        raise ValueError(f"{what}: scale {scale!r} is smaller than the crop size {size}")
    return lo, hi


class TrainTransform:
    """Training augmentation: list/array of uint8 (H, W, C) -> ``dtype`` (N, C, size, size).

    size : int, the network input side.
    mean, std : (C,) in [0, 255] units (``compute_mean_std``); std None: no division.
    padding : int or None. Zeros added on every side before the random crop
        (the CIFAR "pad 4 and crop" augmentation); None means 0.
    scale : None, S or (S_min, S_max). When given, each image is rescaled with
        Pillow so its shorter side is S (drawn per image, integer, uniform in
        [S_min, S_max] for scale jittering), then a random size x size crop is
        taken from it. When None, images are batched as they are.
    flip : bool, random horizontal flips.
    pca : None or (eigvals, eigvecs) from ``compute_pca``; ``pca_std`` is the
        standard deviation of the alphas (0.1 in AlexNet).
    dtype : float32 (default) or float64, the model's; the batch is computed in it.
        Other dtypes raise ValueError.

    Without ``scale``: images smaller than ``size`` are padded centred to
    ``size`` (e.g. 28 -> 32 adds 2 on each side), then padded by ``padding`` and
    randomly cropped to ``size``; larger images are randomly cropped.
    """

    def __init__(self, size, mean, std=None, padding=None, scale=None, flip=True, pca=None,
                 pca_std=0.1, dtype=np.float32):
        self.size = _pair(size)
        self.dtype = _float_dtype(dtype, "TrainTransform")
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self.padding = int(padding or 0)
        if self.padding < 0:
            raise ValueError(f"TrainTransform: padding must be >= 0, got {padding}")
        self.scale = _check_scale(scale, size, "TrainTransform")
        self.flip = bool(flip)
        if pca is not None:
            if len(pca) != 2:
                raise ValueError("TrainTransform: pca must be (eigvals, eigvecs) from compute_pca")
            pca = (np.asarray(pca[0], np.float32), np.asarray(pca[1], np.float32))
        self.pca = pca
        self.pca_std = float(pca_std)

    def _rescale_and_crop(self, images, rng):
        th, tw = self.size
        lo, hi = self.scale
        s = rng.integers(lo, hi + 1, size=len(images))
        out = []
        for im, si in zip(images, s):
            im = rescale(np.asarray(im), int(si))
            h, w = im.shape[:2]
            top, left = rng.integers(0, h - th + 1), rng.integers(0, w - tw + 1)
            out.append(im[top:top + th, left:left + tw])
        return np.stack(out)

    def __call__(self, images, rng=None):
        rng = _rng(rng)
        if self.scale is not None:
            batch = self._rescale_and_crop(images, rng)
        else:
            batch = _stack(images, "TrainTransform")
        x = to_float_nchw(batch, self.mean, dtype=self.dtype)
        if self.pca is not None:
            x = pca_color_shift(x, *self.pca, std=self.pca_std, rng=rng)
        if self.std is not None:
            x /= _channel_vector(backend.get_array_module(x), self.std, x.shape[1],
                                 "std", self.dtype)[:, None, None]
        if self.scale is None:
            x = center_pad(x, self.size)
            if x.shape[2:] != self.size or self.padding:
                x = random_crop(x, self.size, self.padding, rng)
        if self.flip:
            x = random_flip(x, rng)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def __repr__(self):
        return (f"TrainTransform(size={self.size}, padding={self.padding}, scale={self.scale}, "
                f"flip={self.flip}, pca={'on' if self.pca is not None else 'off'})")


class EvalTransform:
    """Evaluation: list/array of uint8 (H, W, C) -> ``dtype`` (N, C, size, size).

    scale : None, Q or (S_min, S_max). When given, each image is rescaled so its
        shorter side is Q (for a range, Q = (S_min + S_max) // 2, the paper's
        single-scale test setting: :func:`single_test_scale`) and centre-cropped. When None, images smaller
        than ``size`` are padded centred (28 -> 32: 2 zeros each side, after mean
        subtraction) and larger ones centre-cropped.
    dtype : float32 (default) or float64, the model's (ValueError otherwise).
    """

    def __init__(self, size, mean, std=None, scale=None, dtype=np.float32):
        self.size = _pair(size)
        self.dtype = _float_dtype(dtype, "EvalTransform")
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        sc = _check_scale(scale, size, "EvalTransform")
        self.scale = None if sc is None else single_test_scale(sc)

    def __call__(self, images, rng=None):
        th, tw = self.size
        if self.scale is not None:
            out = []
            for im in images:
                im = rescale(np.asarray(im), self.scale)
                h, w = im.shape[:2]
                top, left = (h - th) // 2, (w - tw) // 2
                out.append(im[top:top + th, left:left + tw])
            batch = np.stack(out)
        else:
            batch = _stack(images, "EvalTransform")
        x = to_network_input(batch, self.mean, self.std, self.size, dtype=self.dtype,
                             what="EvalTransform")
        return np.ascontiguousarray(center_crop(x, self.size), dtype=self.dtype)

    def __repr__(self):
        return f"EvalTransform(size={self.size}, scale={self.scale})"
