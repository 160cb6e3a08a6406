"""Checkpoints: a model's weights, its configuration, the optimizer state and metadata
in one ``.npz`` file, written atomically and read without pickle.

File layout (``numpy.savez``, every member a plain array, ``allow_pickle=False``)
--------------------------------------------------------------------------------
``__tinyvgg_checkpoint__``  the format marker: a 0-d string array, ``"tinyvgg-checkpoint"``
``__header__``              a 0-d string array holding JSON: ``format``, ``version``,
                            ``config`` (the :func:`tinyvgg.models.vgg` arguments),
                            ``weights`` (the state-dict keys), ``optimizer`` (the
                            structure of the optimizer state, or null) and ``meta``
``model/<key>``             one array per state-dict entry (torchvision key names)
``optim/<i>``               the arrays of the optimizer state, referred to by the structure

The optimizer state is any nesting of dicts (str, int, float or bool keys),
lists and tuples whose leaves are NumPy (or device) arrays, NumPy scalars or
Python scalars (int, float, bool, str, None); it comes back with the same
nesting, key types, dtypes and values (arrays as host NumPy arrays: moving
them to the device is the optimizer's business).

Atomicity: :func:`save` writes a temporary file in the target's directory,
flushes and fsyncs it, then ``os.replace``-s it over the target, so a crash
mid-save leaves the previous checkpoint intact and no temporary file behind
(best effort: a killed process can leave a ``.*.tmp`` file, never a half file
under the checkpoint's name).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .fileio import atomic_open

__all__ = ["CheckpointError", "Checkpoint", "save", "load", "load_header", "FORMAT", "VERSION"]

FORMAT = "tinyvgg-checkpoint"
VERSION = 1
_MARKER = "__tinyvgg_checkpoint__"
_HEADER = "__header__"


class CheckpointError(ValueError):
    """A file that is not a readable tinyvgg checkpoint; the message names the
    file and what is wrong with it."""


@dataclass
class Checkpoint:
    """What :func:`load` returns.

    ``model``: the rebuilt :class:`tinyvgg.models.VGG` with the saved weights;
    ``optimizer_state``: the saved optimizer state dict (None if none was saved);
    ``meta``: the metadata dict; ``config``: the model configuration;
    ``version``: the file format version; ``path``: the file.
    """

    model: object
    optimizer_state: object
    meta: dict
    config: dict
    version: int
    path: str
    state_dict: dict = field(default_factory=dict, repr=False)

    def warn_if_not_normalized(self, out=None):
        """Print a one-line warning to ``out`` (default stderr) when ``meta`` has no input
        ``mean``/``std``, so the network gets raw 0-255 pixels; the trainer and ``convert``
        record them. Returns True when it warned."""
        import sys

        if self.meta.get("mean") is not None and self.meta.get("std") is not None:
            return False
        print(f"warning: {self.path} carries no input normalisation (no mean/std in its metadata), "
              f"so images go in as raw 0-255 values; if the network was trained on normalised "
              f"inputs (every torchvision model was), its outputs are wrong: convert the .pth again "
              f"with 'python -m tinyvgg convert SRC.pth DST.npz' (ImageNet statistics by default, "
              f"or --mean/--std)", file=out or sys.stderr)
        return True


# -- optimizer state <-> (JSON structure, arrays) ---------------------------------

def _encode(obj, arrays, where):
    """JSON-able description of ``obj``; arrays go to ``arrays`` as ``optim/<i>``."""
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if isinstance(k, np.generic):
                k = k.item()  # NumPy number keys come back as Python numbers
            if not isinstance(k, (str, int, float, bool)):
                raise TypeError(f"checkpoint.save: optimizer state key {k!r} at {where} must be "
                                f"a str, int, float or bool")
            items.append([k, _encode(v, arrays, f"{where}[{k!r}]")])
        return {"t": "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        return {"t": type(obj).__name__,
                "items": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, np.generic):
        key = f"optim/{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"t": "scalar", "key": key}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"t": "py", "v": obj}
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # a host or device array
        key = f"optim/{len(arrays)}"
        arrays[key] = np.asarray(backend.to_host(obj))
        if arrays[key].dtype == object:
            raise TypeError(f"checkpoint.save: optimizer state {where} is an object array")
        return {"t": "array", "key": key}
    raise TypeError(f"checkpoint.save: cannot store optimizer state {where} of type "
                    f"{type(obj).__name__} (expected dicts, lists, arrays and numbers)")


def _decode(desc, npz):
    t = desc["t"]
    if t == "dict":
        return {k: _decode(v, npz) for k, v in desc["items"]}
    if t == "list":
        return [_decode(v, npz) for v in desc["items"]]
    if t == "tuple":
        return tuple(_decode(v, npz) for v in desc["items"])
    if t == "scalar":
        return npz[desc["key"]][()]
    if t == "array":
        return npz[desc["key"]]
    if t == "py":
        return desc["v"]
    raise ValueError(f"unknown optimizer state entry {t!r}")


def _json_default(o):
    # NumPy numbers in metadata (an accuracy computed with NumPy, say) become Python numbers.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"checkpoint.save: metadata value {o!r} of type {type(o).__name__} is not "
                    f"JSON-serialisable")


# -- save --------------------------------------------------------------------------

def save(path, model, optimizer=None, **meta):
    """Write ``model`` (a :class:`tinyvgg.models.VGG`), the optimizer state and ``meta``
    to ``path`` atomically. Returns the path.

    ``optimizer``: None, an object with ``state_dict()`` or that state dict itself.
    ``meta``: JSON-serialisable keyword arguments (epoch=3, top1=0.71, ...).
    The file is written exactly at ``path`` (no ``.npz`` is appended).
    """
    path = os.fspath(path)
    config = dict(model.config)
    state = model.state_dict()
    arrays = {f"model/{k}": v for k, v in state.items()}
    if optimizer is None:
        optim_desc = None
    else:
        opt_state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        optim_arrays = {}
        optim_desc = _encode(opt_state, optim_arrays, "state")
        arrays.update(optim_arrays)
    header = {"format": FORMAT, "version": VERSION, "config": config, "weights": list(state),
              "optimizer": optim_desc, "meta": meta}
    header_json = json.dumps(header, default=_json_default, allow_nan=True)
    arrays[_MARKER] = np.array(FORMAT)
    arrays[_HEADER] = np.array(header_json)

    with atomic_open(path) as f:  # temporary file, fsync, rename: never half a checkpoint
        np.savez(f, **arrays)
    return path


def _read(path, arrays=True):
    """Read every member of the npz into memory: (header dict, {name: array});
    ``arrays=False``: the header only (the dict is empty)."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):  # a single .npy array, not an archive
            raise CheckpointError(f"{path}: not a tinyvgg checkpoint (a single .npy array of "
                                  f"shape {getattr(npz, 'shape', '?')}, not an .npz archive)")
        with npz:
            names = list(npz.files)
            if _MARKER not in names:
                raise CheckpointError(f"{path}: not a tinyvgg checkpoint (an .npz archive without "
                                      f"the {_MARKER!r} marker; members: {names[:8]}"
                                      f"{' ...' if len(names) > 8 else ''})")
            marker = str(npz[_MARKER][()])
            if marker != FORMAT:
                raise CheckpointError(f"{path}: unknown format marker {marker!r} (expected {FORMAT!r})")
            if _HEADER not in names:
                raise CheckpointError(f"{path}: the checkpoint has no {_HEADER!r} member")
            header_json = str(npz[_HEADER][()])
            data = {k: npz[k] for k in names if k not in (_MARKER, _HEADER)} if arrays else {}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable tinyvgg checkpoint: truncated, corrupt or "
                              f"not an .npz file ({type(e).__name__}: {e})") from None
    try:
        header = json.loads(header_json)
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the checkpoint header is not a JSON object")
    return header, data


def _read_checked(path, arrays):
    """:func:`_read` with the checks every reader needs: the file exists, its header
    describes a checkpoint of a version this tinyvgg reads, with a config and weight list."""
    if not os.path.exists(path):
        raise FileNotFoundError(2, f"checkpoint file not found: {path}", path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    header, data = _read(path, arrays)
    version = header.get("version")
    if header.get("format") != FORMAT or not isinstance(version, int):
        raise CheckpointError(f"{path}: the header does not describe a {FORMAT} "
                              f"(format={header.get('format')!r}, version={version!r})")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this "
                              f"tinyvgg reads (up to {VERSION}); upgrade tinyvgg")
    if not isinstance(header.get("config"), dict) or not isinstance(header.get("weights"), list):
        raise CheckpointError(f"{path}: the header lacks the model config or the weight list")
    return header, data


def load_header(path):
    """The header of the checkpoint ``path`` without reading its arrays (fast for a
    500 MB VGG-16): a dict with ``config`` (the :func:`tinyvgg.models.vgg` arguments),
    ``meta`` (a dict, {} when none was saved), ``weights``, ``version``, ``optimizer``.
    Raises what :func:`load` raises for a missing, foreign or damaged file."""
    path = os.fspath(path)
    header, _ = _read_checked(path, arrays=False)
    header["meta"] = header.get("meta") or {}
    return header


def load(path):
    """Read a checkpoint written by :func:`save`; returns a :class:`Checkpoint`.

    The model is rebuilt with ``vgg(**config)`` on the current device and gets
    the saved weights; building it does not disturb the random stream
    (``backend.host_rng()`` is left as it was). Raises ``FileNotFoundError``
    for a missing file and :class:`CheckpointError` (a ``ValueError``) naming
    the file for a truncated, corrupt or foreign one.
    """
    from .models import vgg

    path = os.fspath(path)
    header, data = _read_checked(path, arrays=True)
    version, config, keys = header["version"], header["config"], header["weights"]
    missing = [k for k in keys if f"model/{k}" not in data]
    if missing:
        raise CheckpointError(f"{path}: weights listed in the header are missing from the file: "
                              f"{', '.join(missing)}")
    state = {k: data[f"model/{k}"] for k in keys}

    rng = backend.host_rng()
    rng_state = rng.bit_generator.state
    try:
        # init=None: the saved weights replace whatever is drawn, so skip a second draw.
        model = vgg(**{**config, "init": None})
        model.config["init"] = config.get("init", "paper")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from the saved config "
                              f"{config}: {e}") from None
    finally:
        rng.bit_generator.state = rng_state  # loading must not shift the random stream
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: the saved weights do not fit the saved config: {e}") from None

    optimizer_state = None
    if header.get("optimizer") is not None:
        try:
            optimizer_state = _decode(header["optimizer"], data)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: the optimizer state is damaged "
                                  f"({type(e).__name__}: {e})") from None
    return Checkpoint(model=model, optimizer_state=optimizer_state, meta=header.get("meta") or {},
                      config=config, version=version, path=path, state_dict=state)
