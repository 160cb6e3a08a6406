"""Conversion between torchvision's VGG weights (``.pth``) and tinyvgg checkpoints (``.npz``).

tinyvgg's state-dict keys are torchvision's (``features.0.weight``, ...,
``classifier.6.bias``; see :mod:`tinyvgg.models.vgg`), so converting is a
matter of reading one container and writing the other. PyTorch is imported
only inside :func:`torch_to_tinyvgg` and :func:`tinyvgg_to_torch`; the rest of
tinyvgg never needs it.

Inferring the architecture from a state dict (:func:`infer_config`)
--------------------------------------------------------------------
In torchvision's ``features`` every module takes an index: conv, [bn], relu
per convolution (2 or 3 indices), one per max-pool (and one for A-LRN's LRN).
Parameters exist only for conv (and bn), so the gaps between consecutive conv
indices give the blocks: a gap of 2 (3 with BN) stays in the block, one more
crosses a max-pool, two more cross LRN and max-pool. The blocks and kernel
sizes pick the column of Table 1, the channel counts the width, the
classifier the hidden size and class count, and its input size d = C (s/32)^2
the input size s (224 for every torchvision model).

Limits: torchvision has configurations A, B, D and E (with and without BN).
Checkpoints of A-LRN and C convert to ``.pth`` files that torchvision's
classes cannot load (no such architecture there), and a model trained at an
input size other than 224 has a classifier torchvision's (7x7 avgpool) VGG
does not fit.
"""

from __future__ import annotations

import os
import re

import numpy as np

from .fileio import atomic_open

from .models.vgg import CONFIGS, _CONV_RE, _LETTER_TO_NAME, resolve_name

__all__ = ["infer_config", "torch_to_tinyvgg", "tinyvgg_to_torch", "convert",
           "PickledObjectsError", "IMAGENET_MEAN", "IMAGENET_STD"]

# torchvision's transforms.Normalize for its ImageNet models, in its [0, 1] units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Wrappers whose prefix a saved state dict's keys carry: DataParallel/DDP, torch.compile.
_KEY_PREFIXES = ("module.", "_orig_mod.")
# Where training scripts commonly keep the weights inside a saved dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")


class PickledObjectsError(ValueError):
    """A ``.pth`` that holds Python objects beyond tensors, refused unless trusted."""


_FEAT_RE = re.compile(r"^features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _import_torch(what):
    try:
        import torch  # noqa: F401  (only here: the rest of tinyvgg never needs PyTorch)
    except ImportError as e:
        raise ImportError(f"{what} reads/writes PyTorch .pth files and needs PyTorch, which is not "
                          f"installed. Install it with 'pip install torch' (CPU-only wheel: "
                          f"'pip install torch --index-url https://download.pytorch.org/whl/cpu'). "
                          f"(ImportError: {e})") from None
    return torch


def _pattern(letter):
    """Table 1 column as (blocks of (kernel, base channels), has_lrn)."""
    blocks = []
    for block in CONFIGS[letter]:
        blocks.append([(int(m.group(1)), int(m.group(2))) for m in map(_CONV_RE.match, block) if m])
    return blocks, any("LRN" in b for b in CONFIGS[letter])


def _infer_width(pairs):
    """A width w with max(1, round(base * w)) == n for every (base, n); None if none."""
    def fits(w):
        return all(max(1, int(round(b * w))) == n for b, n in pairs)
    candidates = [n / b for b, n in pairs]
    lo = max((n - 0.5) / b for b, n in pairs)
    hi = min((n + 0.5) / b for b, n in pairs)
    candidates.append((lo + hi) / 2)
    for w in candidates:
        if w > 0 and fits(w):
            return float(w)
    return None


def infer_config(state_dict):
    """The :func:`tinyvgg.models.vgg` arguments of a VGG state dict.

    ``state_dict``: {torchvision key: array} (anything with ``.shape``). Returns
    ``{"name", "num_classes", "input_size", "width", "batch_norm", "hidden"}`` so
    that ``vgg(**infer_config(sd))`` has exactly the keys and shapes of ``sd``.
    Raises ``ValueError`` saying what does not look like a VGG.
    """
    shapes = {_strip_prefixes(k): tuple(np.shape(v)) for k, v in state_dict.items()}
    convs = sorted(int(m.group(1)) for k in shapes if (m := _FEAT_RE.match(k))
                   and m.group(2) == "weight" and len(shapes[k]) == 4)
    if not convs:
        raise ValueError("infer_config: no convolution weights 'features.<i>.weight' of 4 axes: "
                         "not a VGG state dict")
    bn = any(k.startswith("features.") and k.endswith(".running_mean") for k in shapes)
    per = 3 if bn else 2  # conv, [bn], relu
    if convs[0] != 0:
        raise ValueError(f"infer_config: the first convolution is features.{convs[0]}, expected features.0")
    blocks, lrn, gaps = [[convs[0]]], False, []
    for a, b in zip(convs, convs[1:]):
        gap = b - a
        gaps.append(gap)
        if gap == per:
            blocks[-1].append(b)
        elif gap == per + 1:
            blocks.append([b])
        elif gap == per + 2 and len(blocks) == 1 and len(blocks[0]) == 1 and not lrn:
            lrn = True  # conv, [bn], relu, LRN, maxpool: A-LRN's first block
            blocks.append([b])
        else:
            raise ValueError(f"infer_config: features.{a} and features.{b} are {gap} modules apart; "
                             f"a VGG with{'' if bn else 'out'} BatchNorm has {per} (same block) or "
                             f"{per + 1} (across a max-pool)")
    found = [[(shapes[f"features.{i}.weight"][2], shapes[f"features.{i}.weight"][0]) for i in blk]
             for blk in blocks]
    letter = None
    for cand in CONFIGS:
        pat, has_lrn = _pattern(cand)
        if has_lrn == lrn and [[k for k, _ in b] for b in pat] == [[k for k, _ in b] for b in found]:
            letter = cand
            break
    if letter is None:
        raise ValueError(f"infer_config: convolutions per block {[len(b) for b in found]} with "
                         f"kernels {[[k for k, _ in b] for b in found]}"
                         f"{' and LRN' if lrn else ''} match no column of Table 1")
    pat, _ = _pattern(letter)
    pairs = [(base, n) for pb, fb in zip(pat, found) for (_, base), (_, n) in zip(pb, fb)]
    width = _infer_width(pairs)
    if width is None:
        raise ValueError(f"infer_config: channel counts {[n for _, n in pairs]} are not Table 1's "
                         f"{[b for b, _ in pairs]} scaled by one width")
    # Each conv's input channels must be the previous conv's output channels.
    in_channels = c = shapes["features.0.weight"][1]
    for blk in blocks:
        for i in blk:
            s = shapes[f"features.{i}.weight"]
            if s[1] != c:
                raise ValueError(f"infer_config: features.{i}.weight {s} takes {s[1]} input channels, "
                                 f"the previous layer gives {c}")
            c = s[0]
    try:
        hidden, d = shapes["classifier.0.weight"]
        num_classes, hidden2 = shapes["classifier.6.weight"]
    except (KeyError, ValueError):
        raise ValueError("infer_config: classifier.0.weight and classifier.6.weight (2-D) are needed "
                         "to know the hidden size and the number of classes") from None
    if hidden2 != hidden or shapes.get("classifier.3.weight") != (hidden, hidden):
        raise ValueError(f"infer_config: classifier shapes do not chain: classifier.0.weight "
                         f"{(hidden, d)}, classifier.3.weight {shapes.get('classifier.3.weight')}, "
                         f"classifier.6.weight {(num_classes, hidden2)}")
    positions = d / c
    side = int(round(positions ** 0.5))
    if d % c != 0 or side * side * c != d or side < 1:
        raise ValueError(f"infer_config: classifier.0 reads {d} values, which is not {c} channels "
                         f"times a square number of positions")
    out = dict(name=_LETTER_TO_NAME[letter], num_classes=int(num_classes), input_size=32 * side,
               width=width, batch_norm=bn, hidden=int(hidden))
    if in_channels != 3:
        out["in_channels"] = int(in_channels)
    return out


def _strip_prefixes(key):
    """``module.features.0.weight`` (DataParallel) or ``_orig_mod.`` (torch.compile) ->
    ``features.0.weight``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _is_array(v):
    """A tensor or array (what a state dict holds)."""
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _find_state_dict(obj, path, where="the file"):
    """The {key: tensor} dict inside what torch.load returned: the dict itself, a
    pickled module's ``state_dict()``, or a wrapped one (``{"state_dict": ...}``,
    ``{"model": module}``, ...). Raises ValueError naming the file and what it holds."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, dict):
        return obj.state_dict()  # a pickled nn.Module
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors) in {where}, got "
                         f"{type(obj).__name__}")
    if obj and all(_is_array(v) for v in obj.values()):
        return obj
    for key in _STATE_DICT_KEYS:  # a training checkpoint that wraps the weights
        if key in obj and (isinstance(obj[key], dict) or hasattr(obj[key], "state_dict")):
            return _find_state_dict(obj[key], path, f"its entry {key!r}")
    keys = list(obj)
    raise ValueError(f"{path}: {where} is a dict with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}, "
                     f"neither a state dict (tensors only) nor one under "
                     f"{', '.join(repr(k) for k in _STATE_DICT_KEYS)}; save the weights alone with "
                     f"torch.save(model.state_dict(), 'weights.pth')")


def _tensor_dict_to_numpy(obj, path):
    out = {}
    for k, v in _find_state_dict(obj, path).items():
        if hasattr(v, "detach"):  # a torch tensor
            v = v.detach().cpu()
            try:
                v = v.numpy()
            except TypeError:  # bfloat16 (and float8) have no NumPy dtype: widen to float32
                v = v.float().numpy()
        out[_strip_prefixes(k)] = np.asarray(v)
    return out


def _torch_load(torch, path, allow_pickle):
    """torch.load of ``path``: tensors only unless ``allow_pickle``; errors as one clear
    ValueError naming the file (PyTorch's own is a 25-line traceback)."""
    import inspect
    import pickle

    if "weights_only" not in inspect.signature(torch.load).parameters and not allow_pickle:
        raise ValueError(f"{path}: this PyTorch ({torch.__version__}) cannot load tensors without "
                         f"full unpickling; upgrade PyTorch (>= 1.13), or pass --allow-pickle if "
                         f"you trust the file")
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only" not in text.lower() and "weights_only" not in text:
            raise ValueError(f"{path}: not a readable PyTorch file ({text.splitlines()[0]})") from None
        found = re.findall(r"GLOBAL ([\w.]+)", text)
        what = f" (it pickles {found[0]})" if found else ""
        raise PickledObjectsError(
            f"{path}: the file holds Python objects beyond tensors{what}, which are not loaded by "
            f"default because unpickling them can run any code. Save only the weights: "
            f"torch.save(model.state_dict(), 'weights.pth') (or torch.save(ckpt['state_dict'], ...)); "
            f"or, if you trust this file, convert with --allow-pickle "
            f"(torch_to_tinyvgg(..., allow_pickle=True))") from None
    except (ModuleNotFoundError, AttributeError) as e:
        # Full unpickling of a whole module needs the code of its classes.
        raise ValueError(f"{path}: the file pickles objects whose code is not importable here "
                         f"({type(e).__name__}: {e}); install the package that defines them, "
                         f"or save only model.state_dict() where they are") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # PyTorch raises many types for a file that is not its format
        raise ValueError(f"{path}: not a readable PyTorch file: truncated or corrupt "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _preprocessing(config, mean, std, resize):
    """The checkpoint metadata for a torchvision-layout network: ``mean``/``std`` in
    torchvision's [0, 1] units (default ImageNet's), stored in tinyvgg's [0, 255] ones,
    ``input_size`` and ``resize`` (default 256/224 of it, torchvision's resize-then-crop)."""
    channels = config.get("in_channels", 3)
    meta = dict(input_size=config["input_size"])
    meta["resize"] = int(resize) if resize is not None else int(round(config["input_size"] * 256 / 224))
    if meta["resize"] < config["input_size"]:
        raise ValueError(f"resize (--resize) {meta['resize']} is smaller than the input size "
                         f"{config['input_size']}: the centre crop would not fit")
    if mean is None and std is None and channels != 3:
        import warnings
        warnings.warn(f"the network takes {channels} channel(s); ImageNet's statistics are for RGB, "
                      f"so no normalisation is recorded: give --mean and --std", stacklevel=3)
        return meta
    for what, values, default in (("mean", mean, IMAGENET_MEAN), ("std", std, IMAGENET_STD)):
        values = [float(v) for v in (default if values is None else values)]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise ValueError(f"{what} (--{what}) has {len(values)} values; the network takes "
                             f"{channels} channel(s): give {channels} (or one)")
        if what == "std" and not all(v > 0 for v in values):
            raise ValueError(f"std (--std) must be positive, got {values}")
        meta[what] = [v * 255 for v in values]  # torchvision's [0, 1] units -> tinyvgg's [0, 255]
    return meta


def torch_to_tinyvgg(pth_path, out_npz, name=None, *, mean=None, std=None, resize=None,
                     allow_pickle=False):
    """Convert a torchvision-layout VGG state dict (``.pth``) into a tinyvgg checkpoint.

    The architecture is inferred (:func:`infer_config`); ``name`` (e.g. "vgg16_bn"),
    when given, must agree with it. The preprocessing the network expects is recorded
    for ``predict``/``evaluate``: ``mean`` and ``std`` per channel in torchvision's
    [0, 1] units (as given to ``transforms.Normalize``; default ImageNet's, which every
    torchvision model and most fine-tuned ones use; ``mean=(0,) std=(1,)`` for a network
    fed ``ToTensor()`` output alone), and ``resize``, the shorter side before the centre
    crop (default 256 for 224). Class names are ImageNet's for 1000 classes when
    torchvision is installed. BatchNorm ``num_batches_tracked`` may be missing (older files).

    ``allow_pickle``: the file may hold Python objects beyond tensors (an
    ``argparse.Namespace``, a whole ``nn.Module``): load it with full unpickling, which
    can run code; only for files you trust. Without it such a file raises
    :class:`PickledObjectsError` (a ValueError) saying so. Returns ``out_npz``.
    """
    torch = _import_torch("torch_to_tinyvgg")
    from . import checkpoint
    from .models import vgg

    pth_path = os.fspath(pth_path)
    if not os.path.isfile(pth_path):
        raise FileNotFoundError(2, f"{pth_path}: no such file", pth_path)
    obj = _torch_load(torch, pth_path, allow_pickle)
    sd = _tensor_dict_to_numpy(obj, pth_path)
    config = infer_config(sd)
    if name is not None:
        letter, bn = resolve_name(name)
        if _LETTER_TO_NAME[letter] != config["name"] or bn != config["batch_norm"]:
            raise ValueError(f"torch_to_tinyvgg: {pth_path} holds a {config['name']}"
                             f"{'_bn' if config['batch_norm'] else ''}, not a {name}")
    meta = dict(source=os.path.basename(pth_path), converted_from="torchvision")
    meta.update(_preprocessing(config, mean, std, resize))
    model = vgg(**config, init=None)  # the loaded weights replace any draw: skip a second one
    model.load_state_dict(sd, strict=True)
    if config["num_classes"] == 1000:
        meta["classes"] = _imagenet_categories()
    return checkpoint.save(out_npz, model, **meta)


def _imagenet_categories():
    """The 1000 ImageNet class names when torchvision is installed, else None
    (``predict`` then prints class indices)."""
    try:
        from torchvision.models import VGG16_Weights
        return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # torchvision missing or incompatible: names are optional
        return None


def tinyvgg_to_torch(npz_path, out_pth):
    """Write the weights of a tinyvgg checkpoint as a PyTorch state dict (``.pth``),
    loadable with ``torchvision.models.vgg16().load_state_dict(torch.load(out_pth))``
    (for configurations A, B, D, E at input size 224). Returns ``out_pth``."""
    torch = _import_torch("tinyvgg_to_torch")
    from . import checkpoint

    ck = checkpoint.load(npz_path)
    # np.ascontiguousarray would turn num_batches_tracked's 0-d array into shape (1,).
    sd = {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in ck.state_dict.items()}
    out_pth = os.fspath(out_pth)
    with atomic_open(out_pth) as f:
        torch.save(sd, f)
    return out_pth


def convert(src, dst, name=None, **options):
    """Convert by extension: ``.pth``/``.pt`` -> tinyvgg ``.npz`` (``options``: the
    keyword arguments of :func:`torch_to_tinyvgg`: mean, std, resize, allow_pickle),
    ``.npz`` -> ``.pth``. Returns ``dst``. Raises ``ValueError`` for any other extension,
    and for a ``dst`` whose extension is not the other format's (``a.npz`` -> ``b.npz``
    would write a PyTorch file under a tinyvgg name)."""
    ext = os.path.splitext(os.fspath(src))[1].lower()
    dst_ext = os.path.splitext(os.fspath(dst))[1].lower()
    want = {".pth": (".npz",), ".pt": (".npz",), ".npz": (".pth", ".pt")}.get(ext)
    if want is not None and dst_ext not in want:
        raise ValueError(f"convert: {src} is a {'tinyvgg' if ext == '.npz' else 'PyTorch'} file, so "
                         f"the output is a {'PyTorch' if ext == '.npz' else 'tinyvgg'} one: give an "
                         f"output name ending in {' or '.join(want)}, got {os.fspath(dst)!r}")
    if ext in (".pth", ".pt"):
        return torch_to_tinyvgg(src, dst, name=name, **options)
    if ext == ".npz":
        given = [k for k, v in options.items() if v not in (None, False)]
        if given:
            raise ValueError(f"convert: {', '.join('--' + k.replace('_', '-') for k in given)} apply to "
                             f".pth -> .npz conversion only; {src} is a tinyvgg .npz")
        return tinyvgg_to_torch(src, dst)
    raise ValueError(f"convert: cannot tell the direction from {src!r}: expected a .pth/.pt "
                     f"(PyTorch -> tinyvgg .npz) or a .npz (tinyvgg -> PyTorch .pth) source")
