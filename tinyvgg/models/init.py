"""Weight initialisation schemes, and the paper's way to start the deeper nets from A.

Notation: a convolution's weight is (F, C, KH, KW), a linear layer's (out, in).
fan_in = C*KH*KW (or in), fan_out = F*KH*KW (or out).

Schemes (biases are always 0; BatchNorm gets weight 1 and bias 0):

- ``"paper"``: every weight from N(0, 0.01^2), as the paper trains net A.
- ``"glorot"``: Glorot & Bengio (2010) "normalised initialisation", the
  *uniform* version the paper refers to: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
- ``"he"``: as torchvision's VGG: convolutions Kaiming normal, fan-out mode for
  ReLU, std = sqrt(2 / fan_out); linear layers N(0, 0.01^2).

Numbers are drawn on the host from :func:`tinyvgg.backend.host_rng` (layer by
layer, weight after weight, in forward order), cast to the model's dtype and
copied onto the device, so one seed gives the same weights on CPU and GPU.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..layers import BatchNorm2d, Conv2d, Linear

__all__ = ["SCHEMES", "initialize", "init_from"]

SCHEMES = ("paper", "glorot", "he")


def _fans(layer):
    w = layer.params["weight"]
    receptive = math.prod(w.shape[2:]) if w.ndim > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


def _set(target, host):
    host = host.astype(target.dtype, copy=False)
    if isinstance(target, np.ndarray):
        target[...] = host
    else:
        target[...] = backend.to_device(host)


def initialize(model, scheme):
    """Re-initialise every Conv2d, Linear and BatchNorm2d of ``model`` (anything
    with a ``layers`` list) in place with ``scheme`` ("paper", "glorot" or "he").
    Returns ``model``; raises ``ValueError`` for an unknown scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"initialize: unknown scheme {scheme!r}; expected one of {SCHEMES}")
    rng = backend.host_rng()
    for layer in model.layers:
        if isinstance(layer, (Conv2d, Linear)):
            w = layer.params["weight"]
            fan_in, fan_out = _fans(layer)
            if scheme == "paper" or (scheme == "he" and isinstance(layer, Linear)):
                host = rng.normal(0.0, 0.01, size=w.shape)
            elif scheme == "he":
                host = rng.normal(0.0, math.sqrt(2.0 / fan_out), size=w.shape)
            else:
                a = math.sqrt(6.0 / (fan_in + fan_out))
                host = rng.uniform(-a, a, size=w.shape)
            _set(w, host)
            if "bias" in layer.params:
                _set(layer.params["bias"], np.zeros(layer.params["bias"].shape))
        elif isinstance(layer, BatchNorm2d):
            _set(layer.params["weight"], np.ones(layer.num_features))
            _set(layer.params["bias"], np.zeros(layer.num_features))
    return model


# Net A's first four convolutions, as (block, index in block) of Table 1:
# conv3-64 (block 1), conv3-128 (block 2), both conv3-256 (block 3).
_A_FIRST_FOUR = ((1, 1), (2, 1), (3, 1), (3, 2))
_FC = ("classifier.0", "classifier.3", "classifier.6")


def init_from(model, trained_a):
    """Start a deeper net from a trained net A, as the paper does (section 3.1).

    Copies (values, not shared arrays) from ``trained_a`` into ``model``:

    - A's first four convolutional layers, conv3-64, conv3-128 and the two
      conv3-256, into the convolutions at the same places of Table 1 in the
      deeper net (block 1 conv 1, block 2 conv 1, block 3 convs 1 and 2): these
      are the layers whose shapes line up ((64, 3, 3, 3), (128, 64, 3, 3),
      (256, 128, 3, 3), (256, 256, 3, 3) at width 1). When both nets have
      BatchNorm, the BatchNorm after each of those convolutions comes along.
    - the three fully connected layers (classifier.0, .3, .6).

    Everything else keeps its fresh initialisation. Shapes that do not line up
    (another width, hidden size, class count or input size) raise ``ValueError``
    naming every such layer with both shapes; nothing is copied then.
    Returns ``model``.
    """
    pairs = []  # (source layer, target layer, description)
    src_names = dict(zip(trained_a.layer_names, trained_a.layers))
    dst_names = dict(zip(model.layer_names, model.layers))
    problems = []
    for pos in _A_FIRST_FOUR:
        s, d = trained_a.conv_positions.get(pos), model.conv_positions.get(pos)
        if s is None or d is None:
            problems.append(f"Table 1 block {pos[0]} conv {pos[1]} is missing from the "
                            f"{'source' if s is None else 'target'}")
            continue
        pairs.append((src_names[s], dst_names[d], f"{s} -> {d}"))
        s_bn = src_names.get(f"features.{int(s.split('.')[1]) + 1}")
        d_bn = dst_names.get(f"features.{int(d.split('.')[1]) + 1}")
        if isinstance(s_bn, BatchNorm2d) and isinstance(d_bn, BatchNorm2d):
            i, j = int(s.split(".")[1]) + 1, int(d.split(".")[1]) + 1
            pairs.append((s_bn, d_bn, f"features.{i} -> features.{j}"))
    for name in _FC:
        pairs.append((src_names[name], dst_names[name], f"{name} -> {name}"))
    for src, dst, what in pairs:
        for k in list(src.params) + list(src.buffers):
            a = src.params.get(k, src.buffers.get(k))
            b = dst.params.get(k, dst.buffers.get(k))
            if b is None:
                problems.append(f"{what}.{k}: missing in the target")
            elif tuple(a.shape) != tuple(b.shape):
                problems.append(f"{what}.{k}: source shape {tuple(a.shape)}, target shape "
                                f"{tuple(b.shape)}")
    if problems:
        raise ValueError("init_from: the trained net does not line up with the deeper net: "
                         + "; ".join(problems))
    for src, dst, _ in pairs:
        for d_src, d_dst in ((src.params, dst.params), (src.buffers, dst.buffers)):
            for k, a in d_src.items():
                _set(d_dst[k], np.asarray(backend.to_host(a)))
    return model
