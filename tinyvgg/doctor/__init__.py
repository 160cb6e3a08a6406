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
suggests a fix (:func:`run_doctor`, printed by :mod:`tinyvgg.cli`). ``python -m tinyvgg train --doctor``
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
``train_begin``) the doctor adds a hook to the model (``model.add_hook``, a
:class:`~tinyvgg.doctor.record.LayerRecorder`) that keeps a few device scalars
about each tracked layer's output and the gradient reaching it;
``after_backward`` of the recording step removes it again. The layers are never
modified, and between recordings the model runs its plain loop: a non-recording
step costs the doctor one list append (the loss). The statistics stay on the
device and are read back with one copy per recording step.

Diagnoses (kinds)
-----------------
``diverged``, ``loss_rising``, ``chance_loss``, ``vanishing_gradients``,
``exploding_gradients``, ``dead_relus``, ``update_too_large``,
``update_too_small``, ``overfitting``, ``evaluation_bug``. Each is a
:class:`Diagnosis` with what was seen, the likely causes (most likely first)
and what to try; the thresholds live in :class:`Thresholds`. Each kind is
warned about once, when first seen; the report lists them all at the end.

The package
-----------
:mod:`.record` (statistics through model hooks, the doctor's own evaluation, the
divergence probe), :mod:`.checks` (pure functions returning :class:`Diagnosis`
objects with their plain-words text), :mod:`.report` (table, report, JSON and the
per-layer picture), :mod:`.hook` (the :class:`Doctor` trainer hook tying them
together) and :mod:`.run` (:func:`run_doctor`, a short run with the doctor).
"""

from .checks import KINDS, Diagnosis, Observed, Thresholds
from .hook import Doctor
from .report import plot_layer_stats
from .run import DEFAULT_STEPS, run_doctor

__all__ = ["Doctor", "Diagnosis", "Thresholds", "Observed", "KINDS", "run_doctor", "plot_layer_stats",
           "DEFAULT_STEPS"]
