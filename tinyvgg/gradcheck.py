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

Round-off. The floor is relative; the central difference also has an absolute
round-off of about R (below). In a deep, narrow network without BatchNorm the
last blocks can have gradients of 1e-10, only 1e4 R: in `gradcheck vgg16
--coords 4` a difference of 0.35 R on such a coordinate read as a relative error
of 2.0e-6 and failed a correct network under OpenBLAS's Haswell kernel (7.7e-7
under its SkylakeX kernel: the round-off moves with the summation order). So
differences up to ``roundoff_margin * R`` (default 4 R) are not counted:

    err = max_i max(|g[i] - n[i]| - 4 R, 0) / max(|g[i]|, |n[i]|, floor)

A gradient that is wrong by more than 4 R (about 4e-14 on a narrow VGG, whose
gradients are 1e-10 to 1e-4) is still an error.

Gradients that are zero up to round-off. Some arrays have a true gradient of
exactly 0: a convolution bias right before BatchNorm (training mode subtracts
the batch mean, so the bias cancels). Then ``g`` is round-off of the backward
pass (~1e-19) and ``n`` round-off of the forward pass divided by h (~1e-14), and
their relative error (~1) says nothing. The central difference cannot resolve
a gradient below its round-off

    R = eps * sum(|dy * f(x)|) / h        (eps = 2.2e-16, float64)

(the forward pass's absolute round-off, divided by h; measured on VGG it is
about R). An array whose every analytic gradient and every sampled numerical
estimate lies within ``zero_margin * R`` of 0 (default 100 R) is reported as
zero up to round-off: marked ``~0``, error 0. Every other array is judged by
the relative error above, unchanged; so a backward that gives such a bias any
gradient larger than 100 R (about 1e-12 on a narrow VGG, where the other
gradients are ~1e-4) makes the array non-zero and fails it with an error of
order 1.

Kinks. ReLU at 0 and a tie in max-pooling are points where f has no
derivative; there the two one-sided slopes differ by O(1) while at a smooth
point they differ by O(h). Every checked coordinate also gets its one-sided
slopes ``(f(x+h)-f(x))/h`` and ``(f(x)-f(x-h))/h``; where they disagree by more
than ``kink_tol`` (relative to the array's gradient scale) the coordinate sits
on (or within h of) a kink. That test misses small kinks: in a deep network
with BatchNorm a step of h in an early weight moves every later activation, some
ReLU within h of 0 flips, and the central difference is off by a few 1e-5
relative, far below ``kink_tol`` yet far above the 1e-6 we demand. So f is also
evaluated at x +- 2h: where f is smooth the third and fourth differences

    [f(x+2h) - f(x-2h)] - 2 [f(x+h) - f(x-h)]                  = 2 h^3 f'''(x) + ...
    [f(x+2h) + f(x-2h) - 2 f(x)] - 4 [f(x+h) + f(x-h) - 2 f(x)] = h^4 f''''(x) + ...

are tiny, while a kink at distance d < h with a slope jump J makes one of them
at least h J / 2 and moves the central difference by at most J / 2. A coordinate
where they exceed ``smooth_tol`` (1e-7) of its gradient scale, or the round-off
of those sums, is a kink too. A kink is measured again once with a step of
h / 10 (``retries``); it stays in the way only if it lies within h / 10. What is
still at a kink is skipped, and the report counts the skips. Inputs drawn from a
continuous distribution almost never land exactly on one; the report makes the
rare case visible instead of a false failure. An array whose every sampled
coordinate was skipped has no error (nan), and a report holding one does not
pass: nothing was checked there (try another seed).

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
    zero: bool = False  # every gradient within zero_margin * R of 0 (module docstring)


@dataclass
class GradcheckReport:
    """Per-array results of a gradient check. ``max_error`` is the worst of them."""

    results: list = field(default_factory=list)
    roundoff: float = 0.0  # R, the round-off of the central difference (module docstring)
    zero_margin: float = 100.0
    roundoff_margin: float = 0.0  # differences up to roundoff_margin * R are not counted

    @property
    def max_error(self):
        """The worst array's error; nan when some array had no coordinate checked."""
        errors = [r.max_error for r in self.results]
        if any(np.isnan(e) for e in errors):
            return float("nan")
        return max(errors, default=0.0)

    @property
    def unchecked(self):
        """Names of the arrays none of whose sampled coordinates could be checked (all kinks)."""
        return [r.name for r in self.results if np.isnan(r.max_error)]

    def passed(self, tol=1e-6):
        """True when every array was checked and none has an error above ``tol``."""
        return bool(self.results) and not self.unchecked and self.max_error <= tol

    def __getitem__(self, name):
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def __str__(self):
        lines = [f"{'array':<28} {'shape':<20} {'checked':>7} {'kinks':>5} {'max rel err':>11}"]
        for r in self.results:
            lines.append(f"{r.name:<28} {str(r.shape):<20} {r.checked:>7} {r.skipped_kinks:>5} "
                         f"{r.max_error:>11.2e}" + ("  ~0" if r.zero else ""))
        if any(r.zero for r in self.results):
            lines.append(f"~0: zero up to round-off, every gradient within {self.zero_margin:g} R = "
                         f"{self.zero_margin * self.roundoff:.1e} of 0 (R = eps * sum|dy * f(x)| / h); "
                         f"a bias right before BatchNorm has a true gradient of 0")
        if self.roundoff_margin:
            lines.append(f"differences up to {self.roundoff_margin:g} R = {self.roundoff_margin * self.roundoff:.1e} "
                         f"are round-off of the central difference and not counted")
        if self.unchecked:
            lines.append(f"not checked (every sampled coordinate sat at a kink): {', '.join(self.unchecked)}; "
                         f"try another seed")
        lines.append(f"max relative error: {self.max_error:.2e}")
        return "\n".join(lines)


def relative_error(analytic, numeric, floor_ratio=1e-3, atol=0.0):
    """``max_i max(|a_i - n_i| - atol, 0) / max(|a_i|, |n_i|, floor_ratio * max_j max(|a_j|, |n_j|))``.

    ``atol`` is an absolute difference that counts as agreement: the round-off of
    the numerical estimate (``check_gradients`` passes ``roundoff_margin * R``;
    module docstring). Raises ValueError for a negative ``atol``.
    """
    if atol < 0:
        raise ValueError(f"relative_error: atol must be >= 0, got {atol}")
    a = np.asarray(analytic, dtype=np.float64).ravel()
    n = np.asarray(numeric, dtype=np.float64).ravel()
    if a.size == 0:
        return 0.0
    mag = np.maximum(np.abs(a), np.abs(n))
    floor = floor_ratio * mag.max()
    if floor == 0.0:
        return 0.0  # both exactly zero everywhere
    return float(np.max(np.maximum(np.abs(a - n) - atol, 0.0) / np.maximum(mag, floor)))


def _contract(dy, a, b):
    """sum(dy * (a - b)) on the host, in float64."""
    return float(np.sum(dy * (a - b)))


def _snapshot(y):
    # A copy: an identity layer returns x itself, which the next perturbation changes.
    return np.array(backend.to_host(y), dtype=np.float64, copy=True)


def numerical_gradient(f, x, dy, indices, h=1e-6, kink_tol=1e-3, smooth_tol=1e-7, floor_ratio=1e-3):
    """Central differences of ``sum(dy * f())`` with respect to ``x`` at ``indices``
    (positions in ``x`` flattened in C order, whatever its memory layout).

    ``f`` takes no argument and reads ``x``, which is perturbed in place and
    restored (f is evaluated at x, and at x +- h and x +- 2h per coordinate).
    Returns ``(central, kink)``: the estimates and a boolean mask of coordinates
    that sit within h of a kink (one-sided slopes that disagree by ``kink_tol``,
    or third and fourth differences above ``smooth_tol``; see the module docstring).
    """
    dy = _snapshot(dy)
    y0 = _snapshot(f())
    n = len(indices)
    central, plus, minus, rough = (np.empty(n) for _ in range(4))
    for k, i in enumerate(indices):
        at = np.unravel_index(int(i), x.shape)  # (indexing writes through any layout; a reshape may copy)
        old = float(x[at])
        ys = {}
        for step in (1, -1, 2, -2):
            x[at] = old + step * h
            ys[step] = _snapshot(f())
        x[at] = old
        p1, m1 = _contract(dy, ys[1], y0), _contract(dy, y0, ys[-1])
        p2, m2 = _contract(dy, ys[2], y0), _contract(dy, y0, ys[-2])
        plus[k], minus[k] = p1 / h, m1 / h
        central[k] = _contract(dy, ys[1], ys[-1]) / (2 * h)
        third = (p2 + m2) - 2 * (p1 + m1)    # 2 h^3 f'(3) where f is smooth
        fourth = (p2 - m2) - 4 * (p1 - m1)   # h^4 f'(4) where f is smooth
        rough[k] = max(abs(third), abs(fourth)) / h
    # Below the round-off of these sums (up to 16 times that of f) nothing can be told apart.
    eps = np.finfo(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64).eps
    noise = 16 * eps * float(np.sum(np.abs(dy * y0))) / h
    scale = max(np.max(np.abs(central), initial=0.0), 1e-300)
    kink = np.abs(plus - minus) > np.maximum(kink_tol * np.maximum(scale, np.abs(plus) + np.abs(minus)), noise)
    # A kink at distance d < h makes max(|third|, |fourth|) >= h J / 2 (J: the jump in
    # slope) and moves the central difference by at most J / 2.
    mag = np.maximum(np.abs(plus) + np.abs(minus), 2 * floor_ratio * scale)
    kink |= rough > np.maximum(smooth_tol * mag, noise)
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
                    check_input=True, kink_tol=1e-3, zero_margin=100.0, retries=1,
                    roundoff_margin=4.0):
    """Gradient-check ``module`` (a layer or a model) at input ``x``.

    ``module.forward(x, train)`` and ``module.backward(dy)`` are compared with
    central differences for the input (when ``check_input``) and every
    parameter. Everything must be float64. Dropout masks repeat across the
    evaluations because the backend is reseeded with ``seed`` before each forward.
    An array whose gradients are all within ``zero_margin`` times the round-off R
    of 0 is reported as zero up to round-off; a coordinate at a kink is measured again
    ``retries`` times, each with a 10x smaller step, before it is skipped; differences up to
    ``roundoff_margin`` times R are round-off and not counted (module docstring).
    Returns a :class:`GradcheckReport`; raises TypeError for arrays that are not
    float64 and ValueError when a gradient's shape differs from its array's.
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
    roundoff = np.finfo(np.float64).eps * float(np.sum(np.abs(_snapshot(dy) * _snapshot(y)))) / h
    dx = module.backward(dy)
    analytic = [("input", x, backend.to_host(dx))] if check_input else []
    analytic += [(name, p, backend.to_host(g())) for name, p, g in arrays]
    report = GradcheckReport(roundoff=roundoff, zero_margin=zero_margin, roundoff_margin=roundoff_margin)
    zero_bound = zero_margin * roundoff
    for name, arr, grad in analytic:
        if grad.shape != arr.shape:
            raise ValueError(f"check_gradients: gradient of {name} has shape {grad.shape}, "
                             f"the array {arr.shape}")
        idx = _sample(arr.size, max_coords, rng)
        num, kink = numerical_gradient(f, arr, dy, idx, h=h, kink_tol=kink_tol)
        if np.all(np.abs(grad) <= zero_bound) and np.all(np.abs(num) <= zero_bound):
            # Zero up to round-off: slopes this small are noise, not kinks.
            report.results.append(ArrayResult(name, tuple(arr.shape), len(idx), 0, 0.0, zero=True))
            continue
        for retry in range(1, retries + 1):
            # A coordinate within h of a kink is measured again with a 10x smaller step:
            # a kink at distance d stays in the way only while d < h.
            if not kink.any():
                break
            again = np.flatnonzero(kink)
            num[again], kink[again] = numerical_gradient(f, arr, dy, idx[again], h=h / 10 ** retry,
                                                         kink_tol=kink_tol)
        a = grad.reshape(-1)[idx]
        keep = ~kink
        err = (relative_error(a[keep], num[keep], atol=roundoff_margin * roundoff)
               if keep.any() else float("nan"))
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
    err = relative_error(g.reshape(-1)[idx][keep], num[keep]) if keep.any() else float("nan")
    report.results.append(ArrayResult("logits", tuple(logits.shape), int(keep.sum()), int(kink.sum()), err))
    return report
