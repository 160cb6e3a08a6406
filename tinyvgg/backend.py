"""The one place that decides NumPy or CuPy.

Everything else in tinyvgg asks this module for the array module (``xp()``),
moves arrays with ``to_device`` / ``to_host`` and draws random numbers from
``rng()``. Nothing else imports CuPy.

Devices
-------
``use("cpu")`` selects NumPy, ``use("gpu")`` selects CuPy on the current CUDA
device. The environment variable ``TINYVGG_DEVICE`` (``cpu`` or ``gpu``) picks
the device at import time. ``current()`` names the device in use.

A *device* here is a small object (:class:`Device`) with the array module, the
type of the arrays that live on it and the two copy functions. The tests build
a stand-in device (NumPy underneath, a marker subclass as its array type) to
check the host/device mixing rule and the transfer counts on a machine without
a GPU; ``use`` accepts such an object too.

Mixing rule
-----------
A layer whose parameters live on the device and that is handed a host array
(or the reverse) raises ``TypeError`` naming the layer and both array types
(:func:`check_same_device`). Nothing is ever transferred silently.

Transfers
---------
``to_device`` and ``to_host`` count the copies they make between host and
device (``transfer_counts()``), so a test can assert how many a training step
makes.

Fast paths
----------
The ops (:mod:`tinyvgg.ops`) have a textbook version of every operation (im2col,
one matrix product, col2im) and faster ones (the CUDA kernels on the GPU;
channels-last activations, chunks, scratch buffers and worker threads on the CPU). ``use_fast(False)``
(or the environment variable ``TINYVGG_FAST=0`` at import) makes every op take
the textbook version, on either device, so that a whole network trains on it;
``use_fast(True)`` (the default) turns the fast paths back on. ``fast()`` says
which is in use. Both give the same numbers up to rounding.

Randomness
----------
``seed(n)`` reseeds the generator used for weight initialisation, dropout
masks and data shuffling. Initial weights are always drawn on the host (the
same numbers on both backends), then moved; dropout masks are drawn on the
device that holds the activations.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy

__all__ = [
    "Device",
    "nccl",
    "use",
    "current",
    "device",
    "xp",
    "get_array_module",
    "to_device",
    "to_host",
    "move",
    "is_device_array",
    "check_same_device",
    "seed",
    "rng",
    "host_rng",
    "thread_rng",
    "transfer_counts",
    "reset_transfer_counts",
    "gpu_available",
    "use_fast",
    "fast",
]


class Device:
    """Where arrays live: the array module and how to copy in and out.

    Attributes
    ----------
    name : str
        ``"cpu"``, ``"gpu"`` or a stand-in's name.
    xp : module
        ``numpy`` or ``cupy`` (or anything with NumPy's API).
    array_type : type
        Arrays of this type live on the device.
    is_host : bool
        True for the CPU: its arrays are plain ``numpy.ndarray``.
    """

    def __init__(self, name, xp, array_type, is_host, asarray=None, asnumpy=None, seeder=None):
        self.name = name
        self.xp = xp
        self.array_type = array_type
        self.is_host = is_host
        self._asarray = asarray or xp.asarray
        self._asnumpy = asnumpy or numpy.asarray
        self._seeder = seeder

    def asarray(self, a):
        """Copy a host array onto this device."""
        return self._asarray(a)

    def asnumpy(self, a):
        """Copy an array of this device back to a host ``numpy.ndarray``."""
        return self._asnumpy(a)

    def seed(self, n):
        if self._seeder is not None:
            self._seeder(n)

    def __repr__(self):
        return f"Device({self.name!r})"


CPU = Device("cpu", numpy, numpy.ndarray, True)

_state = threading.local()
_global = {"device": CPU, "seed": 0, "fast": True}
_host_rng = numpy.random.default_rng(0)
_device_rng = {"gen": None, "for": None}
_transfers = {"host_to_device": 0, "device_to_host": 0}
_known_devices = []  # every non-host device used so far, so to_host can bring their arrays back


class GPUUnavailableError(RuntimeError):
    """``use("gpu")`` cannot work here; the message says why and what to do."""


def _make_gpu_device():
    try:
        import cupy  # noqa: F401  (the only CuPy import in tinyvgg)
    except ImportError as e:
        raise GPUUnavailableError(
            "use('gpu'): CuPy is not installed. Install the wheel that matches your "
            "CUDA version, for example 'pip install cupy-cuda12x' (CUDA 12) or "
            "'pip install cupy-cuda13x' (CUDA 13); see requirements-gpu.txt. "
            f"(ImportError: {e})"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDA driver missing or broken
        raise GPUUnavailableError(
            "use('gpu'): CuPy is installed but no CUDA device is visible "
            f"({type(e).__name__}: {e}). Check 'nvidia-smi', the NVIDIA driver and "
            "CUDA_VISIBLE_DEVICES, or use the CPU: use('cpu')."
        ) from None
    if count < 1:
        raise GPUUnavailableError(
            "use('gpu'): CuPy is installed but no CUDA device is visible. Check "
            "'nvidia-smi', the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use the CPU."
        )
    return Device("gpu", cupy, cupy.ndarray, False, asarray=cupy.asarray,
                  asnumpy=cupy.asnumpy, seeder=cupy.random.seed)


def gpu_available():
    """True when ``use("gpu")`` would work (CuPy importable and a device visible)."""
    try:
        _make_gpu_device()
        return True
    except GPUUnavailableError:
        return False


def nccl(xp=None):
    """``(module, "ok")``: CuPy's NCCL binding (``cupy.cuda.nccl``) for summing device
    arrays across processes (data-parallel training), or ``(None, reason)`` when
    ``xp`` (default: the current device's array module) is not CuPy or CuPy has no NCCL."""
    xp = xp if xp is not None else device().xp
    if getattr(xp, "__name__", "") != "cupy":
        return None, "the array module is not CuPy"
    try:
        import importlib
        module = importlib.import_module("cupy.cuda.nccl")
    except Exception as e:  # noqa: BLE001
        return None, f"CuPy has no NCCL ({type(e).__name__}: {e})"
    if not getattr(module, "available", True):
        return None, "CuPy was built without NCCL"
    return module, "ok"


def use(dev):
    """Select the device: ``"cpu"``, ``"gpu"`` or a :class:`Device`. Returns it.

    Raises :class:`GPUUnavailableError` (a ``RuntimeError``) when ``"gpu"`` is
    asked for and CuPy is missing or no CUDA device is visible; the message
    says which, and how to fix it.
    """
    if isinstance(dev, Device):
        new = dev
    elif isinstance(dev, str) and dev.lower() in ("cpu", "numpy"):
        new = CPU
    elif isinstance(dev, str) and dev.lower() in ("gpu", "cuda", "cupy"):
        new = _make_gpu_device()
    else:
        raise ValueError(f"use(): unknown device {dev!r}; expected 'cpu' or 'gpu'")
    _global["device"] = new
    if new not in _known_devices:
        _known_devices.append(new)
    _device_rng["gen"] = None
    return new


def device():
    """The :class:`Device` in use."""
    return _global["device"]


def current():
    """Name of the device in use: ``"cpu"`` or ``"gpu"``."""
    return _global["device"].name


def xp():
    """The array module of the current device (``numpy`` or ``cupy``)."""
    return _global["device"].xp


def is_device_array(a):
    """True when ``a`` lives on a (non-host) device."""
    dev = _global["device"]
    if dev.is_host:
        return False
    return isinstance(a, dev.array_type)


def get_array_module(*arrays):
    """The array module that owns ``arrays``: the device's for device arrays,
    NumPy for host arrays; with no arguments, the current device's module."""
    if not arrays:
        return xp()
    for a in arrays:
        if is_device_array(a):
            return _global["device"].xp
    return numpy


def to_device(a, dtype=None):
    """Return ``a`` as an array of the current device (a copy when it was on the
    host and the device is not). Counts host-to-device copies."""
    dev = _global["device"]
    if dev.is_host:
        out = numpy.asarray(a)
        return out.astype(dtype, copy=False) if dtype is not None else out
    if isinstance(a, dev.array_type):
        return a.astype(dtype, copy=False) if dtype is not None else a
    host = numpy.asarray(a)
    if dtype is not None:
        host = host.astype(dtype, copy=False)
    _transfers["host_to_device"] += 1
    return dev.asarray(host)


def to_host(a):
    """Return ``a`` as a host ``numpy.ndarray``. Counts device-to-host copies."""
    for dev in [_global["device"]] + _known_devices:
        if not dev.is_host and isinstance(a, dev.array_type):
            _transfers["device_to_host"] += 1
            return dev.asnumpy(a)
    return numpy.asarray(a)


def move(a):
    """Return ``a`` on the current device, wherever it was (counted like the
    copies of :func:`to_device` and :func:`to_host`)."""
    if _global["device"].is_host:
        return to_host(a)
    return to_device(to_host(a) if not is_device_array(a) else a)


def use_fast(on=True):
    """Let the ops take their fast paths (``True``, the default) or only the
    textbook ones (``False``). Returns the previous setting, so that
    ``old = use_fast(False); ...; use_fast(old)`` restores it."""
    old = _global["fast"]
    _global["fast"] = bool(on)
    return old


def fast():
    """True when the ops may take their fast paths (see :func:`use_fast`)."""
    return _global["fast"]


def transfer_counts():
    """``{"host_to_device": n, "device_to_host": m}`` since the last reset."""
    return dict(_transfers)


def reset_transfer_counts():
    for k in _transfers:
        _transfers[k] = 0


def _kind(a):
    if is_device_array(a):
        return "device"
    if isinstance(a, (numpy.ndarray, numpy.generic)):
        return "host"
    return "other"


def _describe(a):
    t = type(a)
    return f"{t.__module__}.{t.__qualname__}"


def check_same_device(owner, x, *others):
    """Raise ``TypeError`` when ``x`` and the arrays in ``others`` (a layer's
    parameters) do not live in the same place. ``owner`` names the layer."""
    kx = _kind(x)
    if kx == "other":
        raise TypeError(f"{owner}: expected an array, got {_describe(x)}")
    for o in others:
        ko = _kind(o)
        if ko != kx:
            raise TypeError(
                f"{owner}: input is a {kx} array ({_describe(x)}) but the layer's "
                f"parameters are {ko} arrays ({_describe(o)}); move the input with "
                f"tinyvgg.backend.to_device/to_host or the model with .to(device) "
                f"(nothing is transferred silently)"
            )


def seed(n):
    """Make initialisation, dropout masks and shuffling reproducible."""
    global _host_rng
    n = int(n)
    _global["seed"] = n
    _host_rng = numpy.random.default_rng(n)
    _device_rng["gen"] = None
    _global["device"].seed(n)


@contextlib.contextmanager
def thread_rng(seed):
    """Within the block, :func:`rng` returns a NumPy generator seeded with ``seed``
    for the calling thread only (the CPU backend); other threads, and the host
    generator's sequence, are left alone. Each model replica of
    :class:`tinyvgg.replicas.Replicas` draws its dropout masks this way, from a
    generator of its own seeded for the step."""
    before = getattr(_state, "rng", None)
    _state.rng = numpy.random.default_rng(seed)
    try:
        yield _state.rng
    finally:
        _state.rng = before


def host_rng():
    """The seeded NumPy generator used for initial weights and data order."""
    return _host_rng


def rng():
    """A seeded generator on the current device (for dropout masks).

    On the CPU this is :func:`host_rng`, or this thread's own generator inside
    :func:`thread_rng`; on the GPU a ``cupy.random`` generator seeded from the
    same seed.
    """
    dev = _global["device"]
    if dev.is_host:
        own = getattr(_state, "rng", None)
        return _host_rng if own is None else own
    if _device_rng["gen"] is None or _device_rng["for"] is not dev:
        gen = getattr(dev.xp.random, "default_rng", None)
        _device_rng["gen"] = gen(_global["seed"]) if gen else dev.xp.random.RandomState(_global["seed"])
        _device_rng["for"] = dev
    return _device_rng["gen"]


def _init_from_env():
    name = os.environ.get("TINYVGG_DEVICE", "").strip().lower()
    if name:
        use(name)
    flag = os.environ.get("TINYVGG_FAST", "").strip().lower()
    if flag:
        if flag not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
            raise ValueError(f"TINYVGG_FAST={flag!r}: expected 0 (textbook ops only) or 1 (fast paths)")
        use_fast(flag in ("1", "true", "yes", "on"))


_init_from_env()
