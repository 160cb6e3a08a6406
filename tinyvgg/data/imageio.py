"""Image files -> uint8 pixels, as an image viewer shows them: the one decoding
function of tinyvgg (class folders, ``predict``).

Pillow opens a file in the mode that keeps its data, and ``Image.convert("RGB")``
alone is not what a viewer shows for several of them:

==============  ====================================================================
Pillow mode     how :func:`decode_image` renders it (8 bits per channel)
==============  ====================================================================
1, L, P, RGB,   Pillow's conversion (palette lookup, CMYK as Pillow inverts it,
CMYK, YCbCr...  RGB -> L as ITU-R 601-2 luma)
I;16, I;16L,    16-bit grey, 0..65535: the high byte, ``v >> 8`` (what Pillow keeps of a
I;16B, I;16N    16-bit RGB PNG, which it opens as 8-bit RGB); ``convert`` would clip
                every value above 255 to white
I               32-bit integers, read as 16-bit grey (Pillow's mode for 16-bit PNGs
                before 10.x and for int TIFFs): clipped to 0..65535, then ``v >> 8``
F               32-bit floats in [0, 1] (float TIFFs as GIMP or ImageMagick show
                them): ``round(255 v)``, clipped; NaN is black
RGBA, LA, PA,   composited over a white background (transparent pixels are white,
RGBa, La, and   not whatever colour hides under them); also a ``transparency`` colour
transparency    or palette entry of a P, L, RGB or 16-bit grey image
==============  ====================================================================

The EXIF orientation tag is applied first (a phone photo stored sideways comes
out upright), as viewers do.
"""

from __future__ import annotations

import numpy as np

__all__ = ["decode_image", "to_display_image", "DECODER_VERSION"]

# Part of the class-folder cache key: change it when decoding changes what arrays a file gives.
DECODER_VERSION = 2

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WHITE = 255


def _high_bit_to_8bit(im):
    """A 16-bit, 32-bit int or float grey PIL image -> uint8 (H, W) array."""
    a = np.asarray(im)
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    # I;16* are 0..65535 already; I (int32) is clipped into that range first.
    return (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _composite_over_white(rgb, alpha):
    """uint8 colour (H, W, C) over white with uint8 alpha (H, W) -> uint8 (H, W, C)."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + _WHITE * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_display_image(im, mode="RGB"):
    """A PIL image of any mode -> a PIL image of ``mode`` ("RGB" or "L"), 8 bits a
    channel, as a viewer shows it (see the module's table): EXIF orientation
    applied, high-bit-depth grey scaled (not clipped), transparency over white.
    Raises ValueError for another ``mode``."""
    from PIL import Image, ImageOps

    if mode not in ("RGB", "L"):
        raise ValueError(f"to_display_image: mode must be 'RGB' or 'L', got {mode!r}")
    im = ImageOps.exif_transpose(im)
    transparency = im.info.get("transparency")
    if im.mode.startswith("I") or im.mode == "F":
        grey = _high_bit_to_8bit(im)
        if transparency is not None and not isinstance(transparency, (tuple, bytes)):
            alpha = np.where(np.asarray(im) == transparency, 0, 255).astype(np.uint8)
            grey = _composite_over_white(grey[..., None], alpha)[..., 0]
        im = Image.fromarray(grey, "L")
    elif im.mode in _ALPHA_MODES or transparency is not None:
        rgba = np.asarray(im.convert("RGBA"))
        im = Image.fromarray(_composite_over_white(rgba[..., :3], rgba[..., 3]), "RGB")
    return im if im.mode == mode else im.convert(mode)


def decode_image(path, mode="RGB", size=None):
    """Decode the image file ``path`` as a viewer shows it (:func:`to_display_image`).

    mode : "RGB" (returns uint8 (H, W, 3)) or "L" (grey, uint8 (H, W, 1), for
        1-channel models such as Fashion-MNIST ones).
    size : int or None
        int: rescale isotropically so the shorter side is ``size`` (bilinear),
        then centre-crop to (size, size, C). JPEGs are decoded directly at a
        reduced scale when that stays at least ``size`` (faster for photos).

    Raises ``FileNotFoundError`` for a missing file and Pillow's
    ``UnidentifiedImageError`` (an ``OSError``) or ``OSError`` for a file it
    cannot decode. Returns a writable array.
    """
    from PIL import Image

    from .transforms import _pil_rescale

    with Image.open(path) as im:
        if size is not None:
            # Let the JPEG decoder downscale by a power of two while staying at
            # least size x size: much faster for large photos.
            im.draft(None, (size, size))
        im = to_display_image(im, mode)
    if size is not None:
        im = _pil_rescale(im, size)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    out = np.array(im, dtype=np.uint8)  # a writable copy
    return out[:, :, None] if out.ndim == 2 else out
