"""How much a training step moves between host and device, on a stand-in device.

The stand-in here is stricter than :mod:`tests.standin`, closer to CuPy:

- its arrays (:class:`DeviceArray`, NumPy underneath) refuse to meet a host
  ``numpy.ndarray`` in a ufunc or a NumPy function (CuPy raises ``TypeError``
  there too), so a host array that sneaks into device code is an error instead
  of a silent copy;
- its random generator (``xp.random.default_rng``) makes device arrays, as
  ``cupy.random`` does;
- reading a device value on the host without ``backend.to_host`` -- ``float()``,
  ``int()``, ``bool()``, ``.item()``, ``.tolist()`` -- is counted by kind
  (``DeviceArray.reads``). On a GPU each such read is a device-to-host copy and
  a synchronisation, which the backend's transfer counts do not see.

What a training step may do: copy the batch in (x and y: 2 host-to-device
copies), nothing out (0 device-to-host copies), and read nothing back; the
Trainer reads the running loss and accuracy (two ``float()``) once per logging
interval.
"""

import collections
import types

import numpy as np
import pytest

from tinyvgg import backend
from tinyvgg.data import DataLoader, Dataset, EvalTransform, TrainTransform
from tinyvgg.evaluate import evaluate
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.optim import SGD
from tinyvgg.train import TrainConfig, Trainer


# --------------------------------------------------------------------------
# a strict stand-in device
# --------------------------------------------------------------------------

class HostDeviceMix(TypeError):
    pass


class DeviceArray(np.ndarray):
    """An array on the strict stand-in device."""

    reads = collections.Counter()  # host read-backs by kind: float, int, bool, index, item, tolist

    def __float__(self):
        DeviceArray.reads["float"] += 1
        return super().__float__()

    def __int__(self):
        DeviceArray.reads["int"] += 1
        return super().__int__()

    def __index__(self):
        DeviceArray.reads["index"] += 1
        return super().__index__()

    def __bool__(self):
        DeviceArray.reads["bool"] += 1
        return super().__bool__()

    def item(self, *args):
        DeviceArray.reads["item"] += 1
        return super().item(*args)

    def tolist(self):
        DeviceArray.reads["tolist"] += 1
        return super().tolist()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        _refuse_host(f"numpy.{ufunc.__name__}", inputs + tuple(out))
        args = [_plain(a) for a in inputs]
        if out:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out:
            return out[0] if len(out) == 1 else tuple(out)
        return _wrap(result, scalars=True)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_host(f"numpy.{func.__name__}", list(args) + list(kwargs.values()))
        return super().__array_function__(func, types_, args, kwargs)


def _leaves(objs):
    for o in objs:
        if isinstance(o, (list, tuple)):
            yield from _leaves(o)
        else:
            yield o


def _refuse_host(what, objs):
    for o in _leaves(objs):
        if isinstance(o, np.ndarray) and not isinstance(o, DeviceArray):
            raise HostDeviceMix(f"{what}: a host numpy.ndarray {o.shape} {o.dtype} meets a device "
                                f"array (CuPy would refuse this too)")


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _wrap(out, scalars=False):
    if isinstance(out, tuple):
        return tuple(_wrap(o, scalars) for o in out)
    if isinstance(out, np.ndarray) and not isinstance(out, DeviceArray):
        return out.view(DeviceArray)
    if scalars and isinstance(out, np.generic):  # a reduction's result stays on the device
        return np.asarray(out).view(DeviceArray)
    if isinstance(out, (np.random.Generator, np.random.RandomState)):
        return _Module(out)
    return out


class _Module:
    """NumPy (or a generator) whose functions return device arrays."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name):
        a = getattr(self._target, name)
        if isinstance(a, types.ModuleType):
            return _Module(a)
        if callable(a) and not isinstance(a, type):
            def wrapped(*args, **kwargs):
                _refuse_host(f"xp.{name}", list(args) + list(kwargs.values()))
                return _wrap(a(*args, **kwargs))
            return wrapped
        return a


def make_strict_device():
    return backend.Device("strict-standin", _Module(np), DeviceArray, is_host=False,
                          asarray=lambda a: np.array(a, copy=True).view(DeviceArray),
                          asnumpy=lambda a: np.array(a, copy=True).view(np.ndarray))


@pytest.fixture
def strict():
    dev = backend.use(make_strict_device())
    backend.reset_transfer_counts()
    DeviceArray.reads.clear()
    return dev


def test_the_strict_device_refuses_host_arrays_and_counts_reads(strict):
    a = backend.to_device(np.arange(4.0))
    assert isinstance(a + 1, DeviceArray) and isinstance(a.sum(), DeviceArray)
    assert isinstance(strict.xp.zeros(3), DeviceArray)
    assert isinstance(backend.rng().random(3), DeviceArray)
    with pytest.raises(HostDeviceMix, match="numpy.add"):
        a + np.ones(4)
    with pytest.raises(HostDeviceMix, match="numpy.where"):
        np.where(a > 1, a, np.zeros(4))
    float(a.sum())
    int(a.max())
    assert DeviceArray.reads == {"float": 1, "int": 1}
    assert backend.transfer_counts() == {"host_to_device": 1, "device_to_host": 0}


# --------------------------------------------------------------------------
# the pieces of a step
# --------------------------------------------------------------------------

def _dataset(n=28, classes=4, size=32, seed=0):
    r = np.random.default_rng(seed)
    images = r.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % classes
    return Dataset(images, labels, [f"c{k}" for k in range(classes)], "tiny")


def _model():
    return vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, batch_norm=True,
               dropout=0.5, init="glorot")


def _is_device(a):
    return isinstance(a, DeviceArray)


def _manual_steps(prefetch, steps=3):
    """Run ``steps`` training steps by hand; returns per-step (transfers, reads)."""
    model = _model()  # built with the device selected: the parameters live there
    assert all(_is_device(p) for p in model.parameters())
    ds = _dataset()
    mean, std = ds.images.mean(axis=(0, 1, 2)) / 255, ds.images.std(axis=(0, 1, 2)) / 255
    loader = DataLoader(ds, 4, TrainTransform(32, mean, std, padding=4), shuffle=True, seed=0,
                        prefetch=prefetch)
    loss_fn, opt = SoftmaxCrossEntropy(), SGD(model, lr=0.01)
    per_step = []
    it = iter(loader)
    for _ in range(steps):
        backend.reset_transfer_counts()
        DeviceArray.reads.clear()
        x, y = next(it)
        assert _is_device(x) and _is_device(y) and x.dtype == np.float32 and y.dtype == np.int64
        logits = model.forward(x, train=True)
        loss = loss_fn.forward(logits, y)
        assert _is_device(loss) and loss.ndim == 0  # a 0-d device array, not a float
        model.backward(loss_fn.backward())
        opt.step()
        per_step.append((backend.transfer_counts(), dict(DeviceArray.reads)))
    it.close()
    for name, p, g in model.named_parameters():
        assert _is_device(p) and _is_device(g), name
    assert all(_is_device(v) for v in opt.buffers.values())
    assert all(_is_device(b) for _, b in model.named_buffers())
    return per_step


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_training_step_copies_the_batch_in_and_nothing_out(strict, prefetch):
    for transfers, _ in _manual_steps(prefetch):
        assert transfers == {"host_to_device": 2, "device_to_host": 0}


def test_a_training_step_reads_nothing_back(strict):
    # No float()/int()/bool()/.item() of a device value: each would be a copy and a GPU sync.
    for _, reads in _manual_steps(prefetch=0, steps=2):
        assert reads == {}


def test_the_loss_still_checks_host_labels(strict):
    backend.use("cpu")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3), np.float32), np.array([0, 3]))


def test_evaluate_copies_batches_in_and_reads_back_once(strict):
    model = _model()
    ds = _dataset(n=10)
    loader = DataLoader(ds, 4, EvalTransform(32, [0.5] * 3, [0.25] * 3), shuffle=False)
    backend.reset_transfer_counts()
    DeviceArray.reads.clear()
    out = evaluate(model, loader)
    assert out["n"] == 10
    assert backend.transfer_counts() == {"host_to_device": 2 * 3, "device_to_host": 0}
    assert DeviceArray.reads == {"float": 3}  # top-1, top-5 and the loss, at the end


# --------------------------------------------------------------------------
# the Trainer: one read-back per logging interval
# --------------------------------------------------------------------------

class _Recorder:
    def __init__(self):
        self.steps = []

    def train_begin(self, trainer):
        backend.reset_transfer_counts()
        DeviceArray.reads.clear()

    def after_step(self, trainer, step, loss):
        assert _is_device(loss)
        self.steps.append((step, backend.transfer_counts(), DeviceArray.reads["float"]))


def _trainer(tmp_path, monkeypatch, log_every):
    dev = make_strict_device()
    # cfg.device is a name; "gpu" resolves to the strict stand-in for this test.
    monkeypatch.setattr(backend, "_make_gpu_device", lambda: dev)
    ds, val = _dataset(n=28), _dataset(n=8, seed=1)
    data = {"train": ds, "val": val, "test": val, "train_transform": None, "eval_transform": None,
            "mean": np.zeros(3), "std": np.ones(3), "classes": ds.classes, "input_size": 32,
            "test_split": "test", "channels": 3}
    cfg = TrainConfig(model="vgg11", epochs=1, batch_size=4, width=1 / 16, hidden=16, batch_norm=True,
                      dropout=0.5, device="gpu", out=str(tmp_path / "run"), progress=False,
                      log_every=log_every, schedule="constant")
    rec = _Recorder()
    trainer = Trainer(cfg, hooks=[rec], data=data).setup()
    assert backend.device() is dev and all(_is_device(p) for p in trainer.model.parameters())
    return trainer, rec


def test_trainer_reads_the_loss_back_once_per_log_interval(strict, tmp_path, monkeypatch):
    trainer, rec = _trainer(tmp_path, monkeypatch, log_every=3)
    rec.train_begin(trainer)
    stats, _, images = trainer.train_epoch()
    assert images == 28 and np.isfinite(stats["loss"])
    assert [s for s, _, _ in rec.steps] == list(range(1, 8))
    for step, transfers, floats in rec.steps:
        assert transfers == {"host_to_device": 2 * step, "device_to_host": 0}
        # Logged after steps 3 and 6 (2 floats each: loss and accuracy); the hook of
        # step s runs before step s's own log.
        assert floats == 2 * ((step - 1) // 3), (step, floats)
    # Step 7 is the last of the epoch (logged); that read is also the epoch's summary.
    assert DeviceArray.reads["float"] == 2 * 3
    assert backend.transfer_counts()["device_to_host"] == 0


def test_trainer_with_a_long_log_interval_reads_only_at_the_end(strict, tmp_path, monkeypatch):
    trainer, rec = _trainer(tmp_path, monkeypatch, log_every=1000)
    rec.train_begin(trainer)
    trainer.train_epoch()
    assert all(floats == 0 for _, _, floats in rec.steps)
    assert DeviceArray.reads["float"] == 2  # the last batch's log, which is the epoch summary


# --------------------------------------------------------------------------
# checkpoints between the device and the host
# --------------------------------------------------------------------------

def test_checkpoint_saved_on_the_device_loads_on_the_host_and_back(strict, tmp_path):
    from tinyvgg import checkpoint
    model = _model()
    opt = SGD(model, lr=0.01)
    x = backend.to_device(np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    y = backend.to_device(np.arange(4) % 4)
    loss = SoftmaxCrossEntropy()
    loss.forward(model.forward(x, train=True), y)
    model.backward(loss.backward())
    opt.step()
    want = backend.to_host(model.forward(x, train=False))
    checkpoint.save(tmp_path / "dev.npz", model, opt, epoch=1)

    backend.use("cpu")
    ck = checkpoint.load(tmp_path / "dev.npz")
    assert all(type(p) is np.ndarray for p in ck.model.parameters())
    np.testing.assert_allclose(ck.model.forward(backend.to_host(x), train=False), want, rtol=1e-6, atol=1e-7)
    assert all(type(v) is np.ndarray for k, v in ck.optimizer_state.items() if k.startswith("momentum_buffer."))
    checkpoint.save(tmp_path / "host.npz", ck.model, ck.optimizer_state)

    backend.use(strict)
    back = checkpoint.load(tmp_path / "host.npz")
    assert all(_is_device(p) for p in back.model.parameters())
    np.testing.assert_allclose(backend.to_host(back.model.forward(x, train=False)), want, rtol=1e-6, atol=1e-7)
    opt2 = SGD(back.model, lr=0.01)
    opt2.load_state_dict(back.optimizer_state)
    assert all(_is_device(v) for v in opt2.buffers.values())
