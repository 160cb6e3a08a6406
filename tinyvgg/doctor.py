"""The training doctor: look inside a training run and say why it is not learning.

A narrow VGG without BatchNorm, started from a small Gaussian initialisation,
can sit at exactly chance level (loss ln K) for many epochs without any error.
The doctor watches a run through the :class:`~tinyvgg.train.Trainer` hooks,
records per-layer statistics every ``every`` steps, checks them for the usual
failures and explains what it saw, the likely causes and what to try.

Use
---
``python -m tinyvgg doctor --model vgg11 --width 0.25 --no-batch-norm --init he ...``
trains briefly, prints the per-layer table and the diagnoses, saves the plots and
suggests a fix (:func:`run_doctor_command`). ``python -m tinyvgg train --doctor``
runs the same checks in a full run (``Doctor(every=...)`` as a hook). In code::

    doc = Doctor(every=20)
    Trainer(cfg, hooks=[doc]).setup().run()
    doc.kinds()            # e.g. {"chance_loss", "vanishing_gradients"}
    print(doc.report())

What is recorded (on recording steps only: step % every == 0)
-------------------------------------------------------------
For every Conv2d, BatchNorm, LRN, ReLU and Linear layer, by name:

``act_mean``, ``act_std``
    mean and standard deviation of the layer's output over the batch.
``act_absmax``
    largest absolute output value (non-finite when the layer blew up).
``dead``  (ReLU only)
    fraction of units (channels of a convolutional map, features of a fully
    connected layer) that are zero for every example and position in the batch.
``zero``  (ReLU only)
    fraction of all outputs that are zero.
``grad_out_norm``
    ||dL/d(output)|| over the batch: the gradient that reaches the layer from
    above. In a network whose layers keep the signal's size this norm is about
    the same at every layer (a max-pool routes it, a fan-in-scaled convolution
    keeps it); its fall from the logits to the first layer is the gradient that
    vanishes on its way to the input.
``grad_norm``, ``weight_norm``, ``update_ratio``  (layers with a weight)
    ||dL/dW||, ||W|| and ||dW|| / ||W|| of the SGD step actually taken (the
    weights are copied in ``after_backward`` and compared in ``after_step``;
    weight decay and momentum are part of the step).
``grad_step_ratio``  (layers with a weight)
    lr * ||dL/dW|| / ||W|| / (1 - momentum): the size of a step driven by the
    gradient alone once momentum has built up. Unlike ``update_ratio`` it has no
    floor from weight decay (lr * wd / (1 - momentum)), so it says whether the
    gradient moves the weights at all.

How the activations are captured: on the step before a recording step (and at
``train_begin``) the doctor sets an instance attribute ``forward``/``backward``
on each tracked layer that calls the class's method and keeps a few device
scalars about the output (or the incoming gradient); ``after_backward`` of the
recording step removes them again. Between recordings the layers run their
own methods untouched: a non-recording step costs the doctor one list append
(the loss). The statistics stay on the device and are read back with one copy
per recording step. Reading layer caches instead would not work uniformly
(ReLU caches a mask, Conv2d its im2col matrix, Linear its input).

Diagnoses (kinds)
-----------------
``diverged``, ``loss_rising``, ``chance_loss``, ``vanishing_gradients``,
``exploding_gradients``, ``dead_relus``, ``update_too_large``,
``update_too_small``, ``overfitting``, ``evaluation_bug``. Each is a
:class:`Diagnosis` with what was seen, the likely causes (most likely first)
and what to try; the thresholds live in :class:`Thresholds`. Each kind is
warned about once, when first seen; the report lists them all at the end.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import backend
from .layers import BatchNorm1d, BatchNorm2d, Conv2d, Linear, LocalResponseNorm, ReLU

__all__ = ["Doctor", "Diagnosis", "Thresholds", "KINDS", "run_doctor", "run_doctor_command",
           "plot_layer_stats"]

KINDS = ("diverged", "loss_rising", "chance_loss", "vanishing_gradients", "exploding_gradients",
         "dead_relus", "update_too_large", "update_too_small", "overfitting", "evaluation_bug")

# The order in which a fix is believed: a run that blows up must be calmed first,
# a signal that never reaches the loss must be restored before anything else matters.
_PRIORITY = {k: i for i, k in enumerate(
    ("evaluation_bug", "diverged", "loss_rising", "update_too_large", "vanishing_gradients",
     "chance_loss", "update_too_small", "dead_relus", "exploding_gradients", "overfitting"))}

_TRACKED = (Conv2d, Linear, BatchNorm2d, BatchNorm1d, LocalResponseNorm, ReLU)
_KIND_OF = ((Conv2d, "conv"), (Linear, "linear"), (BatchNorm2d, "bn"), (BatchNorm1d, "bn"),
            (LocalResponseNorm, "lrn"), (ReLU, "relu"))


@dataclass
class Thresholds:
    """When a check fires. All can be changed: ``Doctor(thresholds=Thresholds(dead=0.8))``.

    chance_after
        steps before a loss near ln K counts as stuck.
    chance_tol
        the loss (mean of the last ``window`` steps) is "at chance" when
        |loss - ln K| <= chance_tol * ln K.
    window
        steps averaged for the loss checks.
    rising_factor, rising_min
        the loss is rising when the last window's mean exceeds the best earlier
        window's mean by this factor and by at least ``rising_min``; or when it
        exceeds ``above_chance`` * ln K (confidently wrong).
    vanishing
        ||dL/dy|| at the network's output (the logits) over ||dL/dy|| at the
        first layer's output above this: vanishing towards the input.
        Measured at initialisation on VGG-11 at width 1/4 without BatchNorm:
        about 50 for Glorot (ReLU halves the variance per layer), about 500 for
        "he" (its N(0, 0.01) classifier), about 1e7 for "paper"; about 10 with
        BatchNorm. ``exploding``: the same ratio below 1 / exploding.
    dead
        fraction of dead units in a ReLU layer (mean of the last recordings).
    update_high
        ||dW|| / ||W|| (geometric mean over layers and the last recordings)
        above this: the steps are too large (the rule of thumb is about 1e-3).
    update_low
        the gradient-driven step ``grad_step_ratio`` (same mean) below this while
        the loss is still above ``learned`` * ln K: the weights hardly move.
    overfit_gap
        training accuracy minus validation accuracy (both measured by the doctor
        in evaluation mode on the same weights) above this: overfitting.
    eval_gap
        the validation accuracy the trainer reported differs from the doctor's own
        evaluation (train=False, layer by layer) by more than this, or validation
        is above training by more than this: an evaluation bug.
    recent
        how many of the last recordings the per-layer checks average over.
    """

    chance_after: int = 100
    chance_tol: float = 0.02
    window: int = 50
    rising_factor: float = 1.3
    rising_min: float = 0.1
    above_chance: float = 1.5
    vanishing: float = 200.0
    exploding: float = 200.0
    dead: float = 0.7
    update_high: float = 3e-2
    update_low: float = 1e-4
    learned: float = 0.5
    overfit_gap: float = 0.2
    eval_gap: float = 0.1
    recent: int = 3


@dataclass
class Diagnosis:
    """One problem: ``kind`` (one of :data:`KINDS`), a one-line ``title``, what was
    ``saw`` (numbers), ``causes`` (most likely first), ``fixes`` (what to try),
    ``step`` (first seen), ``layer`` (when one layer is to blame), ``fix_args``
    (the command-line change the doctor believes in), ``alt_args`` (another one
    that also works), ``resolved`` (no longer seen when the run ended)."""

    kind: str
    title: str
    saw: str
    causes: list
    fixes: list
    step: int | None = None
    layer: str | None = None
    fix_args: list = field(default_factory=list)
    alt_args: list = field(default_factory=list)
    resolved: bool = False

    def to_dict(self):
        return asdict(self)

    def text(self):
        lines = [f"[{self.kind}] {self.title}"
                 + (f" (first seen at step {self.step})" if self.step is not None else "")
                 + (" (no longer seen at the end)" if self.resolved else ""),
                 f"  saw: {self.saw}", "  likely causes:"]
        lines += [f"    {i}. {c}" for i, c in enumerate(self.causes, 1)]
        lines.append("  try:")
        lines += [f"    - {f}" for f in self.fixes]
        return "\n".join(lines)


def _kind_of(layer):
    for cls, name in _KIND_OF:
        if isinstance(layer, cls):
            return name
    return type(layer).__name__.lower()


def _norm(a):
    """Euclidean norm as a device scalar, accumulated in float64."""
    xp = backend.get_array_module(a)
    a = a.astype(xp.float64, copy=False)
    return xp.sqrt((a * a).sum())


def _act_stats(y, relu):
    """Device scalars describing an activation array (no read-back here)."""
    xp = backend.get_array_module(y)
    s = {"act_mean": y.mean(dtype=xp.float64), "act_std": y.std(dtype=xp.float64),
         "act_absmax": xp.abs(y).max()}
    if relu and y.ndim >= 2:
        pos = y > 0
        axes = (0,) + tuple(range(2, y.ndim))
        s["dead"] = 1.0 - pos.any(axis=axes).mean(dtype=xp.float64)
        s["zero"] = 1.0 - pos.mean(dtype=xp.float64)
    return s





def _read_back(nested):
    """{layer: {stat: device scalar}} -> the same with Python floats, in one copy."""
    keys, vals = [], []
    for lname, d in nested.items():
        for k, v in d.items():
            keys.append((lname, k))
            vals.append(v)
    out = {lname: {} for lname in nested}
    if not vals:
        return out
    if any(backend.is_device_array(v) for v in vals):
        xp = backend.xp()
        host = backend.to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for v in vals]))
    else:
        host = [float(v) for v in vals]
    for (lname, k), v in zip(keys, host):
        out[lname][k] = float(v)
    return out


def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v, spec=".2e"):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


class Doctor:
    """A :class:`~tinyvgg.train.Trainer` hook that records per-layer statistics and
    diagnoses the run (see the module docstring).

    ``Doctor(every=50, thresholds=None, verbose=True, eval_images=512, write_files=True)``

    every
        record on steps whose index (0-based, counted over the whole run) is a
        multiple of ``every``; nothing is measured on the other steps.
    thresholds
        a :class:`Thresholds` (defaults otherwise).
    verbose
        print each diagnosis once, when first seen (``tqdm.write``, so progress
        bars stay intact), and the report at the end of the run.
    eval_images
        images of the training and validation sets the doctor evaluates itself
        at the end of every epoch (overfitting and evaluation checks).
    write_files
        at the end of the run, write ``doctor_report.md``, ``doctor.json`` and
        ``doctor_layers.png`` into the run folder (main process only).

    After (or during) a run: ``records`` (one dict per recording step),
    ``losses`` (step, loss) of every step, ``epochs`` (per-epoch evaluations),
    ``diagnoses`` ({kind: Diagnosis}), ``kinds()``, ``table()``, ``report()``,
    ``suggested_fix()``, ``to_dict()``, ``save(folder)``.
    """

    def __init__(self, every=50, thresholds=None, verbose=True, eval_images=512, write_files=True):
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(f"Doctor: every must be a positive integer, got {every!r}")
        self.every = int(every)
        self.th = thresholds or Thresholds()
        self.verbose = bool(verbose)
        self.eval_images = int(eval_images)
        self.write_files = bool(write_files)
        self.records = []
        self.losses = []          # [(step, loss)] of every step
        self.epochs = []          # per-epoch evaluation results
        self.diagnoses = {}       # kind -> Diagnosis
        self.warned = []          # kinds in the order they were warned about
        self.num_classes = None
        self.data_counts = {}     # how many images of how many classes the run trained on
        self.data_note = None     # how they were drawn (the doctor's short run)
        self.config = {}
        self.files = {}
        self._model = None
        self._tracked = []        # [(name, layer)]
        self._weighted = []       # [(name, layer)] with a "weight" parameter
        self._saved_attrs = {}
        self._capturing = False
        self._acts = {}
        self._gouts = {}
        self._pending = None
        self._pending_losses = []  # device scalars not yet read back (GPU)
        self._is_main = True
        self._finished = False
        self._epoch_rec_start = 0

    # -- wiring ------------------------------------------------------------------
    def _attach(self, trainer):
        model = trainer.model
        if model is self._model:
            return
        self._remove()
        self._model = model
        self._is_main = getattr(trainer, "is_main", True)
        self.num_classes = getattr(trainer, "num_classes", None) or \
            (model.config.get("num_classes") if hasattr(model, "config") else None)
        cfg = getattr(trainer, "cfg", None)
        if cfg is not None and hasattr(cfg, "to_dict"):
            self.config = cfg.to_dict()
        names = getattr(model, "layer_names", None) or [f"layer{i}" for i in range(len(model.layers))]
        self._tracked = [(n, l) for n, l in zip(names, model.layers) if isinstance(l, _TRACKED)]
        self._weighted = [(n, l) for n, l in self._tracked if "weight" in l.params]

    def _install(self):
        """Wrap the tracked layers' forward/backward until the next after_backward."""
        if self._saved_attrs:
            self._capturing = True
            return
        self._acts, self._gouts = {}, {}
        for name, layer in self._tracked:
            saved = {k: layer.__dict__[k] for k in ("forward", "backward") if k in layer.__dict__}
            self._saved_attrs[name] = (layer, saved)
            fwd, bwd = layer.forward, layer.backward
            relu = isinstance(layer, ReLU)

            def forward(x, train=True, _f=fwd, _n=name, _r=relu):
                y = _f(x, train=train)
                if train and self._capturing:
                    self._acts[_n] = _act_stats(y, _r)
                return y

            def backward(dy, _b=bwd, _n=name):
                if self._capturing:
                    self._gouts[_n] = _norm(dy)
                return _b(dy)

            layer.forward, layer.backward = forward, backward
        self._capturing = True

    def _remove(self):
        self._capturing = False
        for name, (layer, saved) in self._saved_attrs.items():
            for k in ("forward", "backward"):
                layer.__dict__.pop(k, None)
                if k in saved:
                    layer.__dict__[k] = saved[k]
        self._saved_attrs = {}

    def _recording(self, step):
        return step % self.every == 0

    # -- hooks -------------------------------------------------------------------
    def train_begin(self, trainer):
        """Start capturing for the first step (if it is a recording step)."""
        self._attach(trainer)
        data = getattr(trainer, "data", None) or {}
        if "train" in data:
            present = len(np.unique(np.asarray(data["train"].labels)))
            self.data_counts = {"train_images": len(data["train"]), "train_classes": present,
                                "num_classes": self.num_classes,
                                "val_images": len(data["val"]) if "val" in data else None}
        if self._recording(trainer.global_step):
            self._install()

    def after_backward(self, trainer, step):
        self._attach(trainer)
        if not self._recording(step):
            return
        self._capturing = False
        acts, gouts = self._acts, self._gouts
        self._remove()
        stats = {}
        for name, layer in self._tracked:
            d = dict(acts.get(name, {}))
            if name in gouts:
                d["grad_out_norm"] = gouts[name]
            stats[name] = d
        snapshot = {}
        for name, layer in self._weighted:
            w = layer.params["weight"]
            g = layer.grads.get("weight")
            if g is not None:
                stats[name]["grad_norm"] = _norm(g)
            stats[name]["weight_norm"] = _norm(w)
            snapshot[name] = w.copy()
        opt = trainer.optimizer
        # The learning rate of this step (a schedule may change it right after the step).
        lr = float(getattr(opt, "lr", float("nan")))
        mom = float(getattr(opt, "momentum", 0.0) or 0.0)
        self._pending = (step, stats, snapshot, lr, mom)

    def after_step(self, trainer, step, loss):
        # ``step`` is the number of steps taken so far: the step just taken had index step - 1.
        if backend.is_device_array(loss):
            self._pending_losses.append((step - 1, loss))
        else:
            self.losses.append((step - 1, float(loss)))
        if self._pending is not None and self._pending[0] == step - 1:
            s, stats, snapshot, lr, mom = self._pending
            self._pending = None
            for name, layer in self._weighted:
                if name in snapshot:
                    stats[name]["update_norm"] = _norm(layer.params["weight"] - snapshot[name])
            self._flush_losses()
            host = _read_back(stats)
            amp = 1.0 / (1.0 - mom)
            for name, d in host.items():
                if "update_norm" in d:
                    wn, un = d.get("weight_norm", float("nan")), d.pop("update_norm")
                    d["update_ratio"] = un / wn if wn > 0 else (float("inf") if un > 0 else float("nan"))
                if "grad_norm" in d and d.get("weight_norm", 0) > 0:
                    d["grad_step_ratio"] = lr * d["grad_norm"] / d["weight_norm"] * amp
            prev = self.records[-1]["step"] if self.records else -1
            window = [l for t, l in self.losses if prev < t <= s]
            self.records.append({"step": s, "loss": float(np.mean(window)) if window else float("nan"),
                                 "lr": lr,
                                 "layers": host})
            self._step_checks(s)
        if self._recording(step):
            self._install()

    def epoch_end(self, trainer, record):
        self._attach(trainer)
        self._flush_losses()
        ev = self._evaluate(trainer, record)
        self.epochs.append(ev)
        self._epoch_checks(ev)
        recs = self.records[self._epoch_rec_start:]
        self._epoch_rec_start = len(self.records)
        record["doctor"] = {
            "steps": [r["step"] for r in recs],
            "loss": [r["loss"] for r in recs],
            "layers": {name: {k: [r["layers"].get(name, {}).get(k) for r in recs]
                              for k in sorted({k for r in recs for k in r["layers"].get(name, {})})}
                       for name, _ in self._tracked},
            "eval": {k: v for k, v in ev.items() if k != "epoch"},
            "diagnoses": sorted(self.diagnoses),
        }

    def train_end(self, trainer):
        self.finish(trainer)

    def diverged(self, trainer, exc=None):
        """Called when the trainer raised :class:`~tinyvgg.train.TrainingDiverged`:
        find the step and the first layer that blew up, record the diagnosis and
        write the report (the run ends here)."""
        self._attach(trainer)
        self._capturing = False
        self._remove()
        self._flush_losses()
        if "diverged" not in self.diagnoses:
            step = getattr(trainer, "global_step", None)
            where = self._probe_divergence(trainer)
            self._add(self._diverged_diagnosis(step, where, exc))
        self.finish(trainer)

    # -- losses ------------------------------------------------------------------
    def _flush_losses(self):
        if not self._pending_losses:
            return
        xp = backend.xp()
        vals = backend.to_host(xp.stack([xp.asarray(v, dtype=xp.float64) for _, v in self._pending_losses]))
        self.losses += [(t, float(v)) for (t, _), v in zip(self._pending_losses, vals)]
        self._pending_losses = []

    # -- checks during training ---------------------------------------------------
    def _add(self, diag):
        old = self.diagnoses.get(diag.kind)
        if old is not None:
            diag.step = old.step  # first seen
            self.diagnoses[diag.kind] = diag
            return
        self.diagnoses[diag.kind] = diag
        if diag.kind not in self.warned:
            self.warned.append(diag.kind)
            if self.verbose and self._is_main:
                _write(f"doctor: WARNING at step {diag.step}:\n{diag.text()}")

    def _step_checks(self, step):
        for check in (self._check_nonfinite, self._check_loss, self._check_gradient_flow,
                      self._check_dead, self._check_updates):
            for d in check(step):
                self._add(d)

    def _signal_fix(self):
        """``(fix_args, alt_args)`` for a signal that fades through the layers.

        BatchNorm first: in the measured runs (VGG-11 at width 1/4, about 200 steps)
        it learned on Fashion-MNIST and CIFAR-10 alike, while Glorot's initialisation
        learned on Fashion-MNIST but started too slowly on CIFAR-10. Glorot is the
        alternative that keeps the network as the paper has it (no BatchNorm)."""
        bn, init = self._cfg("batch_norm"), self._cfg("init")
        if bn:
            return [], []
        return ["--batch-norm"], (["--init", "glorot"] if init in ("paper", "he") else [])

    def _lnk(self):
        return math.log(self.num_classes) if self.num_classes and self.num_classes > 1 else None

    def _lr(self):
        return self.records[-1]["lr"] if self.records else self.config.get("lr", float("nan"))

    def _cfg(self, key, default=None):
        return self.config.get(key, default)

    def _check_nonfinite(self, step):
        rec = self.records[-1]
        bad_act = next((n for n, _ in self._tracked
                        if not _finite(rec["layers"].get(n, {}).get("act_absmax", 0.0))), None)
        bad_grad = next((n for n, _ in reversed(self._tracked)
                         if any(not _finite(rec["layers"].get(n, {}).get(k, 0.0))
                                for k in ("grad_norm", "grad_out_norm"))), None)
        if bad_act is None and bad_grad is None and _finite(rec["loss"]):
            return []
        where = {"weights": None, "activations": bad_act, "gradients": bad_grad}
        return [self._diverged_diagnosis(step, where, None)]

    def _recent_losses(self):
        w = self.th.window
        vals = [l for _, l in self.losses]
        return vals[-w:], vals

    def _check_loss(self, step):
        out = []
        lnk = self._lnk()
        recent, vals = self._recent_losses()
        if not recent or lnk is None:
            return out
        m = float(np.mean(recent))
        done = len(vals)
        lr = self._lr()
        if done >= self.th.chance_after and abs(m - lnk) <= self.th.chance_tol * lnk:
            first = float(np.mean(vals[:min(len(vals), self.th.window)]))
            out.append(self._chance_diagnosis(step, m, lnk, first, done))
        w = self.th.window
        if done >= 2 * w and math.isfinite(m):
            earlier = [float(np.mean(vals[i:i + w])) for i in range(0, done - w - w + 1, w)]
            best = min(earlier) if earlier else m
            rising = m > best * self.th.rising_factor and m - best > self.th.rising_min
            if rising or m > self.th.above_chance * lnk:
                out.append(Diagnosis(
                    "loss_rising", "the training loss is going up",
                    f"mean loss over the last {len(recent)} steps is {m:.3f}; the best earlier "
                    f"stretch of {w} steps had {best:.3f} (chance is ln {self.num_classes} = {lnk:.3f}).",
                    ["the learning rate is too high: each step overshoots (lr is "
                     f"{lr:g}; look at the update/weight ratios in the table)",
                     "no BatchNorm and a deep stack: small weight changes are amplified",
                     "the learning-rate schedule or warm-up raises the rate too far",
                     "a bug in the gradient (check with `python -m tinyvgg gradcheck`)"],
                    [f"divide the learning rate by 10 (--lr {lr / 10:g})",
                     "add BatchNorm (--batch-norm) or a warm-up (--warmup-epochs 1)"],
                    step=step, fix_args=["--lr", f"{lr / 10:g}"]))
        return out

    def _chance_diagnosis(self, step, m, lnk, first, done):
        """The causes are ordered by what the other checks see right now: a vanishing
        gradient first blames the initialisation, tiny steps the learning rate, and
        healthy gradients and steps the data."""
        init, bn, lr = self._cfg("init"), self._cfg("batch_norm"), self._lr()
        vanishing = any(d.kind == "vanishing_gradients" for d in self._check_gradient_flow(step))
        small = any(d.kind == "update_too_small" for d in self._check_updates(step))
        init_cause = (f"the initialisation ({init}) is too small for this network without BatchNorm: "
                      f"the signal shrinks layer by layer, the logits are all about 0, so the "
                      f"prediction is uniform and the gradient that reaches the weights is tiny "
                      f"(the wall the paper got around by starting its deeper nets from a trained "
                      f"configuration A)" if not bn and init in ("paper", "he") else
                      "the signal fades through the layers (no BatchNorm)" if not bn else
                      "the signal fades through the layers")
        lr_cause = f"the learning rate ({lr:g}) is too small to move the weights"
        data_causes = ["the labels do not match the images (a loading or shuffling bug): there is "
                       "nothing to learn",
                       "too few steps yet for this configuration (dropout and a small learning "
                       "rate slow the start)"]
        if vanishing:
            causes = [init_cause] + ([lr_cause] if small else []) + data_causes
        elif small:
            causes = [lr_cause, init_cause] + data_causes
        else:
            causes = data_causes + [init_cause, lr_cause]
        fixes, fix_args, alt_args = [], [], []
        if vanishing:
            fix_args, alt_args = self._signal_fix()
            fixes.append("add BatchNorm after every convolution (--batch-norm)")
            if alt_args:
                fixes.append("or, to stay without BatchNorm as the paper, use the Glorot "
                             "initialisation (--init glorot), which keeps the signal's size through "
                             "the layers (it starts more slowly)")
        if small:
            fixes.append(f"raise the learning rate (--lr {lr * 10:g})")
            fix_args = fix_args or ["--lr", f"{lr * 10:g}"]
        fixes += ["look at a few training images with their labels",
                  "train longer and watch whether the loss starts to fall"]
        if not fix_args and not bn:
            # Gradients and steps look sane: a slow start. BatchNorm is what shortens it.
            fixes.append("add BatchNorm (--batch-norm): it shortens a slow start the most")
            fix_args = ["--batch-norm"]
        last_lin = self._weighted[-1][0] if self._weighted else None
        std = self.records[-1]["layers"].get(last_lin, {}).get("act_std") if last_lin else None
        return Diagnosis(
            "chance_loss", "the loss is stuck at chance level",
            f"after {done} steps the mean loss over the last {min(done, self.th.window)} steps is "
            f"{m:.4f}, within {self.th.chance_tol:.0%} of ln {self.num_classes} = {lnk:.4f} "
            f"(the loss of a uniform guess); it started at {first:.4f}"
            + (f"; the logits' standard deviation is {std:.2e}" if _finite(std) else "") + ".",
            causes, fixes, step=step, fix_args=fix_args, alt_args=alt_args)

    def _check_gradient_flow(self, step):
        out = []
        if len(self._weighted) < 2:
            return out
        first, last = self._weighted[0][0], self._weighted[-1][0]
        ratios = []
        for rec in self.records[-self.th.recent:]:
            a = rec["layers"].get(last, {}).get("grad_out_norm")
            b = rec["layers"].get(first, {}).get("grad_out_norm")
            if _finite(a) and _finite(b) and a > 0:
                ratios.append(a / b if b > 0 else float("inf"))
        if not ratios:
            return out
        r = float(np.exp(np.mean(np.log(ratios)))) if all(math.isfinite(x) for x in ratios) \
            else float("inf")
        rec = self.records[-1]["layers"]
        gn_first = rec.get(first, {}).get("grad_norm")
        gn_last = rec.get(last, {}).get("grad_norm")
        path = " > ".join(f"{n} {_fmt(rec.get(n, {}).get('grad_out_norm'), '.1e')}"
                          for n, _ in reversed(self._weighted))
        bn, init = self._cfg("batch_norm"), self._cfg("init")
        if r > self.th.vanishing:
            fix_args, alt_args = self._signal_fix()
            small = not bn and init in ("paper", "he")
            out.append(Diagnosis(
                "vanishing_gradients", "the gradient vanishes on its way to the input",
                f"||dL/dy|| at the output of {last} (the logits) is {r:.3g} times ||dL/dy|| at the "
                f"output of {first}, the first layer (threshold {self.th.vanishing:g}); going "
                f"backwards: {path}; weight-gradient norms: {first} {_fmt(gn_first)}, "
                f"{last} {_fmt(gn_last)}.",
                ([f"the initialisation ({init}) is too small for this network without BatchNorm: "
                  f"every layer multiplies the signal, and the gradient on its way back, by less "
                  f"than 1" + (" (the classifier's N(0, 0.01) weights)" if init == "he" else "")]
                 if small else
                 ["each layer still shrinks the gradient a little (Glorot's scale halves the "
                  "variance at every ReLU) and the net is deep for its width" if not bn else
                  "the normalised layers still shrink the gradient (BatchNorm weights near 0?)"])
                + ["many dead ReLUs pass no gradient back (see the 'dead' column)",
                   "the network is deep for its width: the paper trained the deeper configurations "
                   "starting from the trained configuration A for this reason"],
                ["add BatchNorm after every convolution (--batch-norm)"]
                + (["or, to stay without BatchNorm as the paper, use an initialisation that keeps "
                    "the signal's size (--init glorot; it starts more slowly)"] if small else [])
                + ["or start the deep net from a trained VGG-11, as the paper did "
                   "(tinyvgg.models.init_from)"],
                step=step, layer=first, fix_args=fix_args, alt_args=alt_args))
        elif r < 1.0 / self.th.exploding:
            out.append(Diagnosis(
                "exploding_gradients", "the gradient grows on its way to the input",
                f"||dL/dy|| at the output of {first} is {1 / r:.3g} times the one at the logits "
                f"({last}) (threshold {self.th.exploding:g}); going backwards: {path}.",
                ["an initialisation too large for the depth", "no BatchNorm in a deep stack",
                 "a learning rate high enough to blow the weights up"],
                ["use --init glorot or add --batch-norm", "lower the learning rate"],
                step=step, layer=first, fix_args=["--batch-norm"]))
        return out

    def _check_dead(self, step):
        recs = self.records[-self.th.recent:]
        bad = []
        for name, layer in self._tracked:
            if not isinstance(layer, ReLU):
                continue
            vals = [r["layers"].get(name, {}).get("dead") for r in recs]
            vals = [v for v in vals if _finite(v)]
            if vals and float(np.mean(vals)) >= self.th.dead:
                bad.append((name, float(np.mean(vals))))
        if not bad:
            return []
        last = self.records[-1]["layers"]
        zero_w = [n for n, _ in self._weighted if last.get(n, {}).get("weight_norm") == 0.0]
        lr = self._lr()
        # Is the signal entering the dead layers all but gone? Then each unit's output is
        # its bias, and a slightly negative bias switches it off for every input.
        names = [n for n, _ in self._tracked]
        first_std = last.get(names[0], {}).get("act_std") if names else None
        faded = []
        for n, _ in bad:
            i = names.index(n)
            prev_std = last.get(names[i - 1], {}).get("act_std") if i > 0 else None
            if _finite(prev_std) and _finite(first_std) and prev_std < 1e-3 * first_std:
                faded.append((n, prev_std))
        causes = []
        if faded:
            causes.append("the signal has all but vanished before these layers (the standard "
                          "deviation of their input is " + ", ".join(f"{v:.1e} at {n}" for n, v in faded)
                          + f", against {first_std:.1e} after the first layer): a unit's output is "
                          "then just its bias, and a slightly negative bias switches it off for every "
                          "input; see vanishing_gradients")
        if zero_w:
            causes.append(f"all weights of {', '.join(zero_w)} are exactly zero (a zero "
                          f"initialisation or a weight-loading bug): its outputs are constant, "
                          f"the ReLU after it is off for every input and no gradient ever reaches "
                          f"it to change that")
        causes += [f"the learning rate ({lr:g}) is too high: one large step pushed the biases so "
                   f"negative that the units never fire again",
                   "a poor initialisation (biases or weights) without BatchNorm",
                   "inputs that were not normalised (mean/std)"]
        fixes = (["re-initialise that layer (check the initialisation and the checkpoint)"] if zero_w else []) + \
                [f"lower the learning rate (--lr {lr / 10:g}) or use a warm-up (--warmup-epochs 1)",
                 "add BatchNorm (--batch-norm)", "use --init glorot"]
        if faded:
            fixes = fixes[-2:] + fixes[:-2]
        first = bad[0][0]
        if zero_w:
            fix_args = []
        elif faded:
            fix_args = self._signal_fix()[0]
        else:
            fix_args = ["--lr", f"{lr / 10:g}"]
        return [Diagnosis(
            "dead_relus", "many ReLU units are dead",
            "dead units (zero for every example of the batch) by layer: "
            + ", ".join(f"{n} {v:.0%}" for n, v in bad)
            + f" (threshold {self.th.dead:.0%})" + (f"; zero weights: {', '.join(zero_w)}" if zero_w else "") + ".",
            causes, fixes, step=step, layer=zero_w[0] if zero_w else first, fix_args=fix_args)]

    def _recent_per_layer(self, key):
        """Per weighted layer: geometric mean of ``key`` over the recent recordings
        (step 0 is left out once there are later ones: the momentum buffer is not
        yet built up)."""
        recs = [r for r in self.records if r["step"] > 0] or self.records
        recs = recs[-self.th.recent:]
        per_layer = {}
        for name, _ in self._weighted:
            v = [r["layers"].get(name, {}).get(key) for r in recs]
            v = [x for x in v if _finite(x) and x > 0]
            if v:
                per_layer[name] = float(np.exp(np.mean(np.log(v))))
        return per_layer

    def _update_ratios(self):
        return self._recent_per_layer("update_ratio")

    def _check_updates(self, step):
        per_layer = self._update_ratios()
        if not per_layer:
            return []
        overall = float(np.exp(np.mean(np.log(list(per_layer.values())))))
        lr = self._lr()
        listing = ", ".join(f"{n} {v:.1e}" for n, v in per_layer.items())
        if overall > self.th.update_high:
            # About 1e-3 would need lr * 1e-3 / ratio; past ~1 the ratio no longer scales
            # with lr (the run is blowing up), so divide by 10 to 1000 at most.
            new = lr / 10 ** min(3, max(1, round(math.log10(overall / 1e-3))))
            return [Diagnosis(
                "update_too_large", "each step changes the weights too much",
                f"||dW|| / ||W|| is {overall:.1e} on average over the layers (healthy: about 1e-3, "
                f"threshold {self.th.update_high:g}); per layer: {listing}.",
                [f"the learning rate ({lr:g}) is too high", "momentum adds up to 1/(1-momentum) "
                 "times the gradient step", "weights that are tiny (a small initialisation) make "
                 "every step large compared with them"],
                [f"lower the learning rate to about {new:g} (--lr {new:g})",
                 "use a warm-up (--warmup-epochs 1)"],
                step=step, fix_args=["--lr", f"{new:g}"])]
        steps = self._recent_per_layer("grad_step_ratio")
        lnk = self._lnk()
        recent, _ = self._recent_losses()
        still_high = lnk is None or not recent or float(np.mean(recent)) > self.th.learned * lnk
        if not steps or not still_high:
            return []
        g_overall = float(np.exp(np.mean(np.log(list(steps.values())))))
        if g_overall >= self.th.update_low:
            return []
        bn, init = self._cfg("batch_norm"), self._cfg("init")
        small_init = not bn and init in ("paper", "he")
        fix_args, alt_args = self._signal_fix() if small_init else (["--lr", f"{lr * 10:g}"], [])
        wd = self._cfg("weight_decay", 0.0) or 0.0
        rel = self._recent_per_layer("grad_norm")
        w = self._recent_per_layer("weight_norm")
        decayed = [n for n in rel if n in w and w[n] > 0 and rel[n] / w[n] < wd]
        return [Diagnosis(
            "update_too_small", "the gradient hardly moves the weights",
            f"the gradient-driven step lr * ||dL/dW|| / ||W|| / (1 - momentum) is {g_overall:.1e} on "
            f"average over the layers (threshold {self.th.update_low:g}; the whole update "
            f"||dW|| / ||W|| is {overall:.1e}, healthy is about 1e-3) while the loss is still high; "
            f"per layer: " + ", ".join(f"{n} {v:.1e}" for n, v in steps.items())
            + (f"; in {len(decayed)} of {len(rel)} layers the gradient is smaller than the weight "
               f"decay's pull ({wd:g} * ||W||), so those weights mostly shrink" if decayed else "") + ".",
            ([f"the gradients are tiny because the signal vanished ({init} initialisation "
              f"without BatchNorm), so even a normal learning rate moves nothing"] if small_init else [])
            + [f"the learning rate ({lr:g}) is too low",
               "the schedule already cut the learning rate too often"],
            (["use --batch-norm or --init glorot so the gradients have a useful size"]
             if small_init else []) + [f"raise the learning rate (--lr {lr * 10:g})"],
            step=step, fix_args=fix_args, alt_args=alt_args)]

    # -- per-epoch evaluation ----------------------------------------------------
    def _eval_forward(self, x):
        """Logits in evaluation mode, layer by layer (never through a model.forward
        that could ignore ``train``)."""
        for layer in self._model.layers:
            x = layer.forward(x, train=False)
        return x

    def _sample(self, ds):
        """Up to ``eval_images`` indices, a seeded sample that keeps the class proportions
        (class folders are stored class by class, so the first images would all share
        one label)."""
        from .data import stratified_sample
        return stratified_sample(ds.labels, self.eval_images, 0)

    def _accuracy(self, ds, transform, forward, batch=256):
        sample = self._sample(ds)
        n = len(sample)
        if n == 0:
            return None, 0
        correct = 0
        for lo in range(0, n, batch):
            idx = sample[lo:lo + batch]
            imgs = ds.images[idx] if isinstance(ds.images, np.ndarray) else [ds.images[i] for i in idx]
            x = backend.to_device(transform(imgs))
            y = backend.to_device(np.asarray(ds.labels[idx]))
            correct = correct + (forward(x).argmax(axis=1) == y).sum()
        return float(correct) / n, n

    def _evaluate(self, trainer, record):
        ev = {"epoch": record.get("epoch"), "step": getattr(trainer, "global_step", None),
              "train_acc_reported": record.get("train_acc"), "val_acc_reported": record.get("val_acc")}
        data = getattr(trainer, "data", None)
        model = self._model
        if not data or model is None or "eval_transform" not in data:
            return ev
        # Side effects of a buggy forward (BatchNorm batch statistics) are undone afterwards.
        buffers = [(l, {k: b.copy() for k, b in l.buffers.items()}, getattr(l, "num_batches_tracked", None))
                   for l in model.layers if l.buffers]
        tf = data["eval_transform"]
        try:
            ev["train_acc_eval"], ev["train_n"] = self._accuracy(data["train"], tf, self._eval_forward)
            ev["val_acc_eval"], ev["val_n"] = self._accuracy(data["val"], tf, self._eval_forward)
            ev["val_size"] = len(data["val"])
            # Evaluation must be deterministic: the same batch twice through model.forward(train=False).
            val = data["val"]
            idx = self._sample(val)[:16]
            if len(idx):
                imgs = val.images[idx] if isinstance(val.images, np.ndarray) else [val.images[i] for i in idx]
                x = backend.to_device(tf(imgs))
                a, b = model.forward(x, train=False), model.forward(x, train=False)
                c = self._eval_forward(x)
                scale = float(backend.to_host(abs(c).max())) + 1e-12
                ev["eval_nondeterminism"] = float(backend.to_host(abs(a - b).max())) / scale
                ev["eval_vs_layers"] = float(backend.to_host(abs(a - c).max())) / scale
        finally:
            for layer, saved, nbt in buffers:
                for k, v in saved.items():
                    layer.buffers[k][...] = v
                if nbt is not None:
                    layer.num_batches_tracked = nbt
        return ev

    def _epoch_checks(self, ev):
        step = ev.get("step")
        tr, va = ev.get("train_acc_eval"), ev.get("val_acc_eval")
        rep = ev.get("val_acc_reported")
        k = self.num_classes or 2
        if _finite(tr) and _finite(va) and tr - va > self.th.overfit_gap:
            wd, do = self._cfg("weight_decay", 0.0), self._cfg("dropout", 0.0)
            lim = self._cfg("limit")
            self._add(Diagnosis(
                "overfitting", "training accuracy is far above validation accuracy",
                f"after epoch {ev['epoch']}: training accuracy {tr:.3f} vs validation accuracy "
                f"{va:.3f} (both in evaluation mode, on {ev.get('train_n')} and {ev.get('val_n')} "
                f"images; gap threshold {self.th.overfit_gap:g}).",
                ["the network memorises the training images: too little data for its size"
                 + (f" (only {lim} images used: --limit)" if lim else ""),
                 f"too little regularisation (dropout {do:g}, weight decay {wd:g}, augmentation)",
                 "the validation set does not come from the same distribution, or its labels are "
                 "wrong (if the validation accuracy is at chance from the start)"],
                ["use more training data (a larger --limit, or none)",
                 f"more regularisation: --dropout 0.5, --weight-decay {max(wd, 5e-4) * 2:g}, keep "
                 "--flip and --crop-padding on, scale jittering (--scale 32,48)",
                 "stop earlier (the plateau schedule and the best validation epoch)"],
                step=step, fix_args=["--dropout", "0.5"] if do < 0.5 else
                ["--weight-decay", f"{max(wd, 5e-4) * 2:g}"]))
        problems = []
        nd = ev.get("eval_nondeterminism")
        if _finite(nd) and nd > 1e-4:
            problems.append(f"the same validation batch gave different outputs in two "
                            f"model.forward(x, train=False) calls (relative difference {nd:.2e}): "
                            f"something random (dropout) is still on in evaluation")
        lv = ev.get("eval_vs_layers")
        if _finite(lv) and lv > 1e-3 and not (_finite(nd) and nd > 1e-4):
            problems.append(f"model.forward(x, train=False) differs from running the layers one by "
                            f"one with train=False (relative difference {lv:.2e}): the model does not "
                            f"pass train=False on to its layers")
        n_val = ev.get("val_n") or 0
        if _finite(rep) and _finite(va) and n_val >= 50 and abs(rep - va) > self.th.eval_gap:
            problems.append(f"the trainer reported validation accuracy {rep:.3f} but evaluating the "
                            f"same weights with train=False gives {va:.3f} on {n_val} of its "
                            f"{ev.get('val_size')} images")
        if _finite(tr) and _finite(va) and n_val >= 50 and va - tr > self.th.eval_gap \
                and va > 1.0 / k + self.th.eval_gap:
            problems.append(f"validation accuracy {va:.3f} is far above training accuracy {tr:.3f} "
                            f"(same weights, evaluation mode)")
        if problems:
            self._add(Diagnosis(
                "evaluation_bug", "the evaluation does not measure what training learned",
                "; ".join(problems) + ".",
                ["the evaluation runs the network in training mode (train=True): dropout drops "
                 "units and BatchNorm uses the batch's statistics",
                 "the evaluation uses other preprocessing (mean/std, size) than training",
                 "the validation labels or images are shuffled differently from each other, or "
                 "the validation images also appear in the training set"],
                ["make sure every evaluation path calls forward(x, train=False) and that the "
                 "model passes train on to every layer (Dropout, BatchNorm)",
                 "evaluate one batch with train=True and train=False and compare",
                 "check that training and evaluation use the same mean/std and input size"],
                step=step))

    # -- after divergence --------------------------------------------------------
    def _probe_divergence(self, trainer):
        """Which layer blew up first: the first weights that are not finite, else
        the first activation (forward order) and gradient (backward order) that is
        not finite when the failing batch is run again with the current weights."""
        model = self._model
        where = {"weights": None, "activations": None, "gradients": None, "huge": None}
        if model is None:
            return where
        xp = backend.xp()
        for name, layer in zip(model.layer_names, model.layers):
            for k, p in layer.params.items():
                if not bool(xp.isfinite(p).all()):
                    where["weights"] = f"{name}.{k}"
                    break
            if where["weights"]:
                break
        batch = self._failing_batch(trainer)
        if batch is None:
            return where
        x, y = batch
        cfg = getattr(trainer, "cfg", None)
        if cfg is not None:
            backend.seed(hash((cfg.seed, trainer.epoch, trainer.step_in_epoch,
                               getattr(trainer, "rank", 0))) & 0x7FFFFFFF)
        try:
            with np.errstate(all="ignore"):
                h = x
                for name, layer in zip(model.layer_names, model.layers):
                    h = layer.forward(h, train=True)
                    m = float(backend.to_host(xp.abs(h).max()))
                    if where["huge"] is None and (not math.isfinite(m) or m > 1e6):
                        where["huge"] = (name, m)
                    if where["activations"] is None and not math.isfinite(m):
                        where["activations"] = name
                loss = trainer.loss_fn.forward(h, y)
                dy = trainer.loss_fn.backward()
                for name, layer in zip(reversed(model.layer_names), reversed(model.layers)):
                    dy = layer.backward(dy)
                    bad = not bool(xp.isfinite(dy).all()) or any(
                        not bool(xp.isfinite(g).all()) for g in layer.grads.values())
                    if bad:
                        where["gradients"] = name
                        break
                where["loss"] = float(backend.to_host(xp.asarray(loss)))
        except Exception as e:  # a probe must never hide the original error
            where["probe_error"] = f"{type(e).__name__}: {e}"
        return where

    @staticmethod
    def _failing_batch(trainer):
        loader = getattr(trainer, "train_loader", None)
        if loader is None:
            return None
        try:
            epoch, b = trainer.epoch, min(trainer.step_in_epoch, len(loader) - 1)
            x, y = loader._batch(loader.order(epoch), epoch, b)
            if hasattr(trainer, "_shard"):
                x, y = trainer._shard(x, y)
            return backend.to_device(x), backend.to_device(y)
        except Exception:
            return None

    def _diverged_diagnosis(self, step, where, exc):
        lr = self._lr()
        where = where or {}
        parts = []
        if exc is not None:
            parts.append(f"the trainer stopped: {str(exc).split('. ')[0]}")
        else:
            parts.append(f"non-finite values at step {step}")
        if where.get("weights"):
            parts.append(f"the first parameter with NaN/inf values is {where['weights']}")
        if where.get("huge"):
            n, m = where["huge"]
            parts.append(f"the first layer whose activations exceeded 1e6 is {n} (max |a| = {m:.3g})")
        if where.get("activations"):
            parts.append(f"the first layer whose activations are NaN/inf is {where['activations']}")
        if where.get("gradients"):
            parts.append(f"the first layer (going backwards) whose gradients are NaN/inf is "
                         f"{where['gradients']}")
        recent = [r for r in self.records if _finite(r["loss"])]
        if recent:
            parts.append(f"the last finite recorded loss was {recent[-1]['loss']:.4g} at step "
                         f"{recent[-1]['step']}")
        ratios = self._update_ratios()
        if ratios:
            parts.append("update/weight ratios before that: " +
                         ", ".join(f"{n} {v:.1e}" for n, v in list(ratios.items())[:4]) + " ...")
        layer = where.get("weights") or (where.get("huge") or (None,))[0] or where.get("activations") \
            or where.get("gradients")
        return Diagnosis(
            "diverged", "the loss became NaN or infinite",
            "; ".join(parts) + ".",
            [f"the learning rate ({lr:g}) is too high: the first steps throw the weights far "
             f"away and the activations overflow",
             "a deep network without BatchNorm started from a poor initialisation",
             "no warm-up at a large batch size or learning rate",
             "bad input (NaN in the data, images not normalised)"],
            [f"divide the learning rate by 10 (--lr {lr / 10:g}) and watch the update/weight ratio "
             f"(about 1e-3 is healthy)",
             "add BatchNorm (--batch-norm) or a warm-up (--warmup-epochs 1)"],
            step=step, layer=layer.split(".weight")[0].split(".bias")[0] if isinstance(layer, str) else None,
            fix_args=["--lr", f"{lr / 10:g}"])

    # -- the end -----------------------------------------------------------------
    def finish(self, trainer=None):
        """Mark what is no longer seen as resolved, print the report and write the
        files (once)."""
        if self._finished:
            return
        self._finished = True
        self._capturing = False
        self._remove()
        self._flush_losses()
        if self.losses and self._lnk() is not None and "diverged" not in self.diagnoses:
            # The loss after the last recording step counts too.
            for d in self._check_loss(self.losses[-1][0]):
                if d.kind not in self.diagnoses:
                    self._add(d)
        if self.records and "diverged" not in self.diagnoses:
            still = set()
            for check in (self._check_loss, self._check_gradient_flow, self._check_dead,
                          self._check_updates):
                still |= {d.kind for d in check(self.records[-1]["step"])}
            for kind, d in self.diagnoses.items():
                if kind in ("loss_rising", "chance_loss", "vanishing_gradients", "exploding_gradients",
                            "dead_relus", "update_too_large", "update_too_small") and kind not in still:
                    d.resolved = True
        is_main = getattr(trainer, "is_main", True) if trainer is not None else True
        if not is_main:
            return
        out = getattr(trainer, "out", None)
        if self.write_files and out is not None:
            self.save(out)
        if self.verbose:
            _write(self.report(markdown=False))

    def kinds(self, include_resolved=True):
        """The kinds diagnosed so far (a set)."""
        return {k for k, d in self.diagnoses.items() if include_resolved or not d.resolved}

    def ordered(self):
        """Diagnoses, the one whose fix is believed first."""
        return sorted(self.diagnoses.values(), key=lambda d: (d.resolved, _PRIORITY.get(d.kind, 99)))

    def suggested_fix(self):
        """``(args, reason)``: the command-line change the doctor believes in most
        (``[]`` when none applies), and why."""
        d = self._fix_source()
        return (list(d.fix_args), f"{d.kind}: {d.title}") if d else ([], "")

    def alternative_fix(self):
        """Another command-line change that also works (``[]`` when none)."""
        d = self._fix_source()
        return list(d.alt_args) if d else []

    def _fix_source(self):
        return next((d for d in self.ordered() if d.fix_args and not d.resolved), None)

    def table(self, record=None):
        """The per-layer statistics of one recording (default the last) as text."""
        rec = record or (self.records[-1] if self.records else None)
        if rec is None:
            return "(no statistics recorded: the run ended before the first recording step)"
        head = (f"{'layer':<14}{'type':<7}{'act mean':>10}{'act std':>10}{'dead':>6}"
                f"{'|grad W|':>10}{'|dL/dy|':>10}{'|W|':>10}{'upd/|W|':>10}")
        lines = [f"per-layer statistics at step {rec['step']} (loss {rec['loss']:.4f}, lr {rec['lr']:g})",
                 head, "-" * len(head)]
        kinds = dict((n, _kind_of(l)) for n, l in self._tracked)
        for name in kinds:
            d = rec["layers"].get(name, {})
            dead = d.get("dead")
            lines.append(f"{name:<14}{kinds[name]:<7}{_fmt(d.get('act_mean'), '10.2e')}"
                         f"{_fmt(d.get('act_std'), '10.2e')}"
                         f"{(format(dead, '6.0%') if _finite(dead) else '     -')}"
                         f"{_fmt(d.get('grad_norm'), '10.2e'):>10}{_fmt(d.get('grad_out_norm'), '10.2e'):>10}"
                         f"{_fmt(d.get('weight_norm'), '10.2e'):>10}{_fmt(d.get('update_ratio'), '10.2e'):>10}")
        return "\n".join(lines)

    def summary(self):
        """A few lines: the configuration, the loss at the start and the end, and the
        accuracies of every epoch."""
        c = self.config
        lines = []
        if c:
            lines.append(f"model {c.get('model')} width {c.get('width')} "
                         f"{'with' if c.get('batch_norm') else 'without'} BatchNorm, init {c.get('init')}, "
                         f"dropout {c.get('dropout')}, lr {c.get('lr')}, batch {c.get('batch_size')}, "
                         f"dataset {c.get('dataset')}" + (f" (limit {c.get('limit')})" if c.get('limit') else ""))
        dc = self.data_counts
        if dc:
            lines.append(f"trained on {dc['train_images']} images of {dc['train_classes']} classes"
                         + (f" (of the model's {dc['num_classes']})"
                            if dc.get("num_classes") not in (None, dc["train_classes"]) else "")
                         + (f": {self.data_note}" if self.data_note else "")
                         + (f"; validated on {dc['val_images']} images"
                            if dc.get("val_images") is not None else ""))
        if self.losses:
            vals = [l for _, l in self.losses]
            w = min(len(vals), self.th.window)
            lnk = self._lnk()
            lines.append(f"{len(vals)} steps; mean loss of the first {w} steps {np.mean(vals[:w]):.4f}, "
                         f"of the last {w} steps {np.mean(vals[-w:]):.4f}"
                         + (f" (chance: ln {self.num_classes} = {lnk:.4f})" if lnk else ""))
        for ev in self.epochs:
            lines.append(f"epoch {ev.get('epoch')}: reported train acc {_fmt(ev.get('train_acc_reported'), '.3f')}"
                         f" (training mode, during the epoch), val acc {_fmt(ev.get('val_acc_reported'), '.3f')}; "
                         f"doctor (evaluation mode): train {_fmt(ev.get('train_acc_eval'), '.3f')}, "
                         f"val {_fmt(ev.get('val_acc_eval'), '.3f')}")
        return "\n".join(lines)

    def report(self, markdown=True):
        """The diagnoses, the suggested fix and the per-layer tables (first and last
        recordings), as Markdown (``doctor_report.md``) or plain text."""
        lines = []
        h1, h2, code = ("# ", "## ", "```") if markdown else ("", "", "")
        lines.append(f"{h1}Training doctor report")
        lines.append("")
        lines += [f"{x}  " if markdown else x for x in self.summary().splitlines()]
        lines.append("")
        lines.append(f"{h2}Diagnoses")
        if not self.diagnoses:
            lines.append("No problem found: the checks stayed silent.")
        for d in self.ordered():
            lines.append("")
            if markdown:
                lines.append(f"### {d.kind}: {d.title}"
                             + (f" (first seen at step {d.step})" if d.step is not None else "")
                             + (" (no longer seen at the end)" if d.resolved else ""))
                lines.append(f"**What I saw:** {d.saw}")
                lines.append("")
                lines.append("**Likely causes, most likely first:**")
                lines += [f"{i}. {x}" for i, x in enumerate(d.causes, 1)]
                lines.append("")
                lines.append("**What to try:**")
                lines += [f"- {x}" for x in d.fixes]
            else:
                lines.append(d.text())
        args, why = self.suggested_fix()
        alt = self.alternative_fix()
        if args:
            q = "`" if markdown else ""
            lines += ["", f"{h2}Suggested fix", f"{q}{' '.join(args)}{q}  (because of {why})"]
            if alt:
                lines.append(f"or: {q}{' '.join(alt)}{q}")
        if self.records:
            lines += ["", f"{h2}Per-layer statistics",
                      "act: output of the layer; dead: units zero for the whole batch; |grad W|: "
                      "weight-gradient norm; |dL/dy|: norm of the gradient reaching the layer's output; "
                      "upd/|W|: ||dW||/||W|| of the SGD step."]
            for rec in ([self.records[0]] if len(self.records) > 1 else []) + [self.records[-1]]:
                lines.append("")
                lines += ([code] if markdown else []) + [self.table(rec)] + ([code] if markdown else [])
        if self.files.get("plot"):
            name = Path(self.files["plot"]).name
            lines += ["", f"![per-layer statistics over time]({name})" if markdown
                      else f"per-layer plot: {self.files['plot']}"]
        return "\n".join(lines)

    def to_dict(self):
        return {"every": self.every, "thresholds": asdict(self.th), "config": self.config,
                "num_classes": self.num_classes, "data": dict(self.data_counts, note=self.data_note),
                "diagnoses": [d.to_dict() for d in self.ordered()],
                "suggested_fix": self.suggested_fix()[0], "alternative_fix": self.alternative_fix(),
                "layers": [{"name": n, "type": _kind_of(l)} for n, l in self._tracked],
                "records": self.records, "epochs": self.epochs,
                "losses": {"step": [t for t, _ in self.losses], "loss": [l for _, l in self.losses]}}

    def save(self, folder):
        """Write ``doctor.json``, ``doctor_layers.png`` and ``doctor_report.md`` into
        ``folder``; returns {"json", "plot", "report"} paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.records:
            try:
                self.files["plot"] = str(plot_layer_stats(self, folder / "doctor_layers.png"))
            except Exception as e:  # a broken plot must not hide the diagnoses
                self.files["plot_error"] = f"{type(e).__name__}: {e}"
        self.files["json"] = str(folder / "doctor.json")
        _atomic(folder / "doctor.json", json.dumps(_jsonable(self.to_dict()), indent=1))
        self.files["report"] = str(folder / "doctor_report.md")
        _atomic(folder / "doctor_report.md", self.report(markdown=True) + "\n")
        return dict(self.files)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        v = float(o)
        return v if math.isfinite(v) else str(v)
    if isinstance(o, np.integer):
        return int(o)
    return o


def _atomic(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write(text):
    try:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stdout)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, flush=True)


# -- the picture -------------------------------------------------------------------

_PLOT_STATS = (("act_std", "activation std (log10)", True),
               ("dead", "dead ReLU units (fraction)", False),
               ("grad_out_norm", "gradient reaching the output, ||dL/dy|| (log10)", True),
               ("grad_norm", "weight-gradient norm (log10)", True),
               ("update_ratio", "update / weight ratio (log10; ~-3 healthy)", True))


def plot_layer_stats(doctor, path):
    """One PNG: the loss per step on top, below it one heat map per statistic with
    a row per layer (input at the top) and a column per recording step. Grey
    cells: the statistic does not apply to the layer (or was not finite)."""
    from .plots import _plt

    plt = _plt()
    recs = doctor.records
    names = [n for n, _ in doctor._tracked]
    steps = [r["step"] for r in recs]
    rows = max(len(names), 1)
    fig = plt.figure(figsize=(17, 3.2 + 0.2 * rows))
    gs = fig.add_gridspec(2, len(_PLOT_STATS), height_ratios=[2.0, max(2.0, 0.2 * rows)],
                          left=0.07, right=0.99, bottom=0.1, top=0.93, hspace=0.35, wspace=0.08)
    ax = fig.add_subplot(gs[0, :])
    if doctor.losses:
        t, l = zip(*doctor.losses)
        ax.plot(t, l, lw=0.8, label="training loss per step")
        lnk = doctor._lnk()
        if lnk:
            ax.axhline(lnk, color="red", ls="--", lw=0.8, label=f"chance: ln {doctor.num_classes}")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.suptitle("training doctor: per-layer statistics over time (rows: layers, input at the top; "
                 "grey: does not apply)", fontsize=10)
    first = None
    xt = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 5)).round().astype(int))) if steps else []
    for k, (key, title, log) in enumerate(_PLOT_STATS):
        ax = fig.add_subplot(gs[1, k], sharey=first)
        first = first or ax
        m = np.full((rows, len(recs)), np.nan)
        for j, r in enumerate(recs):
            for i, n in enumerate(names):
                v = r["layers"].get(n, {}).get(key)
                if v is not None and math.isfinite(v) and (v > 0 or not log):
                    m[i, j] = math.log10(v) if log else v
        kw = {"vmin": 0, "vmax": 1} if not log else {}
        cmap = "viridis"
        if key == "update_ratio":
            kw, cmap = {"vmin": -6, "vmax": 0}, "coolwarm"
        cmap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", interpolation="nearest", cmap=cmap, **kw)
        if k == 0:
            ax.set_yticks(range(len(names)), names, fontsize=6)
        else:
            ax.tick_params(labelleft=False)
        ax.set_xticks(xt, [str(steps[i]) for i in xt], fontsize=6)
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.04, pad=0.06 + 0.3 / rows)
    path = os.fspath(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)
    plt.close(fig)
    return path


# -- running it --------------------------------------------------------------------

DEFAULT_STEPS = 200


def run_doctor(cfg, steps=None, every=None, data=None, thresholds=None, verbose=True,
               write_files=True, eval_images=512):
    """Train ``cfg`` (a :class:`~tinyvgg.train.TrainConfig`) briefly with a
    :class:`Doctor` attached and return it.

    ``steps``: about how many SGD steps (whole epochs are kept so that the
    overfitting and evaluation checks run at the end of each: a shorter run
    trains one epoch on the first ``steps * batch_size`` training images; a
    longer one trains ceil(steps / steps_per_epoch) epochs). None: ``cfg.epochs``
    epochs as given. ``every``: record every N steps (default about 30
    recordings). ``data``: a prepared dict as :func:`~tinyvgg.train.prepare_data`
    returns. A diverging run is caught and diagnosed (TrainingDiverged does not
    propagate). ``verbose``, ``write_files``, ``eval_images``: as for :class:`Doctor`.
    """
    from dataclasses import replace

    from .train import Trainer, TrainingDiverged, prepare_data

    data = dict(data) if data is not None else prepare_data(cfg)
    spe = -(-len(data["train"]) // cfg.batch_size)
    doctor_note = None
    if steps is not None:
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"doctor: --steps must be positive, got {steps}")
        if steps < spe:
            # A seeded, class-balanced sample: class folders are stored class by class,
            # so the first images would hold only the first classes.
            from .data import stratified_sample
            full = data["train"]
            data["train"] = full.subset(stratified_sample(full.labels, steps * cfg.batch_size,
                                                          cfg.seed))
            doctor_note = (f"a seeded sample of {len(data['train'])} of the {len(full)} training "
                           f"images, class proportions kept")
            epochs = 1
        else:
            epochs = -(-steps // spe)
        cfg = replace(cfg, epochs=epochs)
        total = min(steps, spe) if steps < spe else epochs * spe
    else:
        total = cfg.epochs * spe
    if every is None:
        every = max(1, total // 30)
    th = thresholds or Thresholds()
    if thresholds is None:
        # A short run: ask for "stuck" after half of it, averaging over a fifth of it.
        th = replace(th, chance_after=min(th.chance_after, max(10, total // 2)),
                     window=min(th.window, max(5, total // 5)))
    doctor = Doctor(every=every, thresholds=th, verbose=verbose, write_files=write_files,
                    eval_images=eval_images)
    doctor.data_note = doctor_note
    trainer = Trainer(cfg, hooks=[doctor], data=data).setup()
    try:
        trainer.run()
    except TrainingDiverged as e:
        doctor.diverged(trainer, e)
    doctor.trainer = trainer
    return doctor


def run_doctor_command(args):
    """``python -m tinyvgg doctor ...``: a short run, the table, the diagnoses, the
    plots and the fix the doctor believes in.

    Trains about ``--steps`` steps (default 200; ``--epochs`` is not used) at the
    constant learning rate ``--lr``, records every ``--every`` steps (default:
    about 30 recordings), writes the report, data and plot into ``--out``
    (default ``runs/doctor``). Returns 0 (the diagnoses are the output)."""
    from .cli import _config_from_args
    from .train import TrainConfig

    cfg = _config_from_args(args)
    if cfg.out == TrainConfig.out:
        cfg.out = "runs/doctor"
    # A schedule meant for a whole run (plateau, step, cosine) would cut the learning rate
    # within the probe's few hundred steps: the probe runs at the constant --lr (after
    # --warmup-epochs, if any).
    cfg.schedule = "constant"
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    print(f"tinyvgg doctor: training {cfg.model} (width {cfg.width}, "
          f"{'with' if cfg.batch_norm else 'without'} BatchNorm, init {cfg.init}, constant lr "
          f"{cfg.lr:g}, dropout {cfg.dropout:g}) for about {steps} steps on {cfg.dataset}; "
          f"run folder {cfg.out}", flush=True)
    doctor = run_doctor(cfg, steps=steps, every=args.every, verbose=False)
    print()
    print(doctor.summary())
    print()
    print(doctor.table())
    print()
    print("Diagnoses")
    if not doctor.diagnoses:
        print("No problem found: the checks stayed silent.")
    for d in doctor.ordered():
        print(d.text())
        print()
    fix, why = doctor.suggested_fix()
    alt = doctor.alternative_fix()
    if fix:
        print(f"The doctor suggests: {' '.join(fix)}   (because of {why})")
        print(f"  python -m tinyvgg doctor {_rebuild_argv(args, fix)}")
        if alt:
            print(f"or, without that change: {' '.join(alt)}")
            print(f"  python -m tinyvgg doctor {_rebuild_argv(args, alt)}")
    elif doctor.kinds(include_resolved=False):
        print("Problems remain (see above), but no single command-line change is clearly the fix.")
    elif doctor.diagnoses:
        print("What was seen earlier is gone by the end of the run.")
    else:
        print("The run looks healthy.")
    print(f"\nreport: {doctor.files.get('report')}  plot: {doctor.files.get('plot')}  "
          f"data: {doctor.files.get('json')}")
    return 0


def _rebuild_argv(args, fix):
    """The doctor's command line with ``fix`` applied (only the non-default settings)."""
    from .train import TrainConfig

    d = TrainConfig()
    parts = []
    fix_keys = {fix[i].lstrip("-").replace("-", "_") for i in range(len(fix)) if fix[i].startswith("--")}
    for key in ("model", "width", "hidden", "batch_norm", "dropout", "init", "dataset", "data_dir",
                "input_size", "val_size", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                "warmup_epochs", "limit", "seed", "device", "dtype"):
        v = getattr(args, key, None)
        if key in fix_keys or v is None:
            continue
        if key == "batch_norm":
            parts.append("--batch-norm" if v else "--no-batch-norm")
            continue
        if key not in ("model", "dataset", "data_dir", "limit", "width", "init") and v == getattr(d, key):
            continue
        parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(v))}")
    for key in ("steps", "every"):
        if getattr(args, key, None):
            parts.append(f"--{key} {getattr(args, key)}")
    return " ".join(parts + list(fix))
