"""Datasets: Fashion-MNIST, CIFAR-10 and class folders, as uint8 arrays in memory.

Notation
--------
N : number of images
H, W : image height and width in pixels
C : colour channels (1 for Fashion-MNIST, 3 for RGB)
K : number of classes

Every loader returns a :class:`Dataset`: ``images`` is a host ``uint8`` array of
shape (N, H, W, C) (channels last, as stored on disk), or, for class folders
whose images differ in size, a list of N such (H_i, W_i, C) arrays; ``labels``
is ``int64`` (N,), values in [0, K); ``classes`` names the K classes.

Where the data comes from
-------------------------
:func:`find_dataset_dir` looks, in order, in ``data_dir`` (as given, then
``data_dir/<name>``), ``$TINYVGG_DATA/<name>``, ``~/.cache/tinyvgg/<name>`` and,
for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). When nothing is found and ``download=True`` the
official release is downloaded into ``$TINYVGG_DATA/<name>`` (or
``~/.cache/tinyvgg/<name>``), checked against its published MD5 and moved into
place only when complete. Otherwise :class:`DatasetNotFoundError` lists every
place searched and the ways to get the data.

Formats are parsed here with the standard library and NumPy: IDX (``.gz`` or
plain) for Fashion-MNIST, the pickled ``cifar-10-batches-py`` batches for
CIFAR-10, JPEG/PNG through Pillow for class folders.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..fileio import atomic_open

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "find_dataset_dir",
    "load_fashion_mnist",
    "load_cifar10",
    "load_image_folder",
    "align_classes",
    "UnknownClassError",
    "load_dataset",
    "clear_cache",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

# The official releases and their published MD5 sums (checked on download only:
# copies found on disk are validated by parsing, since repackaged copies such as
# Debian's are recompressed and hash differently).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# Where system packages install datasets (a module attribute so tests can
# point it elsewhere).
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")]}

DOWNLOAD_TIMEOUT_S = 30

_ALIASES = {
    "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10",
    "cifar_10": "cifar10", "folder": "folder", "imagefolder": "folder",
    "image-folder": "folder",
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is on none of the searched paths and could not be downloaded.

    The message lists every place searched and the ways to get the data.
    """


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------

class Dataset:
    """Images and labels in host memory.

    Attributes
    ----------
    images : numpy.ndarray uint8 (N, H, W, C), or list of N uint8 (H_i, W_i, C)
    labels : numpy.ndarray int64 (N,)
    classes : list of str, K names; label k means ``classes[k]``
    name : str
    paths : list of str or None, the source file of each image (class folders)
    skipped : list of (path, reason), images that could not be decoded
    """

    def __init__(self, images, labels, classes, name, paths=None, skipped=None):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"Dataset {name!r}: labels must be 1-D, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Dataset {name!r}: labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
                raise ValueError(
                    f"Dataset {name!r}: images must be uint8 (N, H, W, C) with C 1 or 3, "
                    f"got {images.dtype} {images.shape}")
        else:
            images = list(images)
            for i, im in enumerate(images):
                if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 \
                        or im.shape[-1] not in (1, 3):
                    raise ValueError(
                        f"Dataset {name!r}: image {i} must be a uint8 (H, W, C) array with "
                        f"C 1 or 3, got {getattr(im, 'dtype', type(im))} "
                        f"{getattr(im, 'shape', '')}")
        if len(images) != len(labels):
            raise ValueError(f"Dataset {name!r}: {len(images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"Dataset {name!r}: labels must lie in [0, {len(classes)}), "
                f"got [{labels.min()}, {labels.max()}]")
        if paths is not None and len(paths) != len(labels):
            raise ValueError(f"Dataset {name!r}: {len(paths)} paths but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.name = name
        self.paths = None if paths is None else list(paths)
        self.skipped = list(skipped or [])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        """``(image (H, W, C) uint8, label int)``."""
        return self.images[i], int(self.labels[i])

    def fingerprint(self):
        """A short hash (16 hex digits) of what this dataset holds, to tell later whether
        it is still the same one (a class folder with images added or removed draws other
        validation images from the same seed): the class names and, in order, each
        image's label and file (its class folder and file name, so a moved folder keeps
        its fingerprint; the position for datasets without files). Images are not read,
        so an image edited in place keeps the fingerprint."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        for p in self.paths or ():
            p = Path(p)
            h.update(f"{p.parent.name}/{p.name}\n".encode())
        return h.hexdigest()[:16]

    @property
    def stacked(self):
        """True when ``images`` is one (N, H, W, C) array."""
        return isinstance(self.images, np.ndarray)

    def subset(self, indices):
        """A new Dataset with the images at ``indices`` (ints, in that order, or a
        boolean mask of length N)."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"subset: mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"subset: indices must be a 1-D integer array, "
                             f"got {idx.dtype} {idx.shape}")
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"subset: index out of range for a dataset of {n} images")
        if self.stacked:
            images = self.images[idx]
        else:
            images = [self.images[i] for i in idx]
        paths = None if self.paths is None else [self.paths[i] for i in idx]
        return Dataset(images, self.labels[idx], self.classes, self.name, paths=paths,
                       skipped=self.skipped)

    def __repr__(self):
        if self.stacked:
            shape = f"images {self.images.shape}"
        else:
            shape = "images list of varying sizes"
        return f"Dataset({self.name!r}, {len(self)} {shape}, {len(self.classes)} classes)"


# --------------------------------------------------------------------------
# Finding and downloading
# --------------------------------------------------------------------------

def _canonical(name):
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; "
                         f"expected 'fashion-mnist', 'cifar10' or 'folder'")
    return _ALIASES[key]


def _needed_files(name, split=None):
    splits = ("train", "test") if split is None else (_check_split(split),)
    if name == "fashion-mnist":
        return [f for s in splits for f in FASHION_MNIST_FILES[s]]
    return [f for s in splits for f in CIFAR10_FILES[s]] + ["batches.meta"]


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _fashion_file(d, fname):
    """The path of IDX file ``fname`` in ``d``, gzipped or not, or None."""
    for p in (d / fname, d / fname[:-3]):
        if p.is_file():
            return p
    return None


def _holds(name, d, split=None):
    """The directory under ``d`` holding all the files, or None."""
    files = _needed_files(name, split)
    if name == "fashion-mnist":
        return d if all(_fashion_file(d, f) for f in files) else None
    for cand in (d, d / CIFAR10_SUBDIR):
        if all((cand / f).is_file() for f in files):
            return cand
    return None


def _download_root(name):
    env = os.environ.get("TINYVGG_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.home() / ".cache" / "tinyvgg" / name


def _search_dirs(name, data_dir=None):
    """``[(directory, why it is searched)]`` in search order."""
    dirs = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        dirs += [(d, "data_dir"), (d / name, "data_dir/<name>")]
    env = os.environ.get("TINYVGG_DATA")
    if env:
        dirs.append((Path(env).expanduser() / name, "$TINYVGG_DATA/<name>"))
    dirs.append((Path.home() / ".cache" / "tinyvgg" / name, "user cache"))
    for d in SYSTEM_DIRS.get(name, []):
        dirs.append((Path(d), "system package"))
    return dirs


def find_dataset_dir(name, data_dir=None, *, split=None):
    """The first directory holding ``name``'s files, or None.

    ``name`` is "fashion-mnist" or "cifar10". Searched in order: ``data_dir``,
    ``data_dir/<name>``, ``$TINYVGG_DATA/<name>``, ``~/.cache/tinyvgg/<name>``,
    and for Fashion-MNIST ``/usr/share/datasets/fashion-mnist``. For CIFAR-10 a
    directory also counts when its ``cifar-10-batches-py`` subfolder holds the
    files; the folder returned is the one that holds them. ``split`` ("train" or
    "test") asks only for that split's files; None asks for all.
    """
    name = _canonical(name)
    if name == "folder":
        raise ValueError("find_dataset_dir: 'folder' datasets have no search path; pass the root")
    for d, _ in _search_dirs(name, data_dir):
        found = _holds(name, d, split)
        if found is not None:
            return found
    return None


def _not_found(name, data_dir, split, reason=None):
    files = _needed_files(name, split)
    lines = [f"{name} ({split or 'all'} split) not found: no folder holds {', '.join(files)}.",
             "Searched:"]
    for d, why in _search_dirs(name, data_dir):
        lines.append(f"  - {d}  ({why})")
    lines.append("Ways to get it:")
    if name == "fashion-mnist":
        lines.append("  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
                     "(installs to /usr/share/datasets/fashion-mnist)")
        src = FASHION_MNIST_URL
    else:
        lines.append(f"  - fetch {CIFAR10_URL} and unpack it (it holds {CIFAR10_SUBDIR}/)")
        src = CIFAR10_URL
    lines += [
        "  - pass --data-dir DIR on the command line (data_dir=DIR in Python), "
        "DIR holding the files",
        f"  - set TINYVGG_DATA=DIR and put the files in DIR/{name}",
        f"  - download=True (the default) fetches them from {src} into "
        f"{_download_root(name)} (needs internet)",
    ]
    if reason:
        lines.append(f"Download failed: {reason}")
    return DatasetNotFoundError("\n".join(lines))


def _download(url, dest, md5, timeout=DOWNLOAD_TIMEOUT_S):
    """Fetch ``url`` into ``dest`` atomically: write a temporary file in the same
    folder, check its MD5, then rename it to ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.md5(usedforsecurity=False)
    with atomic_open(dest, suffix=".part") as f, urllib.request.urlopen(url, timeout=timeout) as r:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            h.update(chunk)
        if h.hexdigest() != md5:  # raised inside the block: the partial file is removed
            raise ValueError(f"checksum mismatch for {url}: MD5 {h.hexdigest()}, expected {md5}")


def _fetch_fashion_mnist(target):
    for fname, md5 in FASHION_MNIST_MD5.items():
        if _fashion_file(target, fname) is None:
            _download(FASHION_MNIST_URL + fname, target / fname, md5)


def _safe_members(tar, dest):
    dest = os.path.realpath(dest)
    for m in tar.getmembers():
        p = os.path.realpath(os.path.join(dest, m.name))
        if not (p == dest or p.startswith(dest + os.sep)) or m.issym() or m.islnk() or m.isdev():
            raise ValueError(f"unsafe member {m.name!r} in CIFAR-10 archive")
    return tar.getmembers()


def _fetch_cifar10(target):
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "cifar-10-python.tar.gz"
    if not archive.is_file():
        _download(CIFAR10_URL, archive, CIFAR10_MD5)
    tmp = Path(tempfile.mkdtemp(dir=target, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar, tmp)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(tmp, members=members)
        src = tmp / CIFAR10_SUBDIR
        out = target / CIFAR10_SUBDIR
        out.mkdir(exist_ok=True)
        for f in src.iterdir():
            os.replace(f, out / f.name)
        archive.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate(name, data_dir, split, download):
    found = find_dataset_dir(name, data_dir, split=split)
    if found is not None:
        return found
    if not download:
        raise _not_found(name, data_dir, split)
    target = _download_root(name)
    try:
        if name == "fashion-mnist":
            _fetch_fashion_mnist(target)
        else:
            _fetch_cifar10(target)
    except (OSError, urllib.error.URLError, ValueError, tarfile.TarError, EOFError) as e:
        raise _not_found(name, data_dir, split, f"{type(e).__name__}: {e}") from None
    found = _holds(name, target, split)
    if found is None:
        raise _not_found(name, data_dir, split, f"files still missing in {target} after download")
    return found


# --------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# --------------------------------------------------------------------------

def _read_bytes(path):
    """The bytes of ``path``, gunzipped when it is gzip; ValueError naming the file
    when it is truncated or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file "
                         f"({type(e).__name__}: {e})") from None


def read_idx(path, expected_magic, expected_ndim):
    """Parse one IDX file of unsigned bytes into a uint8 array of its stored shape.

    The header is a big-endian int32 magic number (0x0000 0x08 ndim: 2051 for
    image files (N, rows, cols), 2049 for label files (N,)) then ndim int32 sizes.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number is {magic}, expected {expected_magic}")
    header = 4 + 4 * expected_ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", expected_ndim, 4))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + size:
        raise ValueError(f"{path}: IDX header says shape {shape} ({size} bytes of data) but the "
                         f"file holds {len(data) - header} (truncated or corrupt)")
    return np.frombuffer(data, np.uint8, size, header).reshape(shape)


def load_fashion_mnist(data_dir=None, split="train", download=True):
    """Fashion-MNIST: images uint8 (N, 28, 28, 1), N = 60000 (train) or 10000 (test).

    Raises DatasetNotFoundError when the files are not found (see
    :func:`find_dataset_dir`) and cannot be downloaded, ValueError naming the file
    when a file is corrupt.
    """
    _check_split(split)
    d = _locate("fashion-mnist", data_dir, split, download)
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    img_path, lbl_path = _fashion_file(d, img_name), _fashion_file(d, lbl_name)
    images = read_idx(img_path, 2051, 3)
    labels = read_idx(lbl_path, 2049, 1)
    if len(images) != len(labels):
        raise ValueError(f"{img_path} holds {len(images)} images but {lbl_path} holds "
                         f"{len(labels)} labels")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{lbl_path}: label {labels.max()} out of range [0, 10)")
    # frombuffer views are read-only; copy once into a normal array.
    images = images[..., None].copy()
    return Dataset(images, labels.astype(np.int64), FASHION_MNIST_CLASSES, "fashion-mnist")


# --------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# --------------------------------------------------------------------------

def _unpickle(path):
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get(obj, key):
    # The official batches use bytes keys; accept str keys too.
    if key in obj:
        return obj[key]
    return obj.get(key.decode())


def _read_cifar_batch(path):
    obj = _unpickle(path)
    data, labels = _get(obj, b"data"), _get(obj, b"labels")
    if data is None or labels is None:
        raise ValueError(f"{path}: CIFAR-10 batch lacks b'data' or b'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {labels.size} labels")
    # Rows are stored channel-major (1024 R, 1024 G, 1024 B): CHW -> HWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def load_cifar10(data_dir=None, split="train", download=True):
    """CIFAR-10 from ``cifar-10-batches-py``: images uint8 (N, 32, 32, 3), N = 50000
    (train, data_batch_1..5) or 10000 (test, test_batch)."""
    _check_split(split)
    d = _locate("cifar10", data_dir, split, download)
    parts = [_read_cifar_batch(d / f) for f in CIFAR10_FILES[split]]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    meta = _unpickle(d / "batches.meta")
    names = _get(meta, b"label_names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else \
        list(CIFAR10_CLASSES)
    return Dataset(images, labels, classes, "cifar10")


# --------------------------------------------------------------------------
# Class folders
# --------------------------------------------------------------------------

_folder_cache = {}
_folder_cache_lock = threading.Lock()


def clear_cache():
    """Forget every class-folder dataset decoded in this process."""
    with _folder_cache_lock:
        _folder_cache.clear()


def _scan_folder(root, limit_per_class):
    # os.scandir knows file types without a stat per file (50,000 files).
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (expected {root}/<class>/<image>.jpg|jpeg|png)")
    files, labels, empty = [], [], []
    for k, c in enumerate(classes):
        with os.scandir(root / c) as it:
            names = sorted(e.name for e in it
                           if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                           and not e.name.startswith(".") and e.is_file())
        if not names:
            empty.append(c)
        if limit_per_class is not None:
            names = names[:limit_per_class]
        prefix = os.path.join(str(root), c, "")
        files += [prefix + n for n in names]
        labels += [k] * len(names)
    if empty:
        # An empty class would still be a class (an output the model never sees).
        raise ValueError(f"{root}: {len(empty)} of the {len(classes)} class folders hold no "
                         f".jpg, .jpeg or .png files: {', '.join(empty[:5])}"
                         f"{', ...' if len(empty) > 5 else ''}; add their images or remove "
                         f"those folders")
    return classes, files, labels


def _decode(path, size):
    """One image file -> uint8 (H, W, 3) as a viewer shows it; with ``size``, shorter
    side rescaled to ``size`` and centre-cropped to (size, size, 3)
    (:func:`tinyvgg.data.imageio.decode_image`)."""
    from .imageio import decode_image

    return decode_image(path, "RGB", size)


def _decode_chunk(paths, size):
    out = []
    for p in paths:
        try:
            out.append((_decode(p, size), None))
        except Exception as e:  # Pillow raises many types for bad files
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def _cache_key(root, size, on_error, limit_per_class):
    # mtime of root and of each class folder: adding or removing an image changes
    # its class folder's mtime, not root's.
    mtimes = [root.stat().st_mtime_ns]
    mtimes += [p.stat().st_mtime_ns for p in sorted(root.iterdir()) if p.is_dir()]
    # DECODER_VERSION: arrays cached by an older decoder (16-bit PNGs read as white) are stale.
    from .imageio import DECODER_VERSION
    return (str(root), size, on_error, limit_per_class, tuple(mtimes), DECODER_VERSION)


def _disk_cache_path(cache_dir, key):
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"imagefolder-{Path(key[0]).name}-{digest}.npz"


def _save_npz(path, ds):
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": ds.labels}
    if ds.stacked:
        arrays["images"] = ds.images
    else:
        arrays["flat"] = np.concatenate([im.reshape(-1) for im in ds.images]) if ds.images \
            else np.zeros(0, np.uint8)
        arrays["shapes"] = np.array([im.shape for im in ds.images], np.int64).reshape(-1, 3)
    meta = {"classes": ds.classes, "name": ds.name, "paths": ds.paths, "skipped": ds.skipped}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with atomic_open(path, suffix=".npz.part") as f:
        np.savez(f, **arrays)


def _load_npz(path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        labels = z["labels"]
        if "images" in z:
            images = z["images"]
        else:
            flat, shapes = z["flat"], z["shapes"]
            ends = np.cumsum(np.prod(shapes, axis=1))
            starts = ends - np.prod(shapes, axis=1)
            images = [flat[s:e].reshape(sh) for s, e, sh in zip(starts, ends, shapes)]
    skipped = [tuple(s) for s in meta["skipped"]]
    return Dataset(images, labels, meta["classes"], meta["name"], paths=meta["paths"],
                   skipped=skipped)


def _readonly(ds):
    # Cached arrays are shared between callers: refuse in-place edits.
    if ds.stacked:
        ds.images.flags.writeable = False
    else:
        for im in ds.images:
            im.flags.writeable = False
    ds.labels.flags.writeable = False
    return ds


def _shared_copy(ds):
    return Dataset(ds.images, ds.labels, ds.classes, ds.name, paths=ds.paths, skipped=ds.skipped)


def load_image_folder(root, size=None, on_error="skip", *, cache_dir=None, limit_per_class=None,
                      progress=False, workers=None, cache=True):
    """Images in class folders ``root/<class>/*.jpg|jpeg|png`` (any case).

    Classes are the folder names, sorted; files are sorted within each class.
    Every image is decoded to RGB as a viewer shows it, so C = 3: 16-bit and
    float images scaled to 8 bits, transparency over white, EXIF orientation
    applied (:func:`tinyvgg.data.imageio.decode_image`).

    size : int or None
        int: rescale each image isotropically so its shorter side is ``size``
        (bilinear), then centre-crop to size x size; ``images`` is then a uint8
        (N, size, size, 3) array. None: keep native sizes; ``images`` is an
        (N, H, W, 3) array when all images share one shape, otherwise a list.
    on_error : "skip" or "raise"
        An unreadable image is skipped and recorded in ``dataset.skipped`` as
        (path, reason), with one warning giving the count; or ValueError naming it.
    cache_dir : path or None
        Also keep the decoded arrays in ``cache_dir/imagefolder-*.npz``, reused by
        later processes while the folders are unchanged.
    limit_per_class : int or None
        Take only the first k files (sorted) of each class.
    progress : bool
        Show a tqdm progress bar while decoding.
    workers : int or None
        Decoding threads. Pillow releases the GIL while decoding, which pays for
        large photos; for 32 x 32 JPEGs its Python-side header parsing dominates
        (about 0.3 ms an image, 50,000 in 15-20 s on 2 cores), so use
        ``cache_dir`` to decode them once.
    cache : bool
        Keep the decoded dataset in memory for later calls with the same
        arguments (keyed by root, size and folder mtimes). Cached arrays are
        read-only and shared.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if limit_per_class is not None and (not isinstance(limit_per_class, (int, np.integer))
                                        or limit_per_class < 1):
        raise ValueError(f"limit_per_class must be a positive int or None, got {limit_per_class!r}")
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"image folder {root} is not a directory")
    root = Path(os.path.abspath(root))
    size = None if size is None else int(size)

    key = _cache_key(root, size, on_error, limit_per_class)
    ds = None
    if cache:
        with _folder_cache_lock:
            ds = _folder_cache.get(key)
    if ds is None and cache_dir is not None:
        p = _disk_cache_path(cache_dir, key)
        if p.is_file():
            try:
                ds = _load_npz(p)
            except Exception as e:  # a stale or damaged cache is rebuilt, not fatal
                warnings.warn(f"ignoring unreadable cache {p} ({type(e).__name__}: {e})",
                              stacklevel=2)
                ds = None
    if ds is None:
        ds = _decode_folder(root, size, on_error, limit_per_class, progress, workers)
        if cache_dir is not None:
            _save_npz(_disk_cache_path(cache_dir, key), ds)
    if cache:
        _readonly(ds)
        with _folder_cache_lock:
            _folder_cache[key] = ds
        ds = _shared_copy(ds)
    if ds.skipped:
        warnings.warn(f"load_image_folder({root}): skipped {len(ds.skipped)} unreadable "
                      f"image(s), listed in dataset.skipped; first: {ds.skipped[0][0]} "
                      f"({ds.skipped[0][1]})", stacklevel=2)
    return ds


def _decode_folder(root, size, on_error, limit_per_class, progress, workers):
    classes, files, labels = _scan_folder(root, limit_per_class)
    chunk = 64
    chunks = [files[i:i + chunk] for i in range(0, len(files), chunk)]
    if workers is None:
        workers = min(8, (os.cpu_count() or 1) + 2)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(files), desc=f"decoding {root.name}", unit="img")
        except ImportError:
            bar = None
    results = []
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            results += _decode_chunk(c, size)
            if bar is not None:
                bar.update(len(c))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for c, res in zip(chunks, pool.map(_decode_chunk, chunks, [size] * len(chunks))):
                results += res
                if bar is not None:
                    bar.update(len(c))
    if bar is not None:
        bar.close()

    images, keep_labels, paths, skipped = [], [], [], []
    for path, label, (img, err) in zip(files, labels, results):
        if err is not None:
            if on_error == "raise":
                raise ValueError(f"cannot read image {path}: {err}")
            skipped.append((path, err))
            continue
        images.append(img)
        keep_labels.append(label)
        paths.append(path)
    if not images:
        raise ValueError(f"{root}: none of the {len(files)} image files could be read; "
                         f"first error: {skipped[0][0]}: {skipped[0][1]}")
    unreadable = sorted(set(range(len(classes))) - set(keep_labels))
    if unreadable:
        names = ", ".join(classes[k] for k in unreadable[:5]) + (", ..." if len(unreadable) > 5 else "")
        path, err = next(s for s in skipped if Path(s[0]).parent.name == classes[unreadable[0]])
        raise ValueError(f"{root}: no image of class folder(s) {names} could be read (first "
                         f"error: {path}: {err}); replace those files or remove the folder(s)")
    if len({im.shape for im in images}) == 1:
        images = np.stack(images)
    return Dataset(images, np.asarray(keep_labels, np.int64), classes, root.name,
                   paths=paths, skipped=skipped)


# --------------------------------------------------------------------------
# Splits and dispatch
# --------------------------------------------------------------------------

class UnknownClassError(ValueError):
    """An evaluation set holds a class the model was not trained on."""


def align_classes(dataset, classes, where=None):
    """``dataset`` relabelled by class *name* to ``classes`` (a model's K classes).

    Label k of the result means ``classes[k]``; ``result.classes`` is ``classes``,
    so a class the dataset lacks simply has no images (a zero row in a confusion
    matrix). Raises :class:`UnknownClassError` (a ValueError) naming the classes of
    ``dataset`` that are not in ``classes``; ``where`` (the folder, or a
    description) is named in the message.
    """
    classes = [str(c) for c in classes]
    if list(dataset.classes) == classes:
        return dataset
    index = {c: k for k, c in enumerate(classes)}
    unknown = [c for c in dataset.classes if c not in index]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UnknownClassError(
            f"{where or dataset.name}: class folder(s) {shown} are not among the model's "
            f"{len(classes)} classes ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); "
            f"remove them from the evaluation data, or evaluate a model trained on them")
    mapping = np.array([index[c] for c in dataset.classes], np.int64)
    return Dataset(dataset.images, mapping[dataset.labels], classes, dataset.name,
                   paths=dataset.paths, skipped=dataset.skipped)


def _resize_stacked(ds, size):
    """Rescale (shorter side ``size``) and centre-crop every image of ``ds``."""
    from .transforms import rescale

    if ds.stacked and ds.images.shape[1] == size and ds.images.shape[2] == size:
        return ds
    out = []
    for im in ds.images:
        im = rescale(im, size)
        h, w = im.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        out.append(im[top:top + size, left:left + size])
    return Dataset(np.stack(out), ds.labels, ds.classes, ds.name, paths=ds.paths,
                   skipped=ds.skipped)


NATIVE_SIZE = {"fashion-mnist": 28, "cifar10": 32}  # the built-in datasets' image sides, pixels


def padded_side(side):
    """The network input side for images of side ``side`` (pixels) taken as they are: the
    next multiple of 32, as VGG's five 2 x 2 max-poolings halve it five times (28 -> 32,
    32 -> 32, 100 -> 128). The transforms pad smaller images centred to it."""
    return -(-int(side) // 32) * 32


def load_size(name, input_size, scale=None):
    """The side ``load_dataset`` should rescale images to (``size=``), or None: how
    ``train`` and ``evaluate`` load ``name`` for a network of ``input_size`` pixels.

    - Class folders ("folder"): ``input_size`` (rescale the shorter side, centre-crop)
      unless the transforms rescale per image (``scale`` given: None).
    - Fashion-MNIST (28 x 28) and CIFAR-10 (32 x 32): None (native images, padded centred
      to the next multiple of 32 by the transforms: 28 -> 32) unless ``input_size`` is
      larger than that, then ``input_size``: a 64-pixel network sees CIFAR-10 rescaled to
      64 x 64, not a 32 x 32 image in a frame of zeros. With ``scale`` the transforms
      rescale every image to S themselves: None.

    ``input_size`` : int or None (None: the images' own size).
    Raises ValueError for an unknown dataset name.
    """
    key = _canonical(name)
    if scale is not None or input_size is None:
        return None
    if key == "folder":
        return int(input_size)
    return int(input_size) if int(input_size) > padded_side(NATIVE_SIZE[key]) else None


def load_dataset(name, data_dir=None, split="train", download=True, size=None, **kwargs):
    """Load ``name``: "fashion-mnist", "cifar10" or "folder".

    For "folder", ``data_dir`` is the root of the class folders; when it has a
    subfolder named ``split`` that itself holds folders (``root/train/<class>``),
    that subfolder is used, and when it has split folders (train, val or test)
    but not ``split``, FileNotFoundError. Extra keyword arguments go to
    :func:`load_image_folder`. For the other datasets, ``size`` (if given and not
    the native size) rescales and centre-crops every image to size x size.
    """
    key = _canonical(name)
    if key == "folder":
        if data_dir is None:
            raise ValueError("load_dataset('folder') needs data_dir, the root of the class folders")
        root = Path(data_dir).expanduser()
        sub = root / str(split)
        if sub.is_dir() and any(p.is_dir() for p in sub.iterdir()):
            root = sub
        elif any((root / s).is_dir() for s in ("train", "val", "test")):
            # A split layout without this split: not the other split's images.
            raise FileNotFoundError(f"{sub}: no {split!r} split in {root}")
        return load_image_folder(root, size=size, **kwargs)
    if kwargs:
        raise ValueError(f"load_dataset({name!r}): unexpected arguments {sorted(kwargs)}")
    loader = load_fashion_mnist if key == "fashion-mnist" else load_cifar10
    ds = loader(data_dir=data_dir, split=split, download=download)
    if size is not None:
        ds = _resize_stacked(ds, int(size))
    return ds
