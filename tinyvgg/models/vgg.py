"""The six VGG configurations of Table 1 (Simonyan & Zisserman, 2014) as models,
and the shallow 5x5 variant of B that section 4.1 compares them with.

Notation
--------
N  batch        K  classes        s  input size (square images, s x s, s % 32 == 0)
w  width multiplier: every channel count c of Table 1 becomes max(1, round(c * w))
d  classifier input = round(512 w) * (s / 32)^2        hidden  width of fc6 and fc7

Table 1 in code
---------------
:data:`CONFIGS` maps a configuration letter to its five blocks, written as the
paper writes them: ``"conv3-64"`` is a 3x3 convolution with 64 output channels
(stride 1, padding 1, so the spatial size is kept), ``"conv1-256"`` a 1x1
convolution (configuration C), ``"conv5-64"`` a 5x5 convolution (padding 2),
``"LRN"`` local response normalisation (A-LRN) and ``"maxpool"`` a 2x2 max-pool
of stride 2.

``"B-5x5"`` (name ``vgg13_5x5``) is not a column of Table 1: it is the "shallow
net" of section 4.1, configuration B with each pair of 3x3 convolutions replaced
by one 5x5 convolution (the same receptive field, half the non-linearities, more
weights: 134,503,528 parameters at 224 pixels against B's 133,047,848). The paper
reports its top-1 error 7% higher than B's (single-scale, ILSVRC validation).

Every convolution is followed by a ReLU (by BatchNorm2d and then ReLU with
``batch_norm=True``, as torchvision).
After the five blocks the classifier is Flatten, Linear(d, hidden), ReLU,
Dropout, Linear(hidden, hidden), ReLU, Dropout, Linear(hidden, K).

Names
-----
Layers are named as the modules of torchvision's ``VGG``: ``features.i`` with i
counting every module of the feature extractor (conv, [bn], relu, ..., maxpool;
A-LRN's LRN is a module too), then ``classifier.0`` ... ``classifier.6``. So
``state_dict()`` keys are torchvision's (``features.0.weight``,
``classifier.6.bias``, ...). torchvision also has an ``avgpool``
(AdaptiveAvgPool2d(7)) between the two; it has no parameters and is the
identity at input 224. tinyvgg has no such layer: the classifier reads the
d = 512 w (s/32)^2 values of the last feature map directly (the ``flatten``
layer, which takes no torchvision index).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np

from .. import backend
from ..layers import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, LocalResponseNorm,
                      MaxPool2d, ReLU, ShapeError)

__all__ = ["CONFIGS", "NAMES", "vgg", "VGG", "FullyConvolutionalVGG", "count_params",
           "resolve_name", "StateDictError", "hidden_width", "DEFAULT_INIT"]

# The initialisation ``vgg()`` uses when none is named: Glorot's, which the paper
# (section 3.1) notes trains the nets without pre-training from A; it also trains the
# narrow nets tinyvgg runs, which N(0, 0.01^2) starves. ``init="paper"`` is the
# paper's N(0, 0.01^2) for configuration A. The command line's ``--init`` default is
# the same, so ``vgg(name, width=w)`` and ``train --width w`` build the same network.
DEFAULT_INIT = "glorot"


def hidden_width(width):
    """The width of fc6 and fc7 when none is given: 4096 (Table 1) scaled with the
    width multiplier, at least 16: ``max(16, round(4096 * width))`` (4096 at width 1,
    1024 at 1/4, 256 at 1/16). The one rule: :func:`vgg`, :func:`count_params`, the
    trainer and the benchmarks all use it."""
    return max(16, int(round(4096 * float(width))))


# Table 1 of the paper, one list per block; each block ends with its max-pool.
CONFIGS = {
    "A": [
        ["conv3-64", "maxpool"],
        ["conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
    ],
    "A-LRN": [
        ["conv3-64", "LRN", "maxpool"],
        ["conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
    ],
    "B": [
        ["conv3-64", "conv3-64", "maxpool"],
        ["conv3-128", "conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
        ["conv3-512", "conv3-512", "maxpool"],
    ],
    "C": [
        ["conv3-64", "conv3-64", "maxpool"],
        ["conv3-128", "conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "conv1-256", "maxpool"],
        ["conv3-512", "conv3-512", "conv1-512", "maxpool"],
        ["conv3-512", "conv3-512", "conv1-512", "maxpool"],
    ],
    "D": [
        ["conv3-64", "conv3-64", "maxpool"],
        ["conv3-128", "conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "conv3-256", "maxpool"],
        ["conv3-512", "conv3-512", "conv3-512", "maxpool"],
        ["conv3-512", "conv3-512", "conv3-512", "maxpool"],
    ],
    "E": [
        ["conv3-64", "conv3-64", "maxpool"],
        ["conv3-128", "conv3-128", "maxpool"],
        ["conv3-256", "conv3-256", "conv3-256", "conv3-256", "maxpool"],
        ["conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool"],
        ["conv3-512", "conv3-512", "conv3-512", "conv3-512", "maxpool"],
    ],
    # Section 4.1's shallow variant of B: each pair of 3x3 convolutions is one 5x5.
    "B-5x5": [
        ["conv5-64", "maxpool"],
        ["conv5-128", "maxpool"],
        ["conv5-256", "maxpool"],
        ["conv5-512", "maxpool"],
        ["conv5-512", "maxpool"],
    ],
}

# torchvision-style names of the configurations (C and A-LRN are not in torchvision).
NAMES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_1x1": "C", "vgg16": "D",
         "vgg19": "E", "vgg13_5x5": "B-5x5"}
_LETTER_TO_NAME = {v: k for k, v in NAMES.items()}
_LRN_ARGS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
_CONV_RE = re.compile(r"^conv(\d+)-(\d+)$")


class StateDictError(KeyError, ValueError):
    """A state dict that does not fit the model. Both a ``KeyError`` (missing or
    unexpected keys) and a ``ValueError`` (wrong shapes); the message names every
    offending key at once."""

    def __str__(self):  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def _valid_names():
    names = list(NAMES) + [n + "_bn" for n in NAMES] + list(CONFIGS)
    return ", ".join(repr(n) for n in names)


def resolve_name(name, batch_norm=False):
    """``name`` -> ``(letter, batch_norm)``.

    Accepts the torchvision-style names (``"vgg16"``), the letters of Table 1
    (``"D"``, ``"A-LRN"``) and either with a ``"_bn"`` suffix, which turns
    ``batch_norm`` on. Unknown names raise ``ValueError`` listing the valid ones.
    """
    if not isinstance(name, str):
        raise ValueError(f"vgg: name must be a string, got {name!r}; valid names: {_valid_names()}")
    base = name.strip()
    bn = bool(batch_norm)
    if base.lower().endswith(("_bn", "-bn")):
        base, bn = base[:-3], True
    if base.lower() in NAMES:
        return NAMES[base.lower()], bn
    letters = {k.upper(): k for k in CONFIGS}  # "a-lrn" -> "A-LRN", "b-5X5" -> "B-5x5"
    letter = letters.get(base.upper().replace("_", "-"))
    if letter is not None:
        return letter, bn
    raise ValueError(f"vgg: unknown configuration {name!r}; valid names: {_valid_names()}")


def _scale(c, width):
    return max(1, int(round(c * width)))


def _check_args(input_size, num_classes, width, hidden, dropout):
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) \
            or input_size < 32 or input_size % 32 != 0:
        raise ValueError(f"vgg: input_size must be an integer multiple of 32 and at least 32 "
                         f"(five 2x2 max-pools halve it five times), got {input_size!r}")
    for what, v in (("num_classes", num_classes), ("hidden", hidden)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"vgg: {what} must be a positive integer, got {v!r}")
    if not (isinstance(width, (int, float, np.floating, np.integer)) and width > 0
            and math.isfinite(width)):
        raise ValueError(f"vgg: width must be a positive number, got {width!r}")
    if not 0.0 <= float(dropout) <= 1.0:
        raise ValueError(f"vgg: dropout must be in [0, 1], got {dropout!r}")


def _plan(letter, num_classes, input_size, width, batch_norm, hidden, dropout, in_channels=3):
    """The layer list of a configuration, without arrays: ``[(name, kind, args)]``.

    ``kind`` is one of conv, bn, relu, lrn, maxpool, flatten, linear, dropout; a
    conv's args include ``position`` = (block, index in block), both from 1.
    Shared by :func:`vgg` (which builds the layers) and :func:`count_params`.
    """
    plan, i, c = [], 0, in_channels
    for b, block in enumerate(CONFIGS[letter], start=1):
        j = 0
        for entry in block:
            m = _CONV_RE.match(entry)
            if m:
                k, f = int(m.group(1)), _scale(int(m.group(2)), width)
                j += 1
                plan.append((f"features.{i}", "conv", dict(in_channels=c, out_channels=f,
                                                           kernel_size=k, padding=k // 2,
                                                           position=(b, j))))
                i += 1
                if batch_norm:
                    plan.append((f"features.{i}", "bn", dict(num_features=f)))
                    i += 1
                plan.append((f"features.{i}", "relu", {}))
                i += 1
                c = f
            elif entry == "LRN":
                plan.append((f"features.{i}", "lrn", dict(_LRN_ARGS)))
                i += 1
            elif entry == "maxpool":
                plan.append((f"features.{i}", "maxpool", dict(kernel_size=2, stride=2)))
                i += 1
            else:  # pragma: no cover - the table above is fixed
                raise AssertionError(f"bad Table 1 entry {entry!r}")
    d = c * (input_size // 32) ** 2
    plan.append(("flatten", "flatten", {}))
    plan += [("classifier.0", "linear", dict(in_features=d, out_features=hidden)),
             ("classifier.1", "relu", {}),
             ("classifier.2", "dropout", dict(p=float(dropout))),
             ("classifier.3", "linear", dict(in_features=hidden, out_features=hidden)),
             ("classifier.4", "relu", {}),
             ("classifier.5", "dropout", dict(p=float(dropout))),
             ("classifier.6", "linear", dict(in_features=hidden, out_features=num_classes))]
    return plan


def count_params(name, num_classes=1000, input_size=224, width=1.0, batch_norm=False, hidden=None,
                 in_channels=3):
    """Number of learnable scalars of ``vgg(name, ...)``, computed from the layer
    table without allocating any array (a full VGG-16 holds 138M of them).
    ``hidden=None``: :func:`hidden_width` (width).

    Conv: F*C*KH*KW + F; BatchNorm: 2*C (gamma, beta; running statistics are
    not parameters); Linear: in*out + out.
    """
    letter, bn = resolve_name(name, batch_norm)
    hidden = hidden_width(width) if hidden is None else hidden
    _check_args(input_size, num_classes, width, hidden, 0.0)
    total = 0
    for _, kind, a in _plan(letter, num_classes, input_size, width, bn, hidden, 0.0, int(in_channels)):
        if kind == "conv":
            total += a["out_channels"] * (a["in_channels"] * a["kernel_size"] ** 2 + 1)
        elif kind == "bn":
            total += 2 * a["num_features"]
        elif kind == "linear":
            total += a["out_features"] * (a["in_features"] + 1)
    return total


def _build_layer(kind, args, dtype):
    if kind == "conv":
        a = {k: v for k, v in args.items() if k != "position"}
        return Conv2d(dtype=dtype, **a)
    if kind == "bn":
        return BatchNorm2d(dtype=dtype, **args)
    if kind == "linear":
        return Linear(dtype=dtype, **args)
    if kind == "relu":  # in place, as torchvision's VGG: nothing before a ReLU keeps its output
        return ReLU(inplace=True, **args)
    return {"lrn": LocalResponseNorm, "maxpool": MaxPool2d, "flatten": Flatten,
            "dropout": Dropout}[kind](**args)


def vgg(name, num_classes=1000, input_size=224, width=1.0, batch_norm=False, hidden=None,
        dropout=0.5, init=DEFAULT_INIT, dtype=np.float32, in_channels=3):
    """Build a VGG of Table 1 on the current device.

    ``name``: "vgg11" (A), "vgg11_lrn" (A-LRN), "vgg13" (B), "vgg13_5x5" (B-5x5), "vgg16_1x1" (C),
    "vgg16" (D), "vgg19" (E), or the letters; a "_bn" suffix or
    ``batch_norm=True`` adds BatchNorm2d after every convolution (before the ReLU).
    The model maps x (N, C, s, s) to logits (N, num_classes), s = ``input_size``,
    C = ``in_channels`` (3, as in the paper; 1 for grayscale data such as Fashion-MNIST).
    ``width`` scales every channel count; ``hidden`` is the width of fc6 and fc7,
    default :func:`hidden_width` (width) (4096 at width 1: Table 2's counts).
    ``init``: "glorot" (the default, :data:`DEFAULT_INIT`, as the command line),
    "paper" (N(0, 0.01^2), zero biases), "he" (see
    :func:`tinyvgg.models.init.initialize`) or None (keep what the layer
    constructors drew, which is the paper's scheme). ``dropout`` (0.5, the paper's)
    is a training setting and adds no parameter. Raises ``ValueError`` for
    an unknown name or scheme and for an input size that is not a multiple of 32.
    """
    letter, bn = resolve_name(name, batch_norm)
    hidden = hidden_width(width) if hidden is None else hidden
    _check_args(input_size, num_classes, width, hidden, dropout)
    if int(in_channels) != in_channels or in_channels < 1:
        raise ValueError(f"vgg: in_channels must be a positive integer, got {in_channels!r}")
    if init is not None and init not in ("paper", "glorot", "he"):
        from .init import SCHEMES
        raise ValueError(f"vgg: unknown init scheme {init!r}; expected one of {SCHEMES} or None")
    dtype = np.dtype(dtype)
    config = dict(name=_LETTER_TO_NAME[letter], num_classes=int(num_classes),
                  input_size=int(input_size), width=float(width), batch_norm=bn,
                  hidden=int(hidden), dropout=float(dropout), init=init, dtype=dtype.name,
                  in_channels=int(in_channels))
    plan = _plan(letter, config["num_classes"], config["input_size"], config["width"], bn,
                 config["hidden"], config["dropout"], config["in_channels"])
    model = VGG(plan, config, letter)
    # The layer constructors already draw N(0, 0.01^2) weights and zero biases from
    # backend.host_rng() in layer order, which is exactly the paper's scheme:
    # drawing all 138M numbers a second time would only cost time.
    if init not in (None, "paper"):
        from .init import initialize
        initialize(model, init)
    return model


def _host_copy(a):
    """A host copy of ``a`` that does not alias it."""
    h = backend.to_host(a)  # a fresh host array for device arrays, ``a`` itself for host ones
    return np.array(h, copy=True) if h is a else h


def _assign(target, host_values):
    """Copy host values into an existing parameter array in place (views of it,
    such as the fully convolutional network's, keep seeing the values)."""
    if isinstance(target, np.ndarray):
        target[...] = host_values
    else:
        target[...] = backend.to_device(host_values)


class _Sequential:
    """Shared code of :class:`VGG` and :class:`FullyConvolutionalVGG`: named layers
    run one after the other."""

    layers: list
    layer_names: list

    _hooks = ()  # the observers added with add_hook (an instance list once one is added)

    def __call__(self, x, train=False):
        return self.forward(x, train=train)

    def _run(self, x, train):
        if not self._hooks:  # nobody watching: the plain loop
            for layer in self.layers:
                x = layer.forward(x, train=train)
            return x
        for name, layer in zip(self.layer_names, self.layers):
            x = layer.forward(x, train=train)
            for h in self._hooks:
                if hasattr(h, "after_forward"):
                    h.after_forward(name, layer, x, train)
        return x

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dy`` (the output's shape) through every layer; each
        layer stores its parameter gradients in ``layer.grads``. Returns dx, the
        gradient of the input (N, C, H, W); ``input_grad=False`` skips it (None
        is returned), which saves the first convolution's dx, a training step's
        largest col2im."""
        last = len(self.layers) - 1
        for i, (name, layer) in enumerate(zip(reversed(self.layer_names), reversed(self.layers))):
            for h in self._hooks:
                if hasattr(h, "before_backward"):
                    h.before_backward(name, layer, dy)
            if i == last and not input_grad and isinstance(layer, Conv2d):
                layer.backward(dy, input_grad=False)
                return None
            dy = layer.backward(dy)
        return dy

    # -- observing and extending the layers ----------------------------------
    def add_hook(self, hook):
        """Observe every layer of the passes through the model: ``hook`` is an
        object with either or both of ``after_forward(name, layer, y, train)``
        (called with each layer's output y) and ``before_backward(name, layer, dy)``
        (called with the gradient dy reaching each layer's output). The training
        doctor records its statistics this way. The ReLUs run in place, so the
        output of the layer before a ReLU is overwritten by it: a hook that keeps
        an output must copy it. Returns ``hook``; remove it with
        :meth:`remove_hook`. The layers themselves are never modified."""
        if not self._hooks:
            self._hooks = []
        if hook not in self._hooks:
            self._hooks.append(hook)
        return hook

    def remove_hook(self, hook):
        """Stop calling ``hook`` (no error when it was not added)."""
        if hook in self._hooks:
            self._hooks.remove(hook)

    def set_batch_norm_reduction(self, reduce):
        """Make every BatchNorm layer reduce its batch statistics with ``reduce(s)``,
        which sums a float64 array over the processes in place (data-parallel
        training's synchronised BatchNorm); None: the statistics of this process's
        batch. See ``_BatchNorm._batch_means``. Returns the number of layers."""
        bns = [layer for layer in self.layers if isinstance(layer, (BatchNorm1d, BatchNorm2d))]
        for layer in bns:
            layer.reduce = reduce
        return len(bns)

    def named_layers(self):
        """``[(name, layer)]`` in forward order."""
        return list(zip(self.layer_names, self.layers))

    def named_parameters(self):
        """Yield ``(name, param, grad)`` in a fixed order (forward order, weight
        before bias); names are torchvision keys such as ``"features.0.weight"``;
        ``grad`` is None until a backward pass has computed it."""
        for lname, layer in zip(self.layer_names, self.layers):
            for k, p in layer.params.items():
                yield f"{lname}.{k}", p, layer.grads.get(k)

    def parameters(self):
        """The parameter arrays, in :meth:`named_parameters` order."""
        return [p for _, p, _ in self.named_parameters()]

    def named_buffers(self):
        """Yield ``(name, array)`` for BatchNorm's running statistics."""
        for lname, layer in zip(self.layer_names, self.layers):
            for k, b in layer.buffers.items():
                yield f"{lname}.{k}", b

    def num_params(self):
        """Number of learnable scalars."""
        return int(sum(math.prod(p.shape) for _, p, _ in self.named_parameters()))

    def zero_grad(self):
        """Forget the gradients of the last backward pass."""
        for layer in self.layers:
            layer.grads = {}

    def to(self, device=None):
        """Move every parameter and buffer to ``device`` ("cpu"/"gpu"; default the
        current backend device). Returns ``self``."""
        for layer in self.layers:
            layer.to(device)
        return self


class VGG(_Sequential):
    """A VGG network (build it with :func:`vgg`).

    ``forward(x (N, 3, s, s), train=False) -> logits (N, K)``;
    ``backward(dlogits (N, K)) -> dx (N, 3, s, s)``.

    Attributes: ``config`` (the :func:`vgg` arguments: ``vgg(**model.config)``
    rebuilds the architecture), ``letter`` (Table 1 column), ``features`` and
    ``classifier`` (lists of layers, numbered as in torchvision), ``flatten``,
    ``layers`` (all of them in forward order: features, flatten, classifier),
    ``layer_names`` (parallel to ``layers``: "features.0", ..., "flatten",
    "classifier.0", ...), ``conv_positions`` ({(block, index): layer name}, both
    counted from 1 as in Table 1).
    """

    def __init__(self, plan, config, letter):
        self.config = dict(config)
        self.letter = letter
        self.dtype = np.dtype(config["dtype"])
        self.input_size = config["input_size"]
        self.layers, self.layer_names, self.features, self.classifier = [], [], [], []
        self.conv_positions = {}
        for lname, kind, args in plan:
            layer = _build_layer(kind, args, self.dtype)
            self.layers.append(layer)
            self.layer_names.append(lname)
            if lname.startswith("features."):
                self.features.append(layer)
            elif lname.startswith("classifier."):
                self.classifier.append(layer)
            else:
                self.flatten = layer
            if kind == "conv":
                self.conv_positions[args["position"]] = lname

    @property
    def name(self):
        """torchvision-style name, e.g. "vgg16_bn"."""
        return self.config["name"] + ("_bn" if self.config["batch_norm"] else "")

    def __repr__(self):
        c = self.config
        return (f"VGG({self.name}: config {self.letter}{' + BN' if c['batch_norm'] else ''}, "
                f"num_classes={c['num_classes']}, input_size={c['input_size']}, width={c['width']}, "
                f"hidden={c['hidden']}, {self.num_params():,} parameters, {c['dtype']})")

    # -- the two passes ------------------------------------------------------
    def forward(self, x, train=False):
        """Logits (N, K) of images x (N, C, s, s). ``train=True`` applies dropout
        and BatchNorm's batch statistics; the default is evaluation."""
        s, c = self.input_size, self.config.get("in_channels", 3)
        if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ShapeError(f"{self.name}: expected input (N, {c}, {s}, {s}) (input_size={s}), got "
                             f"shape {tuple(getattr(x, 'shape', ()))}; for larger images use "
                             f"to_fully_convolutional()")
        return self._run(x, train)

    # -- state ---------------------------------------------------------------
    def state_dict(self):
        """``{torchvision key: host numpy array}`` (copies): parameters, and for
        BatchNorm ``running_mean``, ``running_var`` and ``num_batches_tracked`` (an
        int64 0-d array), in torchvision's order."""
        out = {}
        for lname, layer in zip(self.layer_names, self.layers):
            for k, p in layer.params.items():
                out[f"{lname}.{k}"] = _host_copy(p)
            for k, b in layer.buffers.items():
                out[f"{lname}.{k}"] = _host_copy(b)
            if isinstance(layer, BatchNorm2d):
                out[f"{lname}.num_batches_tracked"] = np.array(layer.num_batches_tracked, dtype=np.int64)
        return out

    def _expected_state(self):
        exp = {}
        for lname, layer in zip(self.layer_names, self.layers):
            for d in (layer.params, layer.buffers):
                for k, a in d.items():
                    exp[f"{lname}.{k}"] = (layer, d, k, tuple(a.shape))
            if isinstance(layer, BatchNorm2d):
                exp[f"{lname}.num_batches_tracked"] = (layer, None, "num_batches_tracked", ())
        return exp

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict`` ({key: array}, torchvision keys) into the model, in place,
        converting to the model's dtype.

        Nothing is copied unless everything fits. With ``strict=True`` missing and
        unexpected keys are errors; wrong shapes always are. A missing BatchNorm
        ``num_batches_tracked`` is not (PyTorch's rule: files saved before it existed,
        such as torchvision's original ``vgg*_bn`` weights, lack it): the layer keeps its
        count, 0 for a new model. The
        :class:`StateDictError` (a ``KeyError`` and a ``ValueError``) names every
        missing, unexpected and wrongly shaped key in one message.
        Returns ``(missing, unexpected)`` key lists (useful with ``strict=False``).
        """
        exp = self._expected_state()
        given = {k: np.asarray(backend.to_host(v)) for k, v in state_dict.items()}
        # Optional, as in PyTorch: a BatchNorm given no batch count keeps its own (0 when new).
        optional = [k for k in exp if k not in given and k.endswith(".num_batches_tracked")]
        missing = [k for k in exp if k not in given and k not in optional]
        unexpected = [k for k in given if k not in exp]
        wrong = [f"{k}: got {tuple(given[k].shape)}, expected {exp[k][3]}"
                 for k in exp if k in given and tuple(given[k].shape) != exp[k][3]]
        not_numeric = [f"{k}: dtype {given[k].dtype}" for k in exp
                       if k in given and not (np.issubdtype(given[k].dtype, np.number)
                                              or given[k].dtype == np.bool_)]
        if wrong or not_numeric or (strict and (missing or unexpected)):
            parts = []
            if strict and missing:
                parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
            if strict and unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
            if wrong:
                parts.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong)}")
            if not_numeric:
                parts.append(f"non-numeric values: {'; '.join(not_numeric)}")
            raise StateDictError(f"load_state_dict: the state dict does not fit {self.name} "
                                 f"({self!r}): " + " | ".join(parts))
        for k, (layer, d, name, _) in exp.items():
            if k not in given:
                continue
            if d is None:
                layer.num_batches_tracked = int(given[k])
            else:
                _assign(d[name], given[k].astype(d[name].dtype, copy=False))
        return missing, unexpected

    # -- description ---------------------------------------------------------
    def layer_table(self):
        """One dict per layer for one image at ``input_size``: name, layer,
        output_shape (without the batch axis), params, macs (multiply-adds of
        convolutions and fully connected layers; 0 elsewhere), receptive_field
        and jump (the distance in input pixels between neighbouring output units).

        Receptive field: r_out = r_in + (k - 1) * j_in, j_out = j_in * stride for
        conv and pool windows k; fc6 is treated as the convolution of kernel s/32
        it is in the fully convolutional network (section 3.2), so its units see
        the whole image (the number can exceed s: it counts the zero padding).
        """
        s = self.input_size
        shape, rf, jump, spatial = (self.config.get("in_channels", 3), s, s), 1, 1, s
        rows = []
        for lname, layer in zip(self.layer_names, self.layers):
            macs = 0
            if isinstance(layer, (Conv2d, MaxPool2d)):
                out = layer.output_shape((1,) + shape)[1:]
                k, st = layer.kernel_size[0], layer.stride[0]
                rf, jump = rf + (k - 1) * jump, jump * st
                if isinstance(layer, Conv2d):
                    macs = out[1] * out[2] * layer.out_channels * layer.in_channels * \
                        layer.kernel_size[0] * layer.kernel_size[1]
                spatial = out[1]
            elif isinstance(layer, Flatten):
                out = (math.prod(shape),)
            elif isinstance(layer, Linear):
                out = (layer.out_features,)
                macs = layer.in_features * layer.out_features
                rf, spatial = rf + (spatial - 1) * jump, 1
            else:
                out = shape
            shape = tuple(out)
            rows.append(dict(name=lname, layer=layer, output_shape=shape,
                             params=int(sum(math.prod(p.shape) for p in layer.params.values())),
                             macs=int(macs), receptive_field=int(rf), jump=int(jump)))
        return rows

    def summary(self):
        """A table, one row per layer (name, layer, output shape, parameters,
        multiply-adds, receptive field), then the totals. Returns a string."""
        rows = self.layer_table()
        in_shape = (self.config.get("in_channels", 3), self.input_size, self.input_size)
        head = f"{'layer':<14} {'type':<46} {'output':<16} {'params':>13} {'mult-adds':>16} {'RF':>5}"
        lines = [f"{self!r}", head, "-" * len(head),
                 f"{'input':<14} {'':<46} {str(in_shape):<16} "
                 f"{0:>13,} {0:>16,} {1:>5}"]
        for r in rows:
            t = repr(r["layer"])
            t = t if len(t) <= 46 else t[:43] + "..."
            lines.append(f"{r['name']:<14} {t:<46} {str(r['output_shape']):<16} {r['params']:>13,} "
                         f"{r['macs']:>16,} {r['receptive_field']:>5}")
        total_p = sum(r["params"] for r in rows)
        total_m = sum(r["macs"] for r in rows)
        lines += ["-" * len(head),
                  f"{'total':<14} {'':<46} {'':<16} {total_p:>13,} {total_m:>16,}",
                  f"total parameters: {total_p:,}   total multiply-adds per image: {total_m:,} "
                  f"({total_m / 1e9:.2f} G)"]
        return "\n".join(lines)

    # -- dense evaluation (section 3.2) ----------------------------------------
    def to_fully_convolutional(self):
        """The same network with its fully connected layers as convolutions
        (section 3.2), sharing this model's parameter arrays (views, not copies).

        fc6 (hidden, d) becomes a Conv2d of kernel k = s/32 with weight
        ``W.reshape(hidden, C, k, k)`` (Flatten reads (C, H, W) in C order, so the
        reshape is exact); fc7 and fc8 become 1x1 convolutions. Returns a
        :class:`FullyConvolutionalVGG`.
        """
        return FullyConvolutionalVGG(self)


class _SharedConv2d(Conv2d):
    """A Conv2d whose weight and bias are given arrays (no initialisation, so no
    random numbers are drawn)."""

    def __init__(self, weight, bias):
        self.params, self.grads, self.buffers, self._cache = {}, {}, {}, None
        self.out_channels, self.in_channels, kh, kw = (int(v) for v in weight.shape)
        self.kernel_size, self.stride, self.padding = (kh, kw), (1, 1), (0, 0)
        self.dtype = np.dtype(weight.dtype)
        self.params["weight"] = weight
        if bias is not None:
            self.params["bias"] = bias

    def __repr__(self):  # it *is* a Conv2d; the class only skips the initial draw
        return f"Conv2d({self.extra_repr()})"


def _share(layer):
    """A new layer object sharing ``layer``'s parameter and buffer arrays but with
    its own cache and gradients (running one network never disturbs the other's
    backward pass)."""
    new = copy.copy(layer)
    new.params = dict(layer.params)
    new.buffers = layer.buffers  # BatchNorm updates running statistics in place: one dict
    new.grads, new._cache = {}, None
    return new


class FullyConvolutionalVGG(_Sequential):
    """Dense evaluation network of section 3.2 (see :meth:`VGG.to_fully_convolutional`).

    ``forward(x (N, 3, H, W), train=False) -> class score map (N, K, h, w)`` with
    h = H//32 - s/32 + 1 (so (N, K, 1, 1) at the training size s);
    ``score(x) -> (N, K)``, the spatial average of the map;
    ``backward(dmap) -> dx``. Dropout is the identity at test time (inverted
    dropout), so nothing is rescaled.
    """

    def __init__(self, model):
        self.config = dict(model.config)
        self.input_size = model.input_size
        self.layers, self.layer_names = [], []
        for lname, layer in zip(model.layer_names, model.features):
            self.layers.append(_share(layer))
            self.layer_names.append(lname)
        k = model.input_size // 32
        for lname, layer in zip(model.layer_names[-7:], model.classifier):
            if isinstance(layer, Linear):
                w = layer.params["weight"]
                kk = k if lname == "classifier.0" else 1
                c = layer.in_features // (kk * kk)
                new = _SharedConv2d(w.reshape(layer.out_features, c, kk, kk), layer.params.get("bias"))
            else:
                new = _share(layer)
            self.layers.append(new)
            self.layer_names.append(lname)

    def __repr__(self):
        return f"FullyConvolutionalVGG({self.config['name']!r}, training size {self.input_size})"

    def forward(self, x, train=False):
        """Class score map (N, K, h, w) of images (N, C, H, W), H, W >= input_size."""
        s, c = self.input_size, self.config.get("in_channels", 3)
        if getattr(x, "ndim", None) != 4 or x.shape[1] != c or min(x.shape[2:]) < s:
            raise ShapeError(f"FullyConvolutionalVGG: expected images (N, {c}, H, W) with H, W >= the "
                             f"training size {s}, got shape {tuple(getattr(x, 'shape', ()))}")
        return self._run(x, train)

    def score(self, x):
        """Class scores (N, K): the score map of ``x`` averaged over its positions."""
        return self.forward(x, train=False).mean(axis=(2, 3))
