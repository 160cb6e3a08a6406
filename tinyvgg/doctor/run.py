"""A short training run with the doctor watching (``python -m tinyvgg doctor``
calls :func:`run_doctor`)."""

from __future__ import annotations

from dataclasses import replace

from ..data import stratified_sample
from ..train import Trainer, TrainingDiverged, prepare_data
from .checks import Thresholds
from .hook import Doctor

__all__ = ["run_doctor", "DEFAULT_STEPS"]

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
