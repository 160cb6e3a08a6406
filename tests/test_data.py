"""Tests of tinyvgg.data: formats written in tmp_path, transforms on synthetic
images, the loader's epochs and thread. Never touches the network."""

import gzip
import hashlib
import io
import pickle
import tarfile
import threading
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyvgg import backend
from tinyvgg.data import (
    DataLoader,
    Dataset,
    DatasetNotFoundError,
    EvalTransform,
    TrainTransform,
    center_crop,
    center_pad,
    compute_mean_std,
    compute_pca,
    find_dataset_dir,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    pca_color_shift,
    random_crop,
    random_flip,
    rescale,
    to_float_nchw,
    train_val_split,
)
from tinyvgg.data import datasets as D

from .standin import make_device

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- helpers

def idx_bytes(arr, magic):
    arr = np.asarray(arr, np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_fashion(d, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lbls = rng.integers(0, 10, n, dtype=np.uint8)
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(imgs, 2051)))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(lbls, 2049)))
        out[split] = (imgs, lbls)
    return out


def write_cifar(d, n=4, seed=0):
    """Tiny official-format release in d/cifar-10-batches-py; returns HWC images."""
    rng = np.random.default_rng(seed)
    b = d / "cifar-10-batches-py"
    b.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)  # stored CHW
        with open(b / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": labels, b"batch_label": name.encode()}, f)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(hwc)
        out[split][1].extend(labels)
    names = [c.encode() for c in D.CIFAR10_CLASSES]
    with open(b / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return {k: (np.concatenate(v[0]), np.array(v[1])) for k, v in out.items()}


def make_folder(root):
    """root/{bird,cat,dog}: RGB PNGs, a grayscale .PNG, an RGBA, a broken .jpg."""
    rng = np.random.default_rng(1)
    arrays = {}
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "bird").mkdir()
    a = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(a).save(root / "cat" / "b.png")
    arrays["cat/b.png"] = a
    g = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    Image.fromarray(g, "L").save(root / "cat" / "a_gray.PNG", format="PNG")
    arrays["cat/a_gray.PNG"] = np.repeat(g[..., None], 3, axis=2)
    rgba = rng.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(root / "dog" / "x.png")
    arrays["dog/x.png"] = rgba[..., :3]
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (root / "dog" / "notes.txt").write_text("ignored")
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
        root / "bird" / "z.jpg", quality=95)
    return arrays


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """HOME and TINYVGG_DATA in tmp dirs, no system dirs, no network."""
    home = tmp_path / "home"
    env = tmp_path / "envdata"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TINYVGG_DATA", str(env))
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion-mnist": [tmp_path / "usr-share"]})

    def no_network(*a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(D.urllib.request, "urlopen", no_network)
    return home, env


# ---------------------------------------------------------------- Fashion-MNIST

def test_fashion_mnist_round_trip(tmp_path, isolated_env):
    truth = write_fashion(tmp_path / "fm")
    for split in ("train", "test"):
        ds = load_fashion_mnist(data_dir=tmp_path / "fm", split=split, download=False)
        imgs, lbls = truth[split]
        assert ds.images.shape == (len(imgs), 28, 28, 1) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int64
        np.testing.assert_array_equal(ds.images[..., 0], imgs)
        np.testing.assert_array_equal(ds.labels, lbls)
        assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
        assert ds.name == "fashion-mnist"
    # data_dir/<name> is searched too, and so is $TINYVGG_DATA/<name>
    assert find_dataset_dir("fashion-mnist", tmp_path) is None
    (tmp_path / "fm").rename(tmp_path / "fashion-mnist")
    assert find_dataset_dir("fashion-mnist", tmp_path) == tmp_path / "fashion-mnist"
    isolated_env[1].mkdir()
    (tmp_path / "fashion-mnist").rename(isolated_env[1] / "fashion-mnist")
    assert find_dataset_dir("fashion-mnist") == isolated_env[1] / "fashion-mnist"
    assert len(load_dataset("fashion-mnist", split="test", download=False)) == 3


def test_fashion_mnist_uncompressed_idx(tmp_path, isolated_env):
    truth = write_fashion(tmp_path)
    for p in tmp_path.glob("*.gz"):
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    ds = load_fashion_mnist(tmp_path, "train", download=False)
    np.testing.assert_array_equal(ds.images[..., 0], truth["train"][0])


@pytest.mark.parametrize("damage", ["truncated_gzip", "short_data", "bad_magic", "garbage"])
def test_corrupt_idx_names_file(tmp_path, isolated_env, damage):
    write_fashion(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    if damage == "truncated_gzip":
        p.write_bytes(p.read_bytes()[:-20])
    elif damage == "short_data":
        p.write_bytes(gzip.compress(raw[:-7]))
    elif damage == "bad_magic":
        p.write_bytes(gzip.compress((2049).to_bytes(4, "big") + raw[4:]))
    else:
        p.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, "train", download=False)


def test_idx_label_count_mismatch(tmp_path, isolated_env):
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(2, np.uint8), 2049)))
    with pytest.raises(ValueError, match="3 images but .*2 labels"):
        load_fashion_mnist(tmp_path, "test", download=False)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_not_found_lists_places_and_remedies(tmp_path, isolated_env, name):
    home, env = isolated_env
    given = tmp_path / "given"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_dir=given, download=False)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for place in (given, given / name, env / name, home / ".cache" / "tinyvgg" / name):
        assert str(place) in msg
    assert "--data-dir" in msg and "TINYVGG_DATA" in msg and "download" in msg
    if name == "fashion-mnist":
        assert str(tmp_path / "usr-share") in msg
        assert "apt-get install dataset-fashion-mnist" in msg


def test_download_failure_is_not_found(tmp_path, isolated_env):
    with pytest.raises(DatasetNotFoundError, match="network disabled"):
        load_fashion_mnist(download=True)
    # nothing half-written is left behind
    target = isolated_env[1] / "fashion-mnist"
    assert not target.exists() or not any(target.iterdir())


def test_download_verifies_md5_and_is_atomic(tmp_path, isolated_env, monkeypatch):
    src = tmp_path / "server"
    truth = write_fashion(src)
    blobs = {p.name: p.read_bytes() for p in src.iterdir()}
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()}
    urls = []

    def fake_urlopen(url, timeout=None):
        assert timeout is not None and timeout <= 60
        urls.append(url)
        return io.BytesIO(blobs[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(D.urllib.request, "urlopen", fake_urlopen)
    bad = dict(md5, **{"train-labels-idx1-ubyte.gz": "0" * 32})
    monkeypatch.setattr(D, "FASHION_MNIST_MD5", bad)
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        load_fashion_mnist(split="train")
    target = isolated_env[1] / "fashion-mnist"
    assert not (target / "train-labels-idx1-ubyte.gz").exists()
    assert not list(target.glob("*.part"))
    monkeypatch.setattr(D, "FASHION_MNIST_MD5", md5)
    ds = load_fashion_mnist(split="train")
    np.testing.assert_array_equal(ds.labels, truth["train"][1])
    assert all(u.startswith(D.FASHION_MNIST_URL) for u in urls)
    assert sorted(p.name for p in target.iterdir()) == sorted(blobs)


# ---------------------------------------------------------------- CIFAR-10

def test_cifar10_download_extracts_atomically(tmp_path, isolated_env, monkeypatch):
    truth = write_cifar(tmp_path / "src")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    blob = archive.getvalue()
    monkeypatch.setattr(D, "CIFAR10_MD5", hashlib.md5(blob).hexdigest())
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(blob))
    ds = load_cifar10(split="test")
    np.testing.assert_array_equal(ds.images, truth["test"][0])
    target = isolated_env[1] / "cifar10"
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]
    assert find_dataset_dir("cifar10") == target / "cifar-10-batches-py"


def test_cifar10_round_trip(tmp_path, isolated_env):
    truth = write_cifar(tmp_path)
    tr = load_cifar10(tmp_path, "train", download=False)
    te = load_cifar10(tmp_path / "cifar-10-batches-py", "test", download=False)
    assert tr.images.shape == (20, 32, 32, 3) and tr.images.dtype == np.uint8
    assert te.images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(tr.images, truth["train"][0])
    np.testing.assert_array_equal(tr.labels, truth["train"][1])
    np.testing.assert_array_equal(te.images, truth["test"][0])
    assert tr.labels.dtype == np.int64 and tr.classes == D.CIFAR10_CLASSES
    assert tr.images.flags.c_contiguous


def test_cifar10_corrupt_batch(tmp_path, isolated_env):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(tmp_path, download=False)


# ---------------------------------------------------------------- class folders

def test_image_folder_native_sizes(tmp_path):
    arrays = make_folder(tmp_path / "root")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = load_image_folder(tmp_path / "root", cache=False)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.images.shape == (4, 6, 8, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [0, 1, 1, 2])
    # files sorted within a class: a_gray.PNG before b.png; grayscale -> RGB
    names = [Path(p).parent.name + "/" + Path(p).name for p in ds.paths]
    assert names == ["bird/z.jpg", "cat/a_gray.PNG", "cat/b.png", "dog/x.png"]
    for i, n in enumerate(names[1:], start=1):
        np.testing.assert_array_equal(ds.images[i], arrays[n])
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("broken.jpg")


def test_image_folder_raise_and_bad_roots(tmp_path):
    make_folder(tmp_path / "root")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image_folder(tmp_path / "root", on_error="raise", cache=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="hold no"):
        load_image_folder(tmp_path / "noimg")


def test_image_folder_size_mixed_and_list(tmp_path):
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(root / "a" / "wide.png")
    Image.fromarray(np.full((50, 20), 50, np.uint8), "L").save(root / "b" / "tall.JPEG")
    ds = load_image_folder(root, cache=False)
    assert isinstance(ds.images, list) and [im.shape for im in ds.images] == [(40, 60, 3),
                                                                               (50, 20, 3)]
    ds = load_image_folder(root, size=16, cache=False)
    assert ds.images.shape == (2, 16, 16, 3)
    assert np.all(ds.images[0] == 200) and np.all(np.abs(ds.images[1].astype(int) - 50) <= 2)
    # limit_per_class and dispatch through load_dataset (root/<split>/ is used)
    (tmp_path / "top").mkdir()
    root.rename(tmp_path / "top" / "train")
    ds = load_dataset("folder", tmp_path / "top", size=8, cache=False, limit_per_class=1)
    assert ds.images.shape == (2, 8, 8, 3)
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        load_dataset("folder", tmp_path / "top", split="test")


def test_image_folder_memory_and_disk_cache(tmp_path, monkeypatch):
    make_folder(tmp_path / "root")
    warnings.simplefilter("ignore")  # the broken image's warning, on every call
    first = load_image_folder(tmp_path / "root", size=4, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.npz"))

    calls = []
    real_decode = D._decode

    def counting_decode(path, size):
        calls.append(path)
        return real_decode(path, size)

    monkeypatch.setattr(D, "_decode", counting_decode)
    again = load_image_folder(tmp_path / "root", size=4, cache_dir=tmp_path / "cache")
    assert again.images is first.images and not calls  # memory cache
    assert not again.images.flags.writeable
    D.clear_cache()
    disk = load_image_folder(tmp_path / "root", size=4, cache_dir=tmp_path / "cache")
    assert not calls  # disk cache
    np.testing.assert_array_equal(disk.images, first.images)
    np.testing.assert_array_equal(disk.labels, first.labels)
    assert disk.classes == first.classes and disk.skipped == first.skipped
    # a changed folder is decoded again
    time.sleep(0.01)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "root" / "bird" / "new.png")
    changed = load_image_folder(tmp_path / "root", size=4, cache_dir=tmp_path / "cache")
    assert len(changed) == len(first) + 1 and len(calls) == 6


# ---------------------------------------------------------------- Dataset, split

def small_dataset(n=10, hw=4, c=3):
    imgs = np.arange(n * hw * hw * c, dtype=np.int64).reshape(n, hw, hw, c) % 256
    return Dataset(imgs.astype(np.uint8), np.arange(n) % 3, ["a", "b", "c"], "toy")


def test_dataset_api_and_errors():
    ds = small_dataset()
    img, lab = ds[4]
    assert img.shape == (4, 4, 3) and lab == 1 and len(ds) == 10
    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.images, ds.images[[3, 1]])
    np.testing.assert_array_equal(sub.labels, [0, 1])
    with pytest.raises(ValueError, match="labels"):
        Dataset(ds.images, np.arange(9), ds.classes, "x")
    with pytest.raises(ValueError, match="uint8"):
        Dataset(ds.images.astype(np.float32), ds.labels, ds.classes, "x")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        Dataset(ds.images, np.arange(10), ds.classes, "x")


def test_train_val_split():
    n = 100
    ds = Dataset(np.zeros((n, 2, 2, 1), np.uint8), np.arange(n), [str(i) for i in range(n)], "ids")
    tr, va = train_val_split(ds, 20, seed=3)
    assert len(tr) == 80 and len(va) == 20
    assert sorted(tr.labels.tolist() + va.labels.tolist()) == list(range(n))
    # stratify=False: how runs saved before stratified sampling drew their split
    _, old = train_val_split(ds, 20, seed=3, stratify=False)
    assert old.labels.tolist() == sorted(np.random.default_rng(3).permutation(n)[80:].tolist())
    _, va2 = train_val_split(ds, 0.2, seed=3)
    np.testing.assert_array_equal(va2.labels, va.labels)
    _, va3 = train_val_split(ds, 20, seed=4)
    assert va3.labels.tolist() != va.labels.tolist()
    for bad in (1.5, 0.0, 100, -1, "10", True):
        with pytest.raises(ValueError):
            train_val_split(ds, bad)
    # a config's whole float is a count; --limit first draws a stratified sample
    _, va4 = train_val_split(ds, 20.0, seed=3)
    np.testing.assert_array_equal(va4.labels, va.labels)
    lab = Dataset(np.zeros((n, 2, 2, 1), np.uint8), np.arange(n) % 4, list("abcd"), "four")
    tr5, va5 = train_val_split(lab, 0.25, seed=1, limit=40)
    assert (len(tr5), len(va5)) == (30, 10)
    kept = np.sort(np.concatenate([tr5.labels, va5.labels]))
    np.testing.assert_array_equal(kept, np.repeat(np.arange(4), 10))  # class proportions kept
    assert sorted(np.bincount(va5.labels)) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="BatchNorm needs batches of 2"):
        train_val_split(ds, 99, batch_norm=True)


# ---------------------------------------------------------------- transforms

def test_to_float_nchw_mean_std():
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (2, 3, 5, 3), dtype=np.uint8)
    mean, std = np.array([10, 20, 30.0]), np.array([2, 4, 8.0])
    x = to_float_nchw(b, mean, std)
    assert x.dtype == np.float32 and x.shape == (2, 3, 3, 5) and x.flags.c_contiguous
    expect = ((b.astype(np.float64) - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x, expect, rtol=1e-6)
    assert to_float_nchw(b, 5.0).dtype == np.float32


def test_compute_mean_std_and_pca():
    ds = small_dataset(7, hw=5)
    m, s = compute_mean_std(ds)
    px = ds.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(m, px.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s, px.std(0), rtol=1e-5)
    assert m.dtype == s.dtype == np.float32
    # colours along one direction: the first component is that direction
    t = np.linspace(0, 1, 400)
    d = np.array([1.0, 0.5, 0.25]) / np.linalg.norm([1, 0.5, 0.25])
    img = (t[:, None] * d * 200).round().astype(np.uint8).reshape(1, 20, 20, 3)
    vals, vecs = compute_pca(img)
    assert vals.shape == (3,) and vecs.shape == (3, 3) and vals.dtype == np.float32
    assert vals[0] > 100 * vals[1] and abs(abs(vecs[:, 0] @ d) - 1) < 1e-3


def test_rescale():
    img = np.zeros((30, 60, 3), np.uint8)
    assert rescale(img, 15).shape == (15, 30, 3)
    assert rescale(np.zeros((28, 20, 1), np.uint8), 40).shape == (56, 40, 1)
    with pytest.raises(ValueError, match="uint8"):
        rescale(img.astype(np.float32), 10)


def coord_batch(n=6, h=8, w=10):
    """Pixel value = 100 * row + column (+ 1000 * channel)."""
    yy, xx = np.mgrid[0:h, 0:w]
    one = (100 * yy + xx)[None] + 1000 * np.arange(3)[:, None, None]
    return np.broadcast_to(one, (n, 3, h, w)).astype(np.float32).copy()


def test_random_crop_coordinates():
    x = coord_batch(50)
    out = random_crop(x, 4, rng=np.random.default_rng(0))
    assert out.shape == (50, 3, 4, 4)
    y0, x0 = out[:, 0, 0, 0] // 100, out[:, 0, 0, 0] % 100
    # each crop is an exact window at its own offset, all offsets allowed
    for i in range(50):
        np.testing.assert_array_equal(out[i], x[i, :, int(y0[i]):int(y0[i]) + 4,
                                                int(x0[i]):int(x0[i]) + 4])
    assert y0.min() >= 0 and y0.max() <= 4 and x0.max() <= 6 and len(set(x0)) > 3
    # padding: zeros outside, values inside still where they belong
    out = random_crop(x, (8, 10), padding=2, rng=np.random.default_rng(1))
    rng = np.random.default_rng(1)
    oy, ox = rng.integers(0, 5, 50), rng.integers(0, 5, 50)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(50):
        np.testing.assert_array_equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 10])


def test_random_flip_is_mirror():
    x = coord_batch(40)
    out = random_flip(x, np.random.default_rng(5))
    flipped = [np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 5 < sum(flipped) < 35
    assert np.array_equal(flipped, np.random.default_rng(5).random(40) < 0.5)
    np.testing.assert_array_equal(random_flip(x, p=1.0), x[..., ::-1])


def test_center_crop_and_pad():
    x = coord_batch(2)
    c = center_crop(x, (4, 6))
    np.testing.assert_array_equal(c, x[:, :, 2:6, 2:8])
    p = center_pad(np.ones((1, 1, 28, 28), np.float32), 32)
    assert p.shape == (1, 1, 32, 32) and p.sum() == 28 * 28 and p[0, 0, 2:30, 2:30].min() == 1


def test_pca_shift_adds_constant_colour_per_image():
    x = coord_batch(5)
    vals = np.array([0.2, 0.02, 0.002], np.float32)
    vecs = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].astype(np.float32)
    out = pca_color_shift(x, vals, vecs, std=0.1, rng=np.random.default_rng(2))
    d = out - x
    assert out.dtype == np.float32
    np.testing.assert_allclose(d, d[:, :, :1, :1] * np.ones_like(d), atol=1e-3)
    alpha = np.random.default_rng(2).normal(0, 0.1, (5, 3))
    expect = 255 * np.array([vecs @ (a * vals) for a in alpha])
    np.testing.assert_allclose(d[:, :, 0, 0], expect, rtol=1e-3, atol=1e-3)


def test_train_and_eval_transform_28_to_32():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    ev = EvalTransform(32, mean=[72.9], std=[90.0])
    x = ev(imgs)
    assert x.shape == (6, 1, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 2:30, 2:30], (imgs[..., 0] - 72.9) / 90.0, atol=1e-6)
    assert np.all(x[:, :, :2] == 0) and np.all(x[:, :, :, 30:] == 0)
    tr = TrainTransform(32, mean=[72.9], std=[90.0], padding=2)
    a, b = tr(imgs, rng=np.random.default_rng(7)), tr(imgs, rng=np.random.default_rng(7))
    assert a.shape == (6, 1, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # all randomness from rng
    assert not np.array_equal(a, tr(imgs, rng=np.random.default_rng(8)))


def test_train_transform_scale_jitter_and_pca_on_mixed_sizes():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(40, 60, 3), (50, 36, 3)]]
    tr = TrainTransform(24, mean=[120, 110, 100], scale=(24, 40),
                        pca=(np.array([0.1, 0.01, 0.001]), np.eye(3)))
    x = tr(imgs, rng=np.random.default_rng(0))
    assert x.shape == (2, 3, 24, 24) and x.dtype == np.float32
    ev = EvalTransform(24, mean=[120, 110, 100], scale=32)
    assert ev(imgs).shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match="different shapes"):
        EvalTransform(24, mean=0)(imgs)
    with pytest.raises(ValueError, match="smaller than the crop"):
        TrainTransform(24, mean=0, scale=(16, 32))


# ---------------------------------------------------------------- loader

def index_dataset(n=23):
    imgs = np.zeros((n, 2, 2, 1), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n)
    return Dataset(imgs, np.arange(n) % 10, [str(i) for i in range(10)], "idx")


def seen(loader):
    return [int(v) for x, _ in loader for v in x[:, 0, 0, 0]]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_true_epochs(prefetch):
    ds = index_dataset()
    dl = DataLoader(ds, 5, shuffle=True, seed=1, prefetch=prefetch)
    assert len(dl) == 5
    e0, e1 = seen(dl), seen(dl)
    assert sorted(e0) == sorted(e1) == list(range(23))
    assert e0 != e1
    assert e0 == np.random.default_rng((1, 0)).permutation(23).tolist()
    again = DataLoader(ds, 5, shuffle=True, seed=1, prefetch=prefetch)
    assert seen(again) == e0
    again.set_epoch(1)
    assert seen(again) == e1
    x, y = next(iter(DataLoader(ds, 5, prefetch=prefetch)))
    assert x.dtype == np.float32 and x.shape == (5, 1, 2, 2) and y.dtype == np.int64


def test_loader_drop_last_and_labels():
    ds = index_dataset()
    dl = DataLoader(ds, 5, shuffle=False, drop_last=True)
    assert len(dl) == 4
    batches = list(dl)
    assert [len(y) for _, y in batches] == [5] * 4
    xs = np.concatenate([x[:, 0, 0, 0] for x, _ in batches]).astype(int)
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), xs % 10)
    assert [len(y) for _, y in DataLoader(ds, 5, shuffle=False)] == [5, 5, 5, 5, 3]


def test_prefetch_matches_synchronous():
    rng = np.random.default_rng(0)
    ds = Dataset(rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), np.zeros(30, np.int64),
                 ["z"], "r")
    tr = TrainTransform(8, mean=[100, 100, 100], padding=2)
    a = [(x.copy(), y.copy()) for x, y in DataLoader(ds, 7, tr, seed=4, prefetch=0)]
    b = [(x.copy(), y.copy()) for x, y in DataLoader(ds, 7, tr, seed=4, prefetch=3)]
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "tinyvgg-DataLoader" and t.is_alive()]


def test_loader_thread_errors_and_early_close():
    ds = index_dataset(40)

    def bad(images, rng=None):
        if bad.calls == 2:
            raise RuntimeError("boom in transform")
        bad.calls += 1
        return images.astype(np.float32).transpose(0, 3, 1, 2)

    bad.calls = 0
    with pytest.raises(RuntimeError, match="boom"):
        for _ in DataLoader(ds, 4, bad, shuffle=False, prefetch=2):
            pass
    gen = iter(DataLoader(index_dataset(400), 4, prefetch=1))
    next(gen)
    time.sleep(0.05)  # let the producer fill the queue and block
    gen.close()
    deadline = time.time() + 3
    while _loader_threads() and time.time() < deadline:
        time.sleep(0.01)
    assert not _loader_threads()


def test_loader_moves_each_array_once_per_batch():
    backend.use(make_device())
    backend.reset_transfer_counts()
    n = 0
    for x, y in DataLoader(index_dataset(), 5, prefetch=2):
        assert backend.is_device_array(x) and backend.is_device_array(y)
        assert x.dtype == np.float32 and y.dtype == np.int64
        n += 1
    assert backend.transfer_counts()["host_to_device"] == 2 * n == 10


def test_batch_transforms_on_device_arrays_match_host():
    x = coord_batch(8)
    host = [random_crop(x, 5, padding=1, rng=np.random.default_rng(0)),
            random_flip(x, np.random.default_rng(1)),
            pca_color_shift(x, np.ones(3), np.eye(3), rng=np.random.default_rng(2)),
            center_crop(x, 4),
            to_float_nchw(np.zeros((2, 3, 3, 3), np.uint8) + 7, [1, 2, 3])]
    backend.use(make_device())
    xd = backend.to_device(x)
    dev = [random_crop(xd, 5, padding=1, rng=np.random.default_rng(0)),
           random_flip(xd, np.random.default_rng(1)),
           pca_color_shift(xd, np.ones(3), np.eye(3), rng=np.random.default_rng(2)),
           center_crop(xd, 4),
           to_float_nchw(backend.to_device(np.zeros((2, 3, 3, 3), np.uint8) + 7), [1, 2, 3])]
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(backend.to_host(d), h)
        assert d.dtype == np.float32


# ---------------------------------------------------------------- real data (optional)

def test_shared_cifar10_folder_subset():
    root = SHARED / "cifar10" / "train"
    if not root.is_dir():
        pytest.skip(f"shared CIFAR-10 class folders not present at {root}")
    ds = load_image_folder(root, limit_per_class=20, cache=False)
    assert ds.images.shape == (200, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.classes == D.CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(ds.labels), [20] * 10)
    m, s = compute_mean_std(ds)
    assert np.all((m > 80) & (m < 170)) and np.all(s > 30)


def test_shared_imagenet_sample():
    root = SHARED / "imagenet-sample"
    if not root.is_dir():
        pytest.skip(f"shared ImageNet sample not present at {root}")
    ds = load_image_folder(root, size=64, cache=False)
    assert ds.images.shape == (100, 64, 64, 3) and len(ds.classes) == 100 and not ds.skipped
    np.testing.assert_array_equal(ds.labels, np.arange(100))
    # the grayscale photo arrives as RGB with three equal channels
    gray = [(im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()
            for im in ds.images]
    assert sum(gray) >= 1


def test_system_fashion_mnist_if_installed():
    d = Path("/usr/share/datasets/fashion-mnist")
    if not d.is_dir():
        pytest.skip(f"Debian package dataset-fashion-mnist not installed ({d} missing)")
    ds = load_fashion_mnist(d, split="test", download=False)
    assert ds.images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.labels), [1000] * 10)


def test_one_single_test_scale_and_one_preprocessing():
    """EvalTransform (validation in training) and the test protocols share the rule
    for the single test scale Q and the step from uint8 images to network input."""
    from tinyvgg import evaluate_protocols as ep
    from tinyvgg.data.transforms import single_test_scale, to_network_input
    for scale in (40, (32, 48), (256, 512), (33, 34)):
        q = EvalTransform(32, None, scale=scale).scale
        assert q == single_test_scale(scale) == ep.test_scales(scale, multi=False)[0]
    assert single_test_scale((33, 34)) == 33 and single_test_scale([256, 512]) == 384
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    x = to_network_input(gray, [100.0], [50.0], 32, channels=3)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    inner = (gray[..., 0].astype(np.float32) - 100) / 50
    for c in range(3):
        np.testing.assert_allclose(x[:, c, 2:30, 2:30], inner, rtol=1e-6)
    assert not x[:, :, :2].any() and not x[:, :, :, 30:].any()  # the mean colour around
    # a 3-value mean: the gray image is repeated first, then normalised per channel
    y = to_network_input(gray, [10.0, 20.0, 30.0], None, None, channels=3)
    np.testing.assert_array_equal(y[:, 1], gray[..., 0] - 20.0)
    with pytest.raises(ValueError, match="takes 1 channel"):
        to_network_input(rng.integers(0, 256, (1, 4, 4, 3), dtype=np.uint8), channels=1)
    # EvalTransform is to_network_input then the central crop
    imgs = rng.integers(0, 256, (3, 36, 40, 3), dtype=np.uint8)
    ev = EvalTransform(32, [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])(imgs)
    np.testing.assert_array_equal(ev, to_network_input(imgs, [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])[
        :, :, 2:34, 4:36])


# ---------------------------------------------------------------- load sizes

def test_padded_side_is_the_next_multiple_of_32():
    assert [D.padded_side(s) for s in (1, 28, 32, 33, 100, 224)] == [32, 32, 32, 64, 128, 224]


def test_load_size_rescales_builtins_only_beyond_their_padded_size():
    assert D.load_size("cifar10", None) is None
    assert D.load_size("cifar10", 32) is None          # native
    assert D.load_size("cifar10", 64) == 64            # rescaled, not framed in zeros
    assert D.load_size("fashion-mnist", 32) is None    # 28 -> 32 by padding, the convention
    assert D.load_size("fashion-mnist", 64) == 64
    assert D.load_size("cifar10", 64, scale=(64, 96)) is None  # the transforms rescale
    assert D.load_size("folder", 64) == 64
    assert D.load_size("folder", None) is None
    assert D.load_size("folder", 64, scale=80) is None
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_size("mnist", 32)


def test_a_64_pixel_network_trains_and_evaluates_on_rescaled_cifar10(tmp_path, isolated_env):
    """--input-size 64 on CIFAR-10 rescales the 32 x 32 images (as the paper rescales to
    S) for training and evaluation alike, instead of padding them with 16 zeros a side."""
    from types import SimpleNamespace

    from tinyvgg.evaluate_protocols import load_eval_dataset
    from tinyvgg.train import TrainConfig, prepare_data

    truth = write_cifar(tmp_path, n=6)
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tmp_path), input_size=64, val_size=5,
                      batch_norm=False)
    d = prepare_data(cfg)
    assert d["input_size"] == 64
    assert d["train"].images.shape[1:] == (64, 64, 3) and d["test"].images.shape[1:] == (64, 64, 3)
    np.testing.assert_array_equal(d["test"].images, D._resize_stacked(
        D.Dataset(truth["test"][0], truth["test"][1], D.CIFAR10_CLASSES, "t"), 64).images)
    x = d["eval_transform"](d["test"].images[:2])
    assert x.shape == (2, 3, 64, 64)
    assert (np.abs(x[:, :, :8, :8]) > 0).any()  # image content in the corners, no zero frame
    model = SimpleNamespace(train_scale=None, input_size=64)
    test, used, _ = load_eval_dataset("cifar10", str(tmp_path), "test", [model],
                                      {"input_size": 64})
    assert used == "test"
    np.testing.assert_array_equal(test.images, d["test"].images)
    native, _, _ = load_eval_dataset("cifar10", str(tmp_path), "test",
                                     [SimpleNamespace(train_scale=None, input_size=32)])
    assert native.images.shape[1:] == (32, 32, 3)


def test_a_limit_above_the_number_of_images_is_an_error(tmp_path, isolated_env):
    from tinyvgg.train import TrainConfig, prepare_data

    write_cifar(tmp_path, n=4)  # 20 training images
    with pytest.raises(ValueError, match=r"--limit 21 is more than the 20 training images"):
        prepare_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), limit=21, val_size=2))
    assert len(prepare_data(TrainConfig(dataset="cifar10", data_dir=str(tmp_path), limit=20,
                                        val_size=2))["train"]) == 18
