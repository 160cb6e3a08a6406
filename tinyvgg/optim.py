"""SGD with momentum and weight decay, and the learning-rate schedules.

The paper (section 3.1): mini-batch gradient descent with momentum 0.9, weight
decay (an L2 penalty) of 5e-4, learning rate 1e-2 "decreased by a factor of 10
when the validation set accuracy stopped improving" (three times in all).

Update rule (PyTorch's form, which Caffe's equals up to where lr multiplies):

    g = grad + weight_decay * w
    v = momentum * v + g
    w = w - lr * v                      (plain)
    w = w - lr * (g + momentum * v)     (nesterov=True)

Momentum buffers are kept per parameter name, in the model's fixed
``named_parameters()`` order, so ``state_dict()`` is checkpointable and a run
resumed from it continues exactly. All updates are in place (``out=``): no new
arrays per step.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .ops.cpu import parallel
from .ops.shapes import memory_order

# Values per block of the NumPy update (SGD._step_blocked): 64K float32 values are
# 256 KB per array, so a block's passes stay in a core's cache. 0: whole arrays (the
# simple version, SGD._update), kept for benchmarks/bench_switches.py and the tests.
UPDATE_BLOCK = 1 << 16

__all__ = ["SGD", "Schedule", "ConstantLR", "ReduceOnPlateau", "StepLR", "CosineLR", "OneCycleLR",
           "make_schedule"]


class SGD:
    """``SGD(model, lr, momentum=0.9, weight_decay=5e-4, nesterov=False, decay_bias_and_norm=True)``.

    ``model`` is anything with ``named_parameters()`` yielding ``(name, param, grad)``.
    ``step()`` applies one update with the gradients the last backward wrote.
    ``decay_bias_and_norm=False`` applies weight decay only to parameters of two or
    more dimensions (convolution and linear weights), not to biases and BatchNorm's
    gamma/beta (1-D): shrinking those does not regularise a BatchNorm network, it
    only fights the normalisation. True (the default) decays every parameter, as
    the paper and ``torch.optim.SGD`` do. Raises ValueError for a non-positive lr,
    momentum outside [0, 1), negative weight decay or Nesterov without momentum.
    """

    def __init__(self, model, lr, momentum=0.9, weight_decay=5e-4, nesterov=False, decay_bias_and_norm=True):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"SGD: lr must be a positive number, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay!r}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.model = model
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.decay_bias_and_norm = bool(decay_bias_and_norm)
        self.steps = 0
        self.buffers = {}  # name -> momentum buffer, created on the first step
        self._scratch = {}  # name -> array reused for g = grad + wd * w

    def __repr__(self):
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay}, "
                f"nesterov={self.nesterov}, decay_bias_and_norm={self.decay_bias_and_norm})")

    def step(self):
        """Update every parameter in place from its gradient.

        The simple version is :meth:`_update`, one parameter at a time on whole
        arrays (what runs on CuPy). On NumPy arrays the same arithmetic runs on
        blocks of ``UPDATE_BLOCK`` values instead, shared out between the worker
        threads of the ops: see :meth:`_step_blocked`. The numbers are the same
        either way, bit for bit (each value's update is independent of the others).
        Raises RuntimeError for a parameter without a gradient, ValueError for a
        gradient of the wrong shape."""
        params = list(self.model.named_parameters())
        for name, p, g in params:
            if g is None:
                raise RuntimeError(f"SGD.step: parameter {name} has no gradient; call the "
                                   f"model's backward() before step()")
            if g.shape != p.shape:
                raise ValueError(f"SGD.step: gradient of {name} has shape {g.shape}, parameter {p.shape}")
        xp = backend.get_array_module(params[0][1]) if params else np
        if xp is np and UPDATE_BLOCK:
            self._step_blocked(params)
        else:
            for name, p, g in params:
                self._update(name, p, g)
        self.steps += 1

    def _decays(self, p):
        return bool(self.weight_decay) and (p.ndim > 1 or self.decay_bias_and_norm)

    def _buffer(self, name, p):
        """``(v, first)``: the momentum buffer of ``name``, created (uninitialised)
        on the first step, when ``first`` is True and the update fills it."""
        v = self.buffers.get(name)
        if v is None:
            v = self.buffers[name] = backend.get_array_module(p).empty_like(p)
            return v, True
        return v, False

    def _apply(self, p, g, v, d, decay, first):
        """The update rule of the module notes, in place, on arrays of one shape (a
        whole parameter, or one block of it): ``p`` the weights, ``g`` their
        gradient (read only), ``v`` the momentum buffer (None without momentum),
        ``d`` scratch for g + weight_decay * w and the step."""
        xp = backend.get_array_module(p)
        dt = p.dtype.type
        mom = dt(self.momentum)
        if decay:
            xp.multiply(p, dt(self.weight_decay), out=d)
            d += g                           # d = g + wd * w
        else:
            d[...] = g
        if self.momentum:
            if first:
                v[...] = d                   # as PyTorch: the first buffer is g
            else:
                v *= mom
                v += d                       # v = momentum * v + g
            if self.nesterov:
                d += mom * v                 # step along g + momentum * v
            else:
                d[...] = v                   # step along v
        d *= dt(self.lr)
        p -= d

    def _update(self, name, p, g):
        """The simple version: one parameter's update on whole arrays, with a scratch
        array of its shape kept between steps (no allocation per step)."""
        v, first = self._buffer(name, p) if self.momentum else (None, False)
        self._apply(p, g, v, self._scratch_for(name, p), self._decays(p), first)

    def _scratch_for(self, name, p):
        d = self._scratch.get(name)
        if d is None or d.shape != p.shape or d.dtype != p.dtype:
            d = self._scratch[name] = backend.get_array_module(p).empty_like(p)
        return d

    def _step_blocked(self, params):
        """The fast path on NumPy: the same update on blocks of ``UPDATE_BLOCK`` values.

        The update reads and writes every value several times (five passes over the
        scratch d, three over the momentum buffer, two over the weights). On whole
        arrays each pass streams the parameter through memory, and a VGG's 4096 x 4096
        layer (64 MB) is far larger than any cache; on a block, the passes after the
        first find the block in the core's cache, so w, g and v travel to and from
        memory once. Measured in ``benchmarks/bench_switches.py`` (results:
        ``benchmarks/results/switch_blocked_sgd/``). The flattened parameters are cut into
        segments shared out between the worker threads by size, so a 16.8M-value
        layer does not leave the other core idle; each thread has its own scratch
        block."""
        segments = []  # (p, g, v, decay, first, lo, hi) on flattened views
        for name, p, g in params:
            v, first = self._buffer(name, p) if self.momentum else (None, False)
            flat = _flat_views(p, g, v)
            if flat is None:                 # no flat views to write through: whole arrays
                self._apply(p, g, v, self._scratch_for(name, p), self._decays(p), first)
                continue
            step = max(UPDATE_BLOCK, -(-p.size // parallel.workers()))
            for lo in range(0, p.size, step):
                segments.append(flat + (self._decays(p), first, lo, min(lo + step, p.size)))
        groups = _balanced_groups(segments, parallel.workers(), size=lambda s: s[6] - s[5])
        block = UPDATE_BLOCK

        def run_group(group):
            scratch = {}  # dtype -> this thread's scratch block
            for p, g, v, decay, first, lo, hi in group:
                d = scratch.get(p.dtype)
                if d is None:
                    d = scratch[p.dtype] = np.empty(block, dtype=p.dtype)
                for a in range(lo, hi, block):
                    b = min(a + block, hi)
                    self._apply(p[a:b], g[a:b], None if v is None else v[a:b], d[:b - a], decay, first)
        parallel.run(run_group, [(g,) for g in groups], np)

    # -- checkpointing ---------------------------------------------------------
    def state_dict(self):
        """Flat dict: hyper-parameters, the step count and ``momentum_buffer.<name>``
        host arrays in the model's parameter order."""
        state = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                 "nesterov": self.nesterov, "steps": self.steps}
        for name, _, _ in self.model.named_parameters():
            if name in self.buffers:
                state[f"momentum_buffer.{name}"] = backend.to_host(self.buffers[name]).copy()
        return state

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned (buffers moved to the current device)."""
        try:
            self.lr = float(state["lr"])
            self.momentum = float(state["momentum"])
            self.weight_decay = float(state["weight_decay"])
            self.nesterov = bool(state["nesterov"])
            self.steps = int(state["steps"])
        except KeyError as e:
            raise ValueError(f"SGD.load_state_dict: missing entry {e.args[0]!r}") from None
        params = {name: p for name, p, _ in self.model.named_parameters()}
        self.buffers = {}
        for key, value in state.items():
            if not key.startswith("momentum_buffer."):
                continue
            name = key[len("momentum_buffer."):]
            if name not in params:
                raise ValueError(f"SGD.load_state_dict: momentum buffer for unknown parameter {name!r}")
            if tuple(np.shape(value)) != tuple(params[name].shape):
                raise ValueError(f"SGD.load_state_dict: momentum buffer {name} has shape "
                                 f"{np.shape(value)}, parameter {params[name].shape}")
            buf = backend.get_array_module(params[name]).empty_like(params[name])  # stored as its parameter
            buf[...] = backend.to_device(np.asarray(value, dtype=params[name].dtype))
            self.buffers[name] = buf


# --- learning-rate schedules ---------------------------------------------------

class Schedule:
    """Sets ``optimizer.lr`` per batch and per epoch.

    Call ``batch_end()`` after every optimiser step and ``epoch_end(val_metric)``
    after every epoch's validation. ``warmup_steps`` > 0 ramps the rate linearly
    from ``base_lr / warmup_steps`` to the schedule's value over the first steps.
    Subclasses say how the epoch's rate follows from the epochs seen.
    """

    def __init__(self, optimizer, warmup_steps=0):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.warmup_steps = int(warmup_steps)
        self.batches = 0
        self.epochs = 0
        self.epoch_lr = self.base_lr
        self._apply()

    def _apply(self):
        lr = self.epoch_lr
        if self.batches < self.warmup_steps:
            lr *= (self.batches + 1) / self.warmup_steps
        self.optimizer.lr = lr

    def batch_end(self):
        self.batches += 1
        self._apply()

    def epoch_end(self, metric=None):
        self.epochs += 1
        self.epoch_lr = self._next_epoch_lr(metric)
        self._apply()

    def _next_epoch_lr(self, metric):
        return self.epoch_lr

    def state_dict(self):
        return {"batches": self.batches, "epochs": self.epochs, "epoch_lr": self.epoch_lr,
                "base_lr": self.base_lr, **self._extra_state()}

    def _extra_state(self):
        return {}

    def load_state_dict(self, state):
        self.batches = int(state["batches"])
        self.epochs = int(state["epochs"])
        self.epoch_lr = float(state["epoch_lr"])
        self.base_lr = float(state["base_lr"])
        self._load_extra(state)
        self._apply()

    def _load_extra(self, state):
        pass


class ConstantLR(Schedule):
    """The rate stays at ``base_lr`` (after any warm-up)."""


class ReduceOnPlateau(Schedule):
    """The paper's rule: divide the rate by ``1/factor`` (10) when the validation
    accuracy has not improved by more than ``threshold`` for ``patience`` epochs."""

    def __init__(self, optimizer, factor=0.1, patience=2, threshold=1e-4, min_lr=0.0, warmup_steps=0):
        if not 0 < factor < 1:
            raise ValueError(f"ReduceOnPlateau: factor must be in (0, 1), got {factor}")
        self.factor, self.patience, self.threshold, self.min_lr = factor, int(patience), threshold, min_lr
        self.best = -math.inf
        self.bad_epochs = 0
        self.reductions = 0
        super().__init__(optimizer, warmup_steps)

    def _next_epoch_lr(self, metric):
        if metric is None:
            raise ValueError("ReduceOnPlateau.epoch_end needs the validation accuracy")
        if metric > self.best + self.threshold:
            self.best, self.bad_epochs = metric, 0
            return self.epoch_lr
        self.bad_epochs += 1
        if self.bad_epochs > self.patience - 1 and self.epoch_lr * self.factor >= self.min_lr:
            self.bad_epochs = 0
            self.reductions += 1
            return self.epoch_lr * self.factor
        return self.epoch_lr

    def _extra_state(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "reductions": self.reductions}

    def _load_extra(self, state):
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.reductions = int(state["reductions"])


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1, warmup_steps=0):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, warmup_steps)

    def _next_epoch_lr(self, metric):
        return self.base_lr * self.gamma ** (self.epochs // self.step_size)


class CosineLR(Schedule):
    """Cosine decay from ``base_lr`` to ``min_lr`` over ``total_epochs``, per batch
    when ``steps_per_epoch`` is given (smoother), otherwise per epoch."""

    def __init__(self, optimizer, total_epochs, min_lr=0.0, steps_per_epoch=None, warmup_steps=0):
        if total_epochs < 1:
            raise ValueError(f"CosineLR: total_epochs must be >= 1, got {total_epochs}")
        self.total_epochs, self.min_lr = int(total_epochs), float(min_lr)
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, warmup_steps)

    def _cosine(self, t):
        t = min(max(t, 0.0), 1.0)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def batch_end(self):
        if self.steps_per_epoch:
            self.epoch_lr = self._cosine((self.batches + 1) / (self.total_epochs * self.steps_per_epoch))
        super().batch_end()

    def _next_epoch_lr(self, metric):
        if self.steps_per_epoch:
            return self.epoch_lr
        return self._cosine(self.epochs / self.total_epochs)


class OneCycleLR(Schedule):
    """One cycle over the whole run (Smith & Topin 2017, "Super-Convergence"; the
    shape of PyTorch's ``OneCycleLR`` with a linear rise): the rate rises linearly
    from ``base_lr / div_factor`` to ``base_lr`` over the first ``pct_start`` of the
    ``total_steps`` optimiser steps, then falls along a cosine to
    ``base_lr / final_div_factor`` at the last step. Per batch; the epoch's
    validation result is not used, so the run ends on a small rate whatever the
    number of epochs (the budget fits the schedule).
    """

    def __init__(self, optimizer, total_steps, pct_start=0.15, div_factor=25.0, final_div_factor=1e4):
        if total_steps < 1:
            raise ValueError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= pct_start < 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1), got {pct_start}")
        if div_factor < 1 or final_div_factor < 1:
            raise ValueError("OneCycleLR: div_factor and final_div_factor must be >= 1")
        self.total_steps, self.pct_start = int(total_steps), float(pct_start)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        super().__init__(optimizer)
        self.epoch_lr = self._at(0)
        self._apply()

    def _at(self, step):
        """The rate for optimiser step ``step`` (0-based), from ``base_lr`` alone."""
        peak = self.base_lr
        lo, end = peak / self.div_factor, peak / self.final_div_factor
        rise = self.pct_start * (self.total_steps - 1)
        if step < rise:
            return lo + (peak - lo) * step / rise
        fall = max(self.total_steps - 1 - rise, 1e-12)
        t = min((step - rise) / fall, 1.0)
        return end + 0.5 * (peak - end) * (1 + math.cos(math.pi * t))

    def batch_end(self):
        self.epoch_lr = self._at(self.batches + 1)
        super().batch_end()


SCHEDULES = ("onecycle", "cosine", "plateau", "step", "constant")


def make_schedule(name, optimizer, *, epochs, steps_per_epoch, patience=2, step_size=None,
                  warmup_epochs=0.0, pct_start=0.15):
    """Build a schedule by name: ``onecycle`` (warm-up over ``pct_start`` of the run,
    then cosine to near zero), ``cosine``, ``plateau`` (the paper's), ``step`` or
    ``constant``. ValueError names the choices for an unknown name."""
    if name == "onecycle":
        return OneCycleLR(optimizer, epochs * steps_per_epoch, pct_start=pct_start)
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if name == "plateau":
        return ReduceOnPlateau(optimizer, patience=patience, warmup_steps=warmup)
    if name == "step":
        return StepLR(optimizer, step_size or max(1, epochs // 3), warmup_steps=warmup)
    if name == "cosine":
        return CosineLR(optimizer, epochs, steps_per_epoch=steps_per_epoch, warmup_steps=warmup)
    if name == "constant":
        return ConstantLR(optimizer, warmup_steps=warmup)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def _flat_views(p, g, v):
    """``(p, g, v)`` flattened in the memory order of ``p``, so that position i of each
    is the same element, whether ``p`` is C-contiguous or not (a Conv2d's weight is
    stored channels-last, :func:`tinyvgg.ops.cpu.channels_last.channels_last_weight`).
    ``p`` and the momentum buffer ``v`` (or None) are views, written through; the
    gradient ``g`` is only read, and copied when stored otherwise. None when ``p`` or
    ``v`` is not stored densely in that order."""
    order = memory_order(p)
    pt, vt = p.transpose(order), None if v is None else v.transpose(order)
    if not (pt.flags.c_contiguous and (vt is None or vt.flags.c_contiguous)):
        return None
    return pt.reshape(-1), g.transpose(order).reshape(-1), None if vt is None else vt.reshape(-1)


def _balanced_groups(items, n, size):
    """``items`` in ``n`` groups of about equal total ``size(item)`` (values), largest
    first into the lightest group; small models stay in one group (one thread)."""
    total = sum(size(t) for t in items)
    n = parallel.split(total * 16, parallel.MIN_TASK_BYTES) if n > 1 else 1  # ~4 passes of 4 bytes
    groups, sizes = [[] for _ in range(n)], [0] * n
    for t in sorted(items, key=lambda t: -size(t)):
        i = sizes.index(min(sizes))
        groups[i].append(t)
        sizes[i] += size(t)
    return [g for g in groups if g]

