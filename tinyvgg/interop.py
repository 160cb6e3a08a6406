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

__all__ = ["infer_config", "torch_to_tinyvgg", "tinyvgg_to_torch", "convert", "main"]

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
    shapes = {(k[len("module."):] if k.startswith("module.") else k): tuple(np.shape(v))
              for k, v in state_dict.items()}
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


def _tensor_dict_to_numpy(obj, path):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()  # a pickled nn.Module
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k  # DataParallel prefix
        out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return out


def torch_to_tinyvgg(pth_path, out_npz, name=None):
    """Convert a torchvision VGG state dict (``.pth``) into a tinyvgg checkpoint.

    The architecture is inferred (:func:`infer_config`); ``name`` (e.g. "vgg16_bn"),
    when given, must agree with it. Returns ``out_npz``.
    """
    torch = _import_torch("torch_to_tinyvgg")
    from . import checkpoint
    from .models import vgg

    pth_path = os.fspath(pth_path)
    try:
        obj = torch.load(pth_path, map_location="cpu", weights_only=True)
    except TypeError:  # PyTorch < 1.13 has no weights_only
        obj = torch.load(pth_path, map_location="cpu")
    sd = _tensor_dict_to_numpy(obj, pth_path)
    config = infer_config(sd)
    if name is not None:
        letter, bn = resolve_name(name)
        if _LETTER_TO_NAME[letter] != config["name"] or bn != config["batch_norm"]:
            raise ValueError(f"torch_to_tinyvgg: {pth_path} holds a {config['name']}"
                             f"{'_bn' if config['batch_norm'] else ''}, not a {name}")
    model = vgg(**config)
    model.load_state_dict(sd, strict=True)
    meta = dict(source=os.path.basename(pth_path), converted_from="torchvision")
    if config["num_classes"] == 1000 and config["input_size"] == 224:
        # torchvision's ImageNet preprocessing, in tinyvgg's [0, 255] units: resize the
        # shorter side to 256, centre-crop 224, subtract the mean, divide by the std.
        meta.update(mean=[0.485 * 255, 0.456 * 255, 0.406 * 255], std=[0.229 * 255, 0.224 * 255, 0.225 * 255],
                    input_size=224, resize=256, classes=_imagenet_categories())
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


def convert(src, dst, name=None):
    """Convert by extension: ``.pth``/``.pt`` -> tinyvgg ``.npz``, ``.npz`` -> ``.pth``.
    Returns ``dst``. Raises ``ValueError`` for any other extension."""
    ext = os.path.splitext(os.fspath(src))[1].lower()
    if ext in (".pth", ".pt"):
        return torch_to_tinyvgg(src, dst, name=name)
    if ext == ".npz":
        return tinyvgg_to_torch(src, dst)
    raise ValueError(f"convert: cannot tell the direction from {src!r}: expected a .pth/.pt "
                     f"(PyTorch -> tinyvgg .npz) or a .npz (tinyvgg -> PyTorch .pth) source")


def main(argv=None):
    """``convert SRC DST [--name NAME]`` as a command line; returns the exit status."""
    import argparse

    p = argparse.ArgumentParser(prog="tinyvgg convert",
                                description="Convert VGG weights between torchvision .pth and tinyvgg .npz")
    p.add_argument("src", help=".pth/.pt (torchvision state dict) or .npz (tinyvgg checkpoint)")
    p.add_argument("dst", help="output file")
    p.add_argument("--name", default=None, help="expected architecture, e.g. vgg16_bn (checked)")
    args = p.parse_args(argv)
    out = convert(args.src, args.dst, name=args.name)
    print(f"wrote {out}")
    return 0
