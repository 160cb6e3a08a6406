"""A stand-in "device" for machines without a GPU.

Its arrays are a marker subclass of ``numpy.ndarray`` (NumPy keeps the subclass
through arithmetic), so the backend can tell host arrays from "device" arrays
and count copies between them exactly as it does for CuPy.
"""

import types

import numpy as np

from tinyvgg.backend import Device


class StandInArray(np.ndarray):
    """An array that lives on the stand-in device."""


def _wrap(a):
    if type(a) is np.ndarray:
        return a.view(StandInArray)
    return a


class _Module(types.SimpleNamespace):
    """NumPy with every array it creates viewed as a StandInArray."""

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def wrapped(*args, **kwargs):
            out = f(*args, **kwargs)
            if isinstance(out, tuple):
                return tuple(_wrap(o) for o in out)
            return _wrap(out)

        return wrapped


standin_xp = _Module()
standin_xp.random = np.random
standin_xp.lib = np.lib


def make_device():
    return Device("standin", standin_xp, StandInArray, is_host=False,
                  asarray=lambda a: np.array(a, copy=True).view(StandInArray),
                  asnumpy=lambda a: np.array(a, copy=True).view(np.ndarray))
