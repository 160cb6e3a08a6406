"""The doctor's checks: pure functions of what was recorded (an :class:`Observed`)
that return diagnoses, each with its plain-words text (what was seen, the likely
causes, what to try). Nothing here touches a model or a trainer.

Per recording step: :func:`check_nonfinite`, :func:`check_loss`,
:func:`check_gradient_flow`, :func:`check_dead`, :func:`check_updates`
(:data:`STEP_CHECKS`); per epoch: :func:`epoch_checks`; after a divergence:
:func:`diverged_diagnosis`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["KINDS", "Thresholds", "Diagnosis", "Observed", "STEP_CHECKS", "check_nonfinite", "check_loss",
           "check_gradient_flow", "check_dead", "check_updates", "epoch_checks", "diverged_diagnosis",
           "signal_fix", "update_ratios", "priority"]

KINDS = ("diverged", "loss_rising", "chance_loss", "vanishing_gradients", "exploding_gradients",
         "dead_relus", "update_too_large", "update_too_small", "overfitting", "evaluation_bug")

# The order in which a fix is believed: a run that blows up must be calmed first,
# a signal that never reaches the loss must be restored before anything else matters.
_PRIORITY = {k: i for i, k in enumerate(
    ("evaluation_bug", "diverged", "loss_rising", "update_too_large", "vanishing_gradients",
     "chance_loss", "update_too_small", "dead_relus", "exploding_gradients", "overfitting"))}


def priority(kind):
    """The rank of ``kind`` among the fixes to believe (0 first)."""
    return _PRIORITY.get(kind, 99)


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



def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _fmt(v, spec=".2e"):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return format(v, spec)


@dataclass
class Observed:
    """What the checks read, all plain data (the :class:`~tinyvgg.doctor.Doctor`
    hands over its own lists): ``records`` (one dict per recording step: step,
    loss, lr, layers {name: {stat: float}}), ``losses`` [(step, loss)] of every
    step, ``th`` (:class:`Thresholds`), ``num_classes``, ``config`` (the run's
    settings as a dict), ``layers`` [(name, kind)] of the tracked layers in
    forward order (kind: conv, linear, bn, lrn, relu) and ``weighted``, those of
    them with a weight."""

    records: list
    losses: list
    th: Thresholds
    num_classes: int | None
    config: dict
    layers: list
    weighted: list

    def lnk(self):
        """ln K, the loss of a uniform guess (None without a class count)."""
        return math.log(self.num_classes) if self.num_classes and self.num_classes > 1 else None

    def lr(self):
        return self.records[-1]["lr"] if self.records else self.config.get("lr", float("nan"))

    def cfg(self, key, default=None):
        return self.config.get(key, default)

    def recent_losses(self):
        w = self.th.window
        vals = [l for _, l in self.losses]
        return vals[-w:], vals


def signal_fix(obs):
    """``(fix_args, alt_args)`` for a signal that fades through the layers.

    BatchNorm first: in the measured runs (VGG-11 at width 1/4, about 200 steps)
    it learned on Fashion-MNIST and CIFAR-10 alike, while Glorot's initialisation
    learned on Fashion-MNIST but started too slowly on CIFAR-10. Glorot is the
    alternative that keeps the network as the paper has it (no BatchNorm)."""
    bn, init = obs.cfg("batch_norm"), obs.cfg("init")
    if bn:
        return [], []
    return ["--batch-norm"], (["--init", "glorot"] if init in ("paper", "he") else [])


def check_nonfinite(obs, step):
    rec = obs.records[-1]
    bad_act = next((n for n, _ in obs.layers
                    if not _finite(rec["layers"].get(n, {}).get("act_absmax", 0.0))), None)
    bad_grad = next((n for n, _ in reversed(obs.layers)
                     if any(not _finite(rec["layers"].get(n, {}).get(k, 0.0))
                            for k in ("grad_norm", "grad_out_norm"))), None)
    if bad_act is None and bad_grad is None and _finite(rec["loss"]):
        return []
    where = {"weights": None, "activations": bad_act, "gradients": bad_grad}
    return [diverged_diagnosis(obs, step, where, None)]


def check_loss(obs, step):
    out = []
    lnk = obs.lnk()
    recent, vals = obs.recent_losses()
    if not recent or lnk is None:
        return out
    m = float(np.mean(recent))
    done = len(vals)
    lr = obs.lr()
    if done >= obs.th.chance_after and abs(m - lnk) <= obs.th.chance_tol * lnk:
        first = float(np.mean(vals[:min(len(vals), obs.th.window)]))
        out.append(chance_diagnosis(obs, step, m, lnk, first, done))
    w = obs.th.window
    if done >= 2 * w and math.isfinite(m):
        earlier = [float(np.mean(vals[i:i + w])) for i in range(0, done - w - w + 1, w)]
        best = min(earlier) if earlier else m
        rising = m > best * obs.th.rising_factor and m - best > obs.th.rising_min
        if rising or m > obs.th.above_chance * lnk:
            out.append(Diagnosis(
                "loss_rising", "the training loss is going up",
                f"mean loss over the last {len(recent)} steps is {m:.3f}; the best earlier "
                f"stretch of {w} steps had {best:.3f} (chance is ln {obs.num_classes} = {lnk:.3f}).",
                ["the learning rate is too high: each step overshoots (lr is "
                 f"{lr:g}; look at the update/weight ratios in the table)",
                 "no BatchNorm and a deep stack: small weight changes are amplified",
                 "the learning-rate schedule or warm-up raises the rate too far",
                 "a bug in the gradient (check with `python -m tinyvgg gradcheck`)"],
                [f"divide the learning rate by 10 (--lr {lr / 10:g})",
                 "add BatchNorm (--batch-norm) or a warm-up (--warmup-epochs 1)"],
                step=step, fix_args=["--lr", f"{lr / 10:g}"]))
    return out


def chance_diagnosis(obs, step, m, lnk, first, done):
    """The causes are ordered by what the other checks see right now: a vanishing
    gradient first blames the initialisation, tiny steps the learning rate, and
    healthy gradients and steps the data."""
    init, bn, lr = obs.cfg("init"), obs.cfg("batch_norm"), obs.lr()
    vanishing = any(d.kind == "vanishing_gradients" for d in check_gradient_flow(obs, step))
    small = any(d.kind == "update_too_small" for d in check_updates(obs, step))
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
        fix_args, alt_args = signal_fix(obs)
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
    last_lin = obs.weighted[-1][0] if obs.weighted else None
    std = obs.records[-1]["layers"].get(last_lin, {}).get("act_std") if last_lin else None
    return Diagnosis(
        "chance_loss", "the loss is stuck at chance level",
        f"after {done} steps the mean loss over the last {min(done, obs.th.window)} steps is "
        f"{m:.4f}, within {obs.th.chance_tol:.0%} of ln {obs.num_classes} = {lnk:.4f} "
        f"(the loss of a uniform guess); it started at {first:.4f}"
        + (f"; the logits' standard deviation is {std:.2e}" if _finite(std) else "") + ".",
        causes, fixes, step=step, fix_args=fix_args, alt_args=alt_args)


def check_gradient_flow(obs, step):
    out = []
    if len(obs.weighted) < 2:
        return out
    first, last = obs.weighted[0][0], obs.weighted[-1][0]
    ratios = []
    for rec in obs.records[-obs.th.recent:]:
        a = rec["layers"].get(last, {}).get("grad_out_norm")
        b = rec["layers"].get(first, {}).get("grad_out_norm")
        if _finite(a) and _finite(b) and a > 0:
            ratios.append(a / b if b > 0 else float("inf"))
    if not ratios:
        return out
    r = float(np.exp(np.mean(np.log(ratios)))) if all(math.isfinite(x) for x in ratios) \
        else float("inf")
    rec = obs.records[-1]["layers"]
    gn_first = rec.get(first, {}).get("grad_norm")
    gn_last = rec.get(last, {}).get("grad_norm")
    path = " > ".join(f"{n} {_fmt(rec.get(n, {}).get('grad_out_norm'), '.1e')}"
                      for n, _ in reversed(obs.weighted))
    bn, init = obs.cfg("batch_norm"), obs.cfg("init")
    if r > obs.th.vanishing:
        fix_args, alt_args = signal_fix(obs)
        small = not bn and init in ("paper", "he")
        out.append(Diagnosis(
            "vanishing_gradients", "the gradient vanishes on its way to the input",
            f"||dL/dy|| at the output of {last} (the logits) is {r:.3g} times ||dL/dy|| at the "
            f"output of {first}, the first layer (threshold {obs.th.vanishing:g}); going "
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
    elif r < 1.0 / obs.th.exploding:
        out.append(Diagnosis(
            "exploding_gradients", "the gradient grows on its way to the input",
            f"||dL/dy|| at the output of {first} is {1 / r:.3g} times the one at the logits "
            f"({last}) (threshold {obs.th.exploding:g}); going backwards: {path}.",
            ["an initialisation too large for the depth", "no BatchNorm in a deep stack",
             "a learning rate high enough to blow the weights up"],
            ["use --init glorot or add --batch-norm", "lower the learning rate"],
            step=step, layer=first, fix_args=["--batch-norm"]))
    return out


def check_dead(obs, step):
    recs = obs.records[-obs.th.recent:]
    bad = []
    for name, kind in obs.layers:
        if kind != "relu":
            continue
        vals = [r["layers"].get(name, {}).get("dead") for r in recs]
        vals = [v for v in vals if _finite(v)]
        if vals and float(np.mean(vals)) >= obs.th.dead:
            bad.append((name, float(np.mean(vals))))
    if not bad:
        return []
    last = obs.records[-1]["layers"]
    zero_w = [n for n, _ in obs.weighted if last.get(n, {}).get("weight_norm") == 0.0]
    lr = obs.lr()
    # Is the signal entering the dead layers all but gone? Then each unit's output is
    # its bias, and a slightly negative bias switches it off for every input.
    names = [n for n, _ in obs.layers]
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
        fix_args = signal_fix(obs)[0]
    else:
        fix_args = ["--lr", f"{lr / 10:g}"]
    return [Diagnosis(
        "dead_relus", "many ReLU units are dead",
        "dead units (zero for every example of the batch) by layer: "
        + ", ".join(f"{n} {v:.0%}" for n, v in bad)
        + f" (threshold {obs.th.dead:.0%})" + (f"; zero weights: {', '.join(zero_w)}" if zero_w else "") + ".",
        causes, fixes, step=step, layer=zero_w[0] if zero_w else first, fix_args=fix_args)]


def recent_per_layer(obs, key):
    """Per weighted layer: geometric mean of ``key`` over the recent recordings
    (step 0 is left out once there are later ones: the momentum buffer is not
    yet built up)."""
    recs = [r for r in obs.records if r["step"] > 0] or obs.records
    recs = recs[-obs.th.recent:]
    per_layer = {}
    for name, _ in obs.weighted:
        v = [r["layers"].get(name, {}).get(key) for r in recs]
        v = [x for x in v if _finite(x) and x > 0]
        if v:
            per_layer[name] = float(np.exp(np.mean(np.log(v))))
    return per_layer

def update_ratios(obs):
    return recent_per_layer(obs, "update_ratio")


def check_updates(obs, step):
    per_layer = update_ratios(obs)
    if not per_layer:
        return []
    overall = float(np.exp(np.mean(np.log(list(per_layer.values())))))
    lr = obs.lr()
    listing = ", ".join(f"{n} {v:.1e}" for n, v in per_layer.items())
    if overall > obs.th.update_high:
        # About 1e-3 would need lr * 1e-3 / ratio; past ~1 the ratio no longer scales
        # with lr (the run is blowing up), so divide by 10 to 1000 at most.
        new = lr / 10 ** min(3, max(1, round(math.log10(overall / 1e-3))))
        return [Diagnosis(
            "update_too_large", "each step changes the weights too much",
            f"||dW|| / ||W|| is {overall:.1e} on average over the layers (healthy: about 1e-3, "
            f"threshold {obs.th.update_high:g}); per layer: {listing}.",
            [f"the learning rate ({lr:g}) is too high", "momentum adds up to 1/(1-momentum) "
             "times the gradient step", "weights that are tiny (a small initialisation) make "
             "every step large compared with them"],
            [f"lower the learning rate to about {new:g} (--lr {new:g})",
             "use a warm-up (--warmup-epochs 1)"],
            step=step, fix_args=["--lr", f"{new:g}"])]
    steps = recent_per_layer(obs, "grad_step_ratio")
    lnk = obs.lnk()
    recent, _ = obs.recent_losses()
    still_high = lnk is None or not recent or float(np.mean(recent)) > obs.th.learned * lnk
    if not steps or not still_high:
        return []
    g_overall = float(np.exp(np.mean(np.log(list(steps.values())))))
    if g_overall >= obs.th.update_low:
        return []
    bn, init = obs.cfg("batch_norm"), obs.cfg("init")
    small_init = not bn and init in ("paper", "he")
    fix_args, alt_args = signal_fix(obs) if small_init else (["--lr", f"{lr * 10:g}"], [])
    wd = obs.cfg("weight_decay", 0.0) or 0.0
    rel = recent_per_layer(obs, "grad_norm")
    w = recent_per_layer(obs, "weight_norm")
    decayed = [n for n in rel if n in w and w[n] > 0 and rel[n] / w[n] < wd]
    return [Diagnosis(
        "update_too_small", "the gradient hardly moves the weights",
        f"the gradient-driven step lr * ||dL/dW|| / ||W|| / (1 - momentum) is {g_overall:.1e} on "
        f"average over the layers (threshold {obs.th.update_low:g}; the whole update "
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


def epoch_checks(obs, ev):
    """The diagnoses of one end-of-epoch evaluation ``ev`` (what
    :func:`tinyvgg.doctor.record.evaluate_modes` measured): overfitting, evaluation bugs."""
    out = []
    step = ev.get("step")
    tr, va = ev.get("train_acc_eval"), ev.get("val_acc_eval")
    rep = ev.get("val_acc_reported")
    k = obs.num_classes or 2
    if _finite(tr) and _finite(va) and tr - va > obs.th.overfit_gap:
        wd, do = obs.cfg("weight_decay", 0.0), obs.cfg("dropout", 0.0)
        lim = obs.cfg("limit")
        out.append(Diagnosis(
            "overfitting", "training accuracy is far above validation accuracy",
            f"after epoch {ev['epoch']}: training accuracy {tr:.3f} vs validation accuracy "
            f"{va:.3f} (both in evaluation mode, on {ev.get('train_n')} and {ev.get('val_n')} "
            f"images; gap threshold {obs.th.overfit_gap:g}).",
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
    if _finite(rep) and _finite(va) and n_val >= 50 and abs(rep - va) > obs.th.eval_gap:
        problems.append(f"the trainer reported validation accuracy {rep:.3f} but evaluating the "
                        f"same weights with train=False gives {va:.3f} on {n_val} of its "
                        f"{ev.get('val_size')} images")
    if _finite(tr) and _finite(va) and n_val >= 50 and va - tr > obs.th.eval_gap \
            and va > 1.0 / k + obs.th.eval_gap:
        problems.append(f"validation accuracy {va:.3f} is far above training accuracy {tr:.3f} "
                        f"(same weights, evaluation mode)")
    if problems:
        out.append(Diagnosis(
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
    return out


def diverged_diagnosis(obs, step, where, exc):
    lr = obs.lr()
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
    recent = [r for r in obs.records if _finite(r["loss"])]
    if recent:
        parts.append(f"the last finite recorded loss was {recent[-1]['loss']:.4g} at step "
                     f"{recent[-1]['step']}")
    ratios = update_ratios(obs)
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


# The checks run on every recording step, in this order.
STEP_CHECKS = (check_nonfinite, check_loss, check_gradient_flow, check_dead, check_updates)
