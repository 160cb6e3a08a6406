"""The doctor as a :class:`~tinyvgg.train.Trainer` hook: it records on every
``every``-th step (:mod:`.record`), runs the checks (:mod:`.checks`), warns once per
kind of problem and writes the report at the end (:mod:`.report`)."""

from __future__ import annotations

import sys

import numpy as np

from .. import backend
from . import report as report_
from .checks import (STEP_CHECKS, Observed, Thresholds, check_dead, check_gradient_flow, check_loss,
                     check_updates, diverged_diagnosis, epoch_checks, priority)
from .record import (LayerRecorder, evaluate_modes, kind_of, norm, probe_divergence, read_back,
                     tracked_layers)

__all__ = ["Doctor"]


class Doctor:
    """A :class:`~tinyvgg.train.Trainer` hook that records per-layer statistics and
    diagnoses the run (see the docstring of :mod:`tinyvgg.doctor`).

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

    diagnoses_training = True  # what Trainer looks for when TrainConfig(doctor=True)

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
        self._recorder = None     # the model hook of the recording steps (record.LayerRecorder)
        self._hooked = False
        self._pending = None
        self._pending_losses = []  # device scalars not yet read back (GPU)
        self._is_main = True
        self._finished = False
        self._epoch_rec_start = 0

    # -- wiring ------------------------------------------------------------------

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
        self._tracked = tracked_layers(model)
        self._weighted = [(n, l) for n, l in self._tracked if "weight" in l.params]
        self._recorder = LayerRecorder(self._tracked)

    def _install(self):
        """Watch the tracked layers (a model hook) until the next after_backward."""
        if self._hooked:
            return
        self._recorder.acts, self._recorder.gouts = {}, {}
        self._model.add_hook(self._recorder)
        self._hooked = True

    def _remove(self):
        if self._hooked:
            self._model.remove_hook(self._recorder)
        self._hooked = False

    def _recording(self, step):
        return step % self.every == 0

    def observed(self):
        """What the checks read (:class:`~tinyvgg.doctor.checks.Observed`), without copies."""
        return Observed(self.records, self.losses, self.th, self.num_classes, self.config,
                        [(n, kind_of(l)) for n, l in self._tracked],
                        [(n, kind_of(l)) for n, l in self._weighted])

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
        acts, gouts = self._recorder.acts, self._recorder.gouts
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
                stats[name]["grad_norm"] = norm(g)
            stats[name]["weight_norm"] = norm(w)
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
                    stats[name]["update_norm"] = norm(layer.params["weight"] - snapshot[name])
            self._flush_losses()
            host = read_back(stats)
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
        ev = evaluate_modes(trainer, self._model, record, self.eval_images)
        self.epochs.append(ev)
        for d in epoch_checks(self.observed(), ev):
            self._add(d)
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
        self._remove()
        self._flush_losses()
        if "diverged" not in self.diagnoses:
            step = getattr(trainer, "global_step", None)
            where = probe_divergence(trainer, self._model)
            self._add(diverged_diagnosis(self.observed(), step, where, exc))
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
        obs = self.observed()
        for check in STEP_CHECKS:
            for d in check(obs, step):
                self._add(d)

    # -- the end -----------------------------------------------------------------
    def finish(self, trainer=None):
        """Mark what is no longer seen as resolved, print the report and write the
        files (once)."""
        if self._finished:
            return
        self._finished = True
        self._remove()
        self._flush_losses()
        obs = self.observed()
        if self.losses and obs.lnk() is not None and "diverged" not in self.diagnoses:
            # The loss after the last recording step counts too.
            for d in check_loss(obs, self.losses[-1][0]):
                if d.kind not in self.diagnoses:
                    self._add(d)
        if self.records and "diverged" not in self.diagnoses:
            still = set()
            for check in (check_loss, check_gradient_flow, check_dead, check_updates):
                still |= {d.kind for d in check(obs, self.records[-1]["step"])}
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
        return sorted(self.diagnoses.values(), key=lambda d: (d.resolved, priority(d.kind)))

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


    # -- the report (tinyvgg.doctor.report) ----------------------------------------
    def table(self, record=None):
        """The per-layer statistics of one recording (default the last) as text."""
        return report_.table(self, record)

    def summary(self):
        """A few lines: the configuration, the loss at the start and the end, and the
        accuracies of every epoch."""
        return report_.summary(self)

    def report(self, markdown=True):
        """The diagnoses, the suggested fix and the per-layer tables (first and last
        recordings), as Markdown (``doctor_report.md``) or plain text."""
        return report_.report(self, markdown)

    def to_dict(self):
        return report_.to_dict(self)

    def save(self, folder):
        """Write ``doctor.json``, ``doctor_layers.png`` and ``doctor_report.md`` into
        ``folder``; returns {"json", "plot", "report"} paths."""
        return report_.save(self, folder)


def _write(text):
    try:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stdout)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, flush=True)
