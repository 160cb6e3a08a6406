"""Gradient checking by central finite differences, in float64.

For a layer (or a whole model) ``y = f(x; params)`` and a *random* upstream
gradient ``dy`` (never all ones: all ones would hide mistakes that cancel, such
as a transposed weight in a symmetric layer), the backward pass claims

    g[i] = d/dx[i] sum(dy * f(x))

The numerical estimate perturbs one coordinate at a time by h (default 1e-5):

    n[i] = sum(dy * (f(x + h e_i) - f(x - h e_i))) / (2h)

The outputs are differenced *before* they are contracted with ``dy``; outputs
that the perturbation does not touch then cancel exactly, so round-off comes
only from the outputs that changed.

The error reported for an array is the maximum relative error

    err = max_i |g[i] - n[i]| / max(|g[i]|, |n[i]|, floor),
    floor = 1e-3 * max_j max(|g[j]|, |n[j]|)

The floor keeps coordinates whose gradient is ~1000x smaller than the array's
largest from being judged by pure round-off; a wrong gradient still shows up as
an error of order 1.

Kinks. ReLU at 0 and a tie in max-pooling are points where f has no
derivative; there the two one-sided slopes differ by O(1) while at a smooth
point they differ by O(h). Every checked coordinate also gets its one-sided
slopes ``(f(x+h)-f(x))/h`` and ``(f(x)-f(x-h))/h``; where they disagree by more
than ``kink_tol`` (relative to the array's gradient scale) the coordinate sits
on (or within h of) a kink and is skipped, and the report counts the skips. Inputs
drawn from a continuous distribution almost never land there; the report makes
the rare case visible instead of a false failure.

Large arrays are checked on a random sample of ``max_coords`` coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backend

__all__ = ["GradcheckReport", "relative_error", "numerical_gradient", "check_gradients",
           "check_loss", "named_arrays"]


@dataclass
class ArrayResult:
    name: str
    shape: tuple
    checked: int
    skipped_kinks: int
    max_error: float


@dataclass
class GradcheckReport:
    """Per-array results of a gradient check. ``max_error`` is the worst of them."""

    results: list = field(default_factory=list)

    @property
    def max_error(self):
        return max((r.max_error for r in self.results), default=0.0)

    def passed(self, tol=1e-6):
        return bool(self.results) and self.max_error <= tol

    def __getitem__(self, name):
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self):
        lines = [f"{'array':<28} {'shape':<20} {'checked':>7} {'kinks':>5} {'max rel err':>11}"]
        for r in self.results:
            lines.append(f"{r.name:<28} {str(r.shape):<20} {r.checked:>7} {r.skipped_kinks:>5} "
                         f"{r.max_error:>11.2e}")
        lines.append(f"max relative error: {self.max_error:.2e}")
        return "\n".join(lines)


def relative_error(analytic, numeric, floor_ratio=1e-3):
    """``max_i |a_i - n_i| / max(|a_i|, |n_i|, floor_ratio * max_j max(|a_j|, |n_j|))``."""
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    mag = np.maximum(np.abs(a), np.abs(n))
    floor = floor_ratio * mag.max()
    if floor == 0.0:
        return 0.0  # both exactly zero everywhere
    return float(np.max(np.abs(a - n) / np.maximum(mag, floor)))


def _contract(dy, a, b):
    """sum(dy * (a - b)) on the host, in float64."""
    return float(np.sum(dy * (a - b)))


def _snapshot(y):
    # A copy: an identity layer returns x itself, which the next perturbation changes.
    return np.array(backend.to_host(y), dtype=np.float64, copy=True)


def numerical_gradient(f, x, dy, indices, h=1e-6, kink_tol=1e-3):
    """Central differences of ``sum(dy * f())`` with respect to ``x`` at ``indices``.

    ``f`` takes no argument and reads ``x``, which is perturbed in place and
    restored. Returns ``(central, kink)``: the estimates and a boolean mask of
    coordinates whose one-sided slopes disagree (see the module docstring).
    """
    dy = _snapshot(dy)
    y0 = _snapshot(f())
    central = np.empty(len(indices))
    plus = np.empty(len(indices))
    minus = np.empty(len(indices))
    if not x.flags.c_contiguous:  # reshape would copy, and the perturbation would be lost
        raise ValueError("numerical_gradient: x must be a C-contiguous array")
    flat = x.reshape(-1)
    for k, i in enumerate(indices):
        old = float(flat[i])
        flat[i] = old + h
        yp = _snapshot(f())
        flat[i] = old - h
        ym = _snapshot(f())
        flat[i] = old
        plus[k] = _contract(dy, yp, y0) / h
        minus[k] = _contract(dy, y0, ym) / h
        central[k] = _contract(dy, yp, ym) / (2 * h)
    scale = max(np.max(np.abs(central), initial=0.0), 1e-300)
    kink = np.abs(plus - minus) > kink_tol * np.maximum(scale, np.abs(plus) + np.abs(minus))
    return central, kink


def named_arrays(module):
    """``[(name, param, grad_getter)]`` for a layer (``params``/``grads``) or a
    model (``named_parameters()`` yielding ``(name, param, grad)``)."""
    if hasattr(module, "named_parameters"):
        out = []
        for i, (name, p, _) in enumerate(module.named_parameters()):
            out.append((name, p, (lambda i=i: list(module.named_parameters())[i][2])))
        return out
    params = getattr(module, "params", {})
    return [(name, p, (lambda name=name: module.grads[name])) for name, p in params.items()]


def _sample(size, max_coords, rng):
    if size <= max_coords:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_coords, replace=False))


def check_gradients(module, x, dy=None, *, train=True, seed=0, h=1e-5, max_coords=64,
                    check_input=True, kink_tol=1e-3):
    """Gradient-check ``module`` (a layer or a model) at input ``x``.

    ``module.forward(x, train)`` and ``module.backward(dy)`` are compared with
    central differences for the input (when ``check_input``) and every
    parameter. Everything must be float64. Dropout masks repeat across the
    evaluations because the backend is reseeded with ``seed`` before each forward.
    Returns a :class:`GradcheckReport`.
    """
    arrays = named_arrays(module)
    for name, p, _ in [("input", x, None)] + arrays:
        if p.dtype != np.float64:
            raise TypeError(f"check_gradients: {name} is {p.dtype}; gradient checks need float64 "
                            f"(build the layer or model with dtype=numpy.float64)")
    rng = np.random.default_rng(seed)

    def f():
        backend.seed(seed)
        return module.forward(x, train=train)

    y = f()
    if dy is None:
        dy = backend.to_device(rng.standard_normal(y.shape))
    dx = module.backward(dy)
    analytic = [("input", x, backend.to_host(dx))] if check_input else []
    analytic += [(name, p, backend.to_host(g())) for name, p, g in arrays]
    report = GradcheckReport()
    for name, arr, grad in analytic:
        if grad.shape != arr.shape:
            raise ValueError(f"check_gradients: gradient of {name} has shape {grad.shape}, "
                             f"the array {arr.shape}")
        idx = _sample(arr.size, max_coords, rng)
        num, kink = numerical_gradient(f, arr, dy, idx, h=h, kink_tol=kink_tol)
        a = grad.reshape(-1)[idx]
        keep = ~kink
        err = relative_error(a[keep], num[keep]) if keep.any() else float("nan")
        report.results.append(ArrayResult(name, tuple(arr.shape), int(keep.sum()), int(kink.sum()), err))
    return report


def check_loss(loss, logits, labels, *, h=1e-5, max_coords=64, seed=0):
    """Gradient-check a loss ``forward(logits, labels) -> scalar``, ``backward() -> dlogits``."""
    if logits.dtype != np.float64:
        raise TypeError(f"check_loss: logits are {logits.dtype}; gradient checks need float64")
    loss.forward(logits, labels)
    g = backend.to_host(loss.backward())
    idx = _sample(logits.size, max_coords, np.random.default_rng(seed))
    one = backend.to_device(np.ones(()))

    def f():
        return backend.to_device(np.asarray(float(loss.forward(logits, labels))))

    num, kink = numerical_gradient(f, logits, one, idx, h=h)
    report = GradcheckReport()
    keep = ~kink
    report.results.append(ArrayResult("logits", tuple(logits.shape), int(keep.sum()), int(kink.sum()),
                                      relative_error(g.reshape(-1)[idx][keep], num[keep])))
    return report
