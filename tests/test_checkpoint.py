"""Tests of tinyvgg.checkpoint (round trip, atomic writes, bad files) and
tinyvgg.interop (architecture inference; PyTorch conversion when torch exists)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from tinyvgg import backend, checkpoint, interop
from tinyvgg.checkpoint import CheckpointError
from tinyvgg.models import vgg

SMALL = dict(width=1 / 16, input_size=32, hidden=32, num_classes=10)
HAS_TORCH = importlib.util.find_spec("torch") is not None


def trained_small(name="vgg11_bn", dtype=np.float32):
    backend.seed(0)
    m = vgg(name, dtype=dtype, init="glorot", **SMALL)
    # One training-mode pass: BatchNorm running statistics move away from 0/1.
    m.forward(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(dtype), train=True)
    return m


def torch_twin(m):
    """The PyTorch network of tinyvgg VGG ``m`` (fresh weights), built from torch.nn classes
    only (so a whole saved module unpickles anywhere): torchvision's VGG layout
    ``features.<i>``, ``classifier.<i>`` with a Flatten between. Needs torch."""
    from collections import OrderedDict

    from torch import nn

    from tinyvgg.layers import BatchNorm2d, Conv2d, Dropout, Linear, LocalResponseNorm, MaxPool2d, ReLU

    def mirror(layer):
        if isinstance(layer, Conv2d):
            return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, padding=layer.padding)
        if isinstance(layer, BatchNorm2d):
            return nn.BatchNorm2d(layer.num_features)
        if isinstance(layer, LocalResponseNorm):
            return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        if isinstance(layer, MaxPool2d):
            return nn.MaxPool2d(2, 2)
        if isinstance(layer, Linear):
            return nn.Linear(layer.in_features, layer.out_features)
        return {ReLU: nn.ReLU, Dropout: nn.Dropout}[type(layer)]()

    return nn.Sequential(OrderedDict([("features", nn.Sequential(*map(mirror, m.features))),
                                      ("flatten", nn.Flatten(1)),
                                      ("classifier", nn.Sequential(*map(mirror, m.classifier)))]))


class FakeOptimizer:
    """Stands in for the optimizer (written elsewhere): only state_dict() matters."""

    def __init__(self, model):
        self.state = {
            "step": 7,
            "lr": 0.01,
            "momentum": 0.9,
            "nesterov": False,
            "schedule": None,
            "name": "sgd",
            "velocity": {n: np.full(p.shape, 0.5, p.dtype) for n, p, _ in model.named_parameters()},
            "groups": [{"lr": 1e-3, "ids": (0, 1, 2)}, {"lr": 1e-4, "ids": (3,)}],
            "best": np.float32(0.25),
            "count": np.int64(3),
            "mask": np.array([True, False]),
            5: "int key",
            "nan": float("nan"),
        }

    def state_dict(self):
        return self.state


def assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


# -- round trip ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(tmp_path, dtype):
    m = trained_small(dtype=dtype)
    opt = FakeOptimizer(m)
    path = tmp_path / "ckpt.npz"
    assert checkpoint.save(path, m, opt, epoch=3, top1=np.float32(0.5), history=[1.0, 0.5]) == str(path)
    ck = checkpoint.load(path)
    assert ck.config == m.config and ck.version == checkpoint.VERSION
    assert ck.meta == {"epoch": 3, "top1": 0.5, "history": [1.0, 0.5]}
    assert_same(m.state_dict(), ck.model.state_dict())
    assert_same(opt.state_dict(), ck.optimizer_state)
    assert ck.model.dtype == np.dtype(dtype)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(dtype)
    np.testing.assert_array_equal(ck.model.forward(x), m.forward(x))


def test_round_trip_without_optimizer_and_with_dict(tmp_path):
    m = trained_small("vgg16_1x1")
    checkpoint.save(tmp_path / "a.npz", m)
    ck = checkpoint.load(tmp_path / "a.npz")
    assert ck.optimizer_state is None and ck.meta == {}
    state = {"t": 1, "m": [np.zeros(3)]}
    checkpoint.save(tmp_path / "b.npz", m, state, note="dict optimizer")
    ck = checkpoint.load(tmp_path / "b.npz")
    assert_same(state, ck.optimizer_state)
    assert ck.meta["note"] == "dict optimizer"


def test_load_does_not_shift_the_random_stream(tmp_path):
    m = trained_small()
    checkpoint.save(tmp_path / "c.npz", m)
    backend.seed(11)
    expected = backend.host_rng().random(4)
    backend.seed(11)
    checkpoint.load(tmp_path / "c.npz")
    np.testing.assert_array_equal(backend.host_rng().random(4), expected)


def test_unserialisable_meta_is_refused_before_writing(tmp_path):
    m = trained_small()
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(tmp_path / "d.npz", m, thing=object())
    assert os.listdir(tmp_path) == []


# -- atomic writes --------------------------------------------------------------------

def test_crash_mid_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    m = trained_small()
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, m, epoch=1)
    good = path.read_bytes()

    def crashing_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")  # something is written, then the crash
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(checkpoint.np, "savez", crashing_savez)
    with pytest.raises(RuntimeError, match="disk on fire"):
        checkpoint.save(path, m, epoch=2)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path / "new.npz", m)
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    monkeypatch.undo()
    assert checkpoint.load(path).meta == {"epoch": 1}


# -- bad files ------------------------------------------------------------------------

def test_missing_file(tmp_path):
    p = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        checkpoint.load(p)


def test_text_file(tmp_path):
    p = tmp_path / "notes.npz"
    p.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.npz"):
        checkpoint.load(p)


def test_foreign_npz_and_npy(tmp_path):
    p = tmp_path / "foreign.npz"
    np.savez(p, a=np.arange(3))
    with pytest.raises(CheckpointError, match="marker") as e:
        checkpoint.load(p)
    assert "foreign.npz" in str(e.value)
    q = tmp_path / "single.npy"
    np.save(q, np.arange(3))
    with pytest.raises(CheckpointError, match="single.npy"):
        checkpoint.load(q)
    with pytest.raises(CheckpointError, match="directory"):
        checkpoint.load(tmp_path)
    assert issubclass(CheckpointError, ValueError)


def test_truncated_and_corrupt(tmp_path):
    m = trained_small()
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, m, FakeOptimizer(m))
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"cut{cut}.npz"):
            checkpoint.load(bad)
    rng = np.random.default_rng(0)
    for i, at in enumerate(rng.integers(100, len(data) - 100, size=5)):
        flipped = bytearray(data)
        flipped[at:at + 8] = bytes(255 - b for b in flipped[at:at + 8])
        bad = tmp_path / f"flip{i}.npz"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match=f"flip{i}.npz"):
            checkpoint.load(bad)


def test_newer_version_and_bad_header(tmp_path):
    m = trained_small()
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, m)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["__header__"][()]))
    header["version"] = checkpoint.VERSION + 1
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(CheckpointError, match="newer"):
        checkpoint.load(tmp_path / "newer.npz")
    arrays["__header__"] = np.array("{not json")
    np.savez(tmp_path / "badjson.npz", **arrays)
    with pytest.raises(CheckpointError, match="JSON"):
        checkpoint.load(tmp_path / "badjson.npz")
    header["version"] = checkpoint.VERSION
    arrays["__header__"] = np.array(json.dumps(header))
    del arrays["model/features.0.weight"]
    np.savez(tmp_path / "noweight.npz", **arrays)
    with pytest.raises(CheckpointError, match="features.0.weight"):
        checkpoint.load(tmp_path / "noweight.npz")


# -- interop ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", [
    ("vgg11", dict(SMALL)),
    ("vgg11_lrn", dict(SMALL)),
    ("vgg13", dict(width=0.25, input_size=64, hidden=16, num_classes=3)),
    ("vgg16_1x1", dict(SMALL, batch_norm=True)),
    ("vgg16", dict(width=0.3, input_size=96, hidden=8, num_classes=7)),
    ("vgg19", dict(SMALL, batch_norm=True)),
    ("vgg11_lrn", dict(SMALL, batch_norm=True)),
])
def test_infer_config(name, kw):
    m = vgg(name, **kw)
    sd = m.state_dict()
    cfg = interop.infer_config(sd)
    assert cfg["name"] == m.config["name"] and cfg["batch_norm"] == m.config["batch_norm"]
    for k in ("num_classes", "input_size", "hidden"):
        assert cfg[k] == m.config[k]
    rebuilt = vgg(**cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    # DataParallel's "module." prefix is tolerated.
    assert interop.infer_config({f"module.{k}": v for k, v in sd.items()}) == cfg


def test_infer_config_torchvision_vgg16_bn_shapes():
    # torchvision's vgg16_bn at full size, as shapes only (infer_config reads .shape).
    class Shape:
        def __init__(self, *s):
            self.shape = s
    idx = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    chans = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    sd, c = {}, 3
    for i, f in zip(idx, chans):
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = Shape(f, c, 3, 3), Shape(f)
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"features.{i + 1}.{k}"] = Shape(f)
        sd[f"features.{i + 1}.num_batches_tracked"] = Shape()
        c = f
    for i, (o, n) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096))):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = Shape(o, n), Shape(o)
    assert interop.infer_config(sd) == dict(name="vgg16", num_classes=1000, input_size=224, width=1.0,
                                            batch_norm=True, hidden=4096)


def test_infer_config_rejects_non_vgg():
    with pytest.raises(ValueError, match="not a VGG"):
        interop.infer_config({"fc.weight": np.zeros((3, 4))})
    sd = vgg("vgg11", **SMALL).state_dict()
    sd["features.30.weight"] = np.zeros((4, 32, 3, 3), np.float32)
    with pytest.raises(ValueError, match="apart"):
        interop.infer_config(sd)


def test_convert_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=".pth"):
        interop.convert(tmp_path / "weights.h5", tmp_path / "out.npz")


def test_convert_without_torch_says_how_to_install(tmp_path, monkeypatch):
    # A None entry in sys.modules makes "import torch" fail even where torch is installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    m = trained_small()
    checkpoint.save(tmp_path / "m.npz", m)
    for src, dst in ((tmp_path / "w.pth", tmp_path / "w.npz"), (tmp_path / "m.npz", tmp_path / "m.pth")):
        with pytest.raises(ImportError, match="pip install torch"):
            interop.convert(src, dst)
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch)")
def test_torch_round_trip(tmp_path):  # pragma: no cover - needs torch
    m = trained_small()
    checkpoint.save(tmp_path / "m.npz", m)
    interop.convert(tmp_path / "m.npz", tmp_path / "m.pth")
    interop.convert(tmp_path / "m.pth", tmp_path / "back.npz")
    back = checkpoint.load(tmp_path / "back.npz")
    assert back.config["name"] == "vgg11" and back.config["batch_norm"]
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(back.model.state_dict()[k], v)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch)")
@pytest.mark.parametrize("name", ["vgg11_lrn", "vgg16_bn"])
def test_state_dict_loads_into_equivalent_torch_modules(name):  # pragma: no cover - needs torch
    """Our keys are nn.Sequential's indices and our forward is PyTorch's (float64, eval)."""
    import torch

    m = trained_small(name, dtype=np.float64)
    t = torch_twin(m).double().eval()
    t.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()}, strict=True)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        ref = t(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m.forward(x), ref, rtol=1e-10, atol=1e-12)


def test_round_trip_on_a_non_host_device(tmp_path):
    from tests.standin import StandInArray as DeviceArray
    from tests.standin import make_device
    backend.use(make_device())  # its array module makes device arrays, as CuPy does
    try:
        m = vgg("vgg11_bn", **SMALL)
        m.forward(backend.to_device(np.ones((2, 3, 32, 32), np.float32)), train=True)
        state = {"buf": backend.to_device(np.arange(3.0)), "steps": 2}
        checkpoint.save(tmp_path / "d.npz", m, state)
        ck = checkpoint.load(tmp_path / "d.npz")
        assert all(type(p) is DeviceArray for _, p, _ in ck.model.named_parameters())
        assert type(ck.optimizer_state["buf"]) is np.ndarray  # host arrays come back
        np.testing.assert_array_equal(ck.optimizer_state["buf"], np.arange(3.0))
        x = backend.to_device(np.ones((1, 3, 32, 32), np.float32))
        np.testing.assert_array_equal(backend.to_host(ck.model.forward(x)), backend.to_host(m.forward(x)))
    finally:
        backend.use("cpu")
