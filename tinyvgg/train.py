"""Training a VGG: data, augmentation, SGD with a schedule, progress, history, checkpoints.

One run lives in one folder (``--out runs/NAME``)::

    config.json       the run's settings
    history.json/csv  one record per epoch: losses, accuracies, learning rate, time
    curves.png        loss and accuracy curves, redrawn after every epoch
    checkpoint.npz    the latest state (atomic writes), also written on Ctrl-C
    metrics.json      final test accuracy (and top-5, loss)

Reproducibility and exact resume. The data order of epoch e and the augmentation
of its batch b depend only on (seed, e, b) (see :class:`tinyvgg.data.DataLoader`),
and the dropout masks of step (e, b) come from the backend reseeded with
(seed, e, b) before the step. A checkpoint stores the weights, the optimiser's
momentum buffers, the schedule and the position (epoch, batch), so a resumed run
makes exactly the steps an uninterrupted one makes, and ends with the same
weights on the CPU.

What goes wrong is said plainly: a NaN or infinite loss stops the run at once
with the step, the learning rate and the usual causes.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from . import backend
from .evaluate import evaluate, topk_correct
from .fileio import atomic_open, atomic_write_text
from .losses import SoftmaxCrossEntropy
from .models import DEFAULT_INIT, resolve_name

__all__ = ["TrainConfig", "RECIPES", "Trainer", "TrainingDiverged", "GPUOutOfMemory", "train", "prepare_data",
           "resume_config", "init_from_config"]


# The paper's recipe (section 3.1): batch 256, momentum 0.9, weight decay 5e-4 on every
# parameter, dropout 0.5 on the first two FC layers, lr 1e-2 divided by 10 when the
# validation accuracy stops improving. One option away: ``train --recipe paper``.
PAPER_RECIPE = dict(batch_size=256, lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
                    decay_bias_and_norm=True, dropout=0.5, schedule="plateau", warmup_epochs=0.0,
                    label_smoothing=0.0, tta_flip=False)
RECIPES = {"default": {}, "paper": PAPER_RECIPE}
# What a config saved before these settings existed trained with (its recipe, and
# the seeded shuffle that drew its --limit and validation images).
_SAVED_BEFORE = dict(decay_bias_and_norm=True, label_smoothing=0.0, tta_flip=False, recipe="none",
                     sampling="shuffle")


@dataclass
class TrainConfig:
    """Everything a run needs; the command line fills it (``python -m tinyvgg train``).

    The defaults are the ``default`` recipe, chosen by measurement for BatchNorm VGGs
    on CIFAR-10 (``experiments/results/recipe_ablation.md`` has the table and the
    command of each row): one cycle over the given epochs (linear warm-up over the
    first ``pct_start`` of the steps to ``lr``, then cosine to near zero), SGD with
    Nesterov momentum 0.9, batch 128, weight decay 5e-4 on conv and FC weights only,
    no dropout; validation and test accuracy average each image's
    posteriors with its mirror image's (flip test-time augmentation, ``tta_flip``).
    ``lr=None`` means 0.1 with BatchNorm and the
    paper's 0.01 without it (0.1 was measured with BatchNorm only).
    ``TrainConfig.from_recipe("paper", ...)`` gives the paper's recipe instead.
    """

    model: str = "vgg11"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None            # None: 0.1 with BatchNorm, 0.01 without
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_bias_and_norm: bool = False  # weight decay on biases and BatchNorm's gamma/beta too
    nesterov: bool = True
    schedule: str = "onecycle"         # onecycle | cosine | plateau (the paper's) | step | constant
    pct_start: float = 0.15            # onecycle: fraction of the steps spent warming up
    patience: int = 2
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0       # measured +0.36 +- 0.48 points at 4 epochs: not a default
    tta_flip: bool = True              # validation and test score image + mirror image (measured: +1.1 points)
    recipe: str = "default"            # which preset the other settings started from
    width: float = 0.25
    hidden: int | None = None          # default: 4096 * width
    batch_norm: bool = False
    dropout: float = 0.0
    init: str = DEFAULT_INIT           # glorot: torchvision's N(0, 0.01) FC init starves narrow nets
    input_size: int | None = None      # default: the dataset's size rounded up to a multiple of 32
    val_size: float = 0.1              # fraction (or count, if >= 1) of the training set held out
    flip: bool = True
    crop_padding: int = 4
    scale: tuple | None = None         # S or (S_min, S_max): isotropic rescale before the crop
    pca: bool = False
    limit: int | None = None           # use only LIMIT training images, a stratified sample (quick runs)
    eval_batch_size: int = 256
    seed: int = 0                      # initialisation, batch order, augmentation, dropout
    # The seed of the --limit sample and the validation hold-out; None: ``seed``. Runs that
    # differ only in ``seed`` and share a ``split_seed`` share their validation images
    # (seed-to-seed studies compare them image by image).
    split_seed: int | None = None
    device: str = "cpu"
    out: str = "runs/latest"
    progress: bool = True
    log_every: int = 10
    doctor: bool = False
    doctor_every: int = 50
    dtype: str = "float32"
    # Copies of the model on this machine's cores, each stepping a share of every batch in a
    # process of its own (tinyvgg.replicas); None: tinyvgg.replicas.default_replicas decides.
    replicas: int | None = None
    # How --limit and the validation hold-out are drawn: "stratified" (seeded, class
    # proportions kept); "shuffle" is how runs saved before it drew them (a resumed or
    # evaluated old run rebuilds the same split).
    sampling: str = "stratified"
    init_from: str | None = None       # fine-tune: start from this checkpoint's weights and architecture
    mean: list | None = None           # input normalisation ([0, 255] units) instead of the training
    std: list | None = None            # set's statistics; --init-from keeps the checkpoint's

    def __post_init__(self):
        # A "_bn" model name (vgg11_bn, torchvision's) builds BatchNorm layers: the settings
        # that depend on BatchNorm (the default lr, the batch-of-1 check) must know it.
        try:
            self.batch_norm = resolve_name(self.model, self.batch_norm)[1]
        except ValueError:
            pass  # an unknown name: reported with the valid ones when the model is built
        if self.lr is None:
            self.lr = 0.1 if self.batch_norm else 0.01

    @classmethod
    def from_recipe(cls, recipe="default", **settings):
        """A config that starts from a named recipe (``default`` or ``paper``); any
        ``settings`` given override it. ValueError names the recipes for an unknown one."""
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
        return cls(**{**RECIPES[recipe], "recipe": recipe, **settings})

    def to_dict(self):
        d = asdict(self)
        if d["scale"] is not None:
            d["scale"] = list(d["scale"]) if isinstance(d["scale"], (tuple, list)) else d["scale"]
        return d

    @classmethod
    def from_dict(cls, d):
        """The config saved by :meth:`to_dict` (a run's ``config.json`` or a checkpoint's
        ``train_config``). Settings that older runs did not save take the values those
        runs trained with (no label smoothing, weight decay on every parameter, the
        shuffled hold-out), so a resumed old run continues with its own recipe and data.
        ValueError for unknown names."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown settings {sorted(unknown)}")
        return cls(**{**_SAVED_BEFORE, **d})


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class GPUOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message names the batch size and a smaller one."""


class _Interrupted(Exception):
    pass


def _reraise_oom(e, batch_size, flag):
    from .ops.gpu import is_out_of_memory, oom_message
    if is_out_of_memory(e):
        raise GPUOutOfMemory(oom_message(batch_size, e, flag=flag)) from e


def _native_size(ds):
    im = ds.images[0]
    return max(im.shape[0], im.shape[1])


def _check_options(cfg):
    """The settings that make no sense whatever the data: ValueError naming the option."""
    def number(v):  # a real number (a Python or NumPy one), not a bool or a string
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    def whole(v):
        return number(v) and float(v) == int(v)

    for opt, v, lo in (("--batch-size", cfg.batch_size, 1), ("--eval-batch-size", cfg.eval_batch_size, 1),
                       ("--crop-padding", cfg.crop_padding, 0), ("--epochs", cfg.epochs, 1),
                       ("--log-every", cfg.log_every, 1), ("--doctor-every", cfg.doctor_every, 1)):
        if not whole(v) or v < lo:
            raise ValueError(f"{opt} must be a whole number of at least {lo}, got {v!r}")
    if cfg.batch_norm and cfg.batch_size < 2:
        raise ValueError(f"--batch-size {cfg.batch_size} with --batch-norm: BatchNorm needs batches "
                         f"of at least 2 images; use --batch-size 2 or more, or --no-batch-norm")
    if cfg.hidden is not None and (not whole(cfg.hidden) or cfg.hidden < 1):
        raise ValueError(f"--hidden must be a whole number of units of at least 1 (or left out: "
                         f"4096 x --width), got {cfg.hidden!r}")
    if not number(cfg.dropout) or not 0 <= cfg.dropout < 1:
        raise ValueError(f"--dropout must be a probability in [0, 1) (1 would drop every unit of "
                         f"the hidden layers), got {cfg.dropout!r}")
    if not isinstance(cfg.out, (str, os.PathLike)) or not str(cfg.out).strip():
        raise ValueError(f"--out must name a folder for the run's files, got {cfg.out!r}")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out} is a file, not a folder: give a folder for the run's "
                         f"files (checkpoint, history, plots)")
    if cfg.replicas is not None and (not whole(cfg.replicas) or cfg.replicas < 1):
        raise ValueError(f"--replicas must be a whole number of at least 1 (1: no replicas; left "
                         f"out: one per core when a step is large enough), got {cfg.replicas!r}")
    if cfg.split_seed is not None and (not whole(cfg.split_seed) or cfg.split_seed < 0):
        raise ValueError(f"--split-seed must be a whole number of at least 0, got {cfg.split_seed!r}")
    if cfg.limit is not None and (not whole(cfg.limit) or cfg.limit < 1):
        raise ValueError(f"--limit must be a positive number of images, got {cfg.limit!r}")
    vs = cfg.val_size
    if not number(vs) or vs <= 0 or (vs >= 1 and not whole(vs)):
        raise ValueError(f"--val-size must be a fraction in (0, 1) or a whole number of images "
                         f"(at least 1), got {vs!r}: training needs a validation set")
    if cfg.input_size is not None and (not whole(cfg.input_size) or cfg.input_size < 32
                                       or cfg.input_size % 32):
        raise ValueError(f"--input-size must be a multiple of 32 and at least 32 (VGG's five "
                         f"2x2 max-pools halve it five times), got {cfg.input_size!r}")
    if cfg.scale is not None:
        lo, hi = _scale_range(cfg.scale)
        if lo < 1 or lo > hi:
            raise ValueError(f"--scale must be S or S_MIN,S_MAX with 1 <= S_MIN <= S_MAX, "
                             f"got {cfg.scale!r}")
    if cfg.sampling not in ("stratified", "shuffle"):
        raise ValueError(f"sampling must be 'stratified' or 'shuffle', got {cfg.sampling!r}")


def _scale_range(scale):
    if isinstance(scale, (list, tuple)):
        if len(scale) not in (1, 2):
            raise ValueError(f"--scale must be S or S_MIN,S_MAX, got {scale!r}")
        return int(scale[0]), int(scale[-1])
    return int(scale), int(scale)


def prepare_data(cfg, classes=None):
    """Load the training, validation and test sets and build their transforms.

    ``classes``: the class names the labels must use (a resumed run's checkpoint);
    default: the training data's. Every split is labelled by class *name*, so a test
    folder lacking a class keeps the others' labels; a class the model does not know
    is an error (:class:`tinyvgg.data.UnknownClassError`).

    Every setting is checked against the data before anything is trained: ValueError
    naming the option (--val-size, --limit, --batch-size, --input-size, --scale, ...)
    and the numbers.

    Returns a dict with ``train``, ``val``, ``test`` (Datasets), ``train_transform``,
    ``eval_transform``, ``mean``, ``std``, ``classes``, ``input_size`` and
    ``test_split`` (which split the final test accuracy is computed on).
    """
    from .data import EvalTransform, TrainTransform, align_classes, compute_mean_std, compute_pca, \
        load_dataset, load_size, padded_side, split_source, train_val_split

    _check_options(cfg)
    name = cfg.dataset
    if name == "folder" and cfg.data_dir is None:
        raise ValueError("--dataset folder needs --data-dir, the root of the class folders")
    # Class folders of mixed sizes load as lists when the transforms rescale them
    # (--scale); otherwise --input-size fixes one size at load time (for the built-in
    # datasets only when it is larger than their images padded to a multiple of 32).
    size = load_size(name, cfg.input_size, cfg.scale)
    full = load_dataset(name, cfg.data_dir, split="train", size=size)
    test_split = "test"
    try:
        test = load_dataset(name, cfg.data_dir, split="test", size=size)
    except (FileNotFoundError, ValueError):
        test = None
    if not isinstance(full.images, np.ndarray) and cfg.scale is None:
        raise ValueError(f"{cfg.data_dir}: the images have different sizes; give --input-size "
                         f"(rescale and centre-crop at load time) or --scale S")
    if classes is None and len(full.classes) < 2:
        raise ValueError(f"{cfg.data_dir or name}: the training images are of "
                         f"{len(full.classes)} class ({', '.join(map(str, full.classes))}): a "
                         f"classifier needs at least 2 (one folder of images per class)")
    if name == "folder" and test is not None and _same_dataset(full, test):
        test = None  # no test folder: load_dataset returned the training folder again
    if cfg.limit is not None and cfg.limit > len(full):
        raise ValueError(f"--limit {cfg.limit} is more than the {len(full)} training images of "
                         f"{cfg.data_dir or name}; give at most {len(full)}, or leave --limit out "
                         f"to train on all of them")
    if classes is not None:
        full = align_classes(full, classes, where=f"{cfg.data_dir or name} (training split)")
    if test is not None:
        # By class name: a test folder without some class keeps the others' labels.
        test = align_classes(test, full.classes, where=f"{cfg.data_dir or name} (test split)")
    # The one split function: `evaluate --split val` rebuilds the same validation set.
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    train_ds, val_ds = train_val_split(full, cfg.val_size, split_seed, cfg.sampling != "shuffle",
                                       cfg.limit, cfg.batch_norm)
    if test is None:
        test, test_split = val_ds, "validation (the dataset has no test split)"
    if cfg.mean is not None and cfg.std is not None:
        mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
        if len(mean) != _channels(train_ds) or len(std) != len(mean):
            source = f"--init-from {cfg.init_from}" if cfg.init_from else "the configured mean/std"
            raise ValueError(f"{source}: the network takes {len(mean)}-channel images, the "
                             f"{cfg.dataset} images have {_channels(train_ds)} channel(s)")
    else:
        mean, std = compute_mean_std(train_ds)
    size = cfg.input_size or padded_side(_native_size(train_ds))
    pca = compute_pca(train_ds) if cfg.pca else None
    scale = tuple(cfg.scale) if isinstance(cfg.scale, (list, tuple)) else cfg.scale
    if scale is not None and _scale_range(scale)[0] < size:
        raise ValueError(f"--scale {cfg.scale} is smaller than the {size} x {size} crop "
                         f"(--input-size{'' if cfg.input_size else ', from the image size'}): "
                         f"give --scale of at least {size}, or a smaller --input-size")
    # Batches in the model's dtype (--dtype float64: computed in float64 too).
    train_tf = TrainTransform(size, mean, std, padding=cfg.crop_padding if scale is None else 0,
                              scale=scale, flip=cfg.flip, pca=pca, dtype=cfg.dtype)
    eval_tf = EvalTransform(size, mean, std, scale=scale, dtype=cfg.dtype)
    return {"train": train_ds, "val": val_ds, "test": test, "train_transform": train_tf,
            "eval_transform": eval_tf, "mean": mean, "std": std, "classes": list(full.classes),
            "input_size": size, "test_split": test_split, "channels": _channels(train_ds),
            # what the split was drawn from: a resumed run or `evaluate --split val` checks it
            "source": split_source(full)}


def _channels(ds):
    im = ds.images[0]
    return 1 if im.ndim == 2 else int(im.shape[2])


def _same_dataset(a, b):
    return len(a) == len(b) and getattr(a, "paths", None) is not None and a.paths == b.paths




class Trainer:
    """Runs one training: ``Trainer(cfg).run()`` returns the final metrics dict.

    Hooks (``hooks=[...]``) are objects with any of the methods
    ``after_backward(trainer, step)``, ``after_step(trainer, step, loss)``,
    ``epoch_end(trainer, record)`` and ``train_end(trainer)``, plus ``train_begin(trainer)``
    (before the first step) and ``diverged(trainer, error)`` (before TrainingDiverged
    propagates); the training
    doctor and data-parallel training plug in through them (the trainer knows
    neither: the command line adds the doctor when ``cfg.doctor`` asks for it).
    ``shard=(rank, world)`` makes this process train on its share of every
    global batch (data-parallel training); only rank 0 writes files and prints.
    """

    def __init__(self, cfg, hooks=(), shard=None, data=None):
        self.cfg = cfg
        self.hooks = list(hooks)
        if cfg.doctor and not any(getattr(h, "diagnoses_training", False) for h in self.hooks):
            # The trainer does not import the doctor: a setting that asks for it must
            # not be dropped in silence.
            raise ValueError("TrainConfig(doctor=True) needs the doctor's hook: pass "
                             "hooks=[tinyvgg.doctor.Doctor(every=cfg.doctor_every)] (the command line's "
                             "--doctor does this), or set doctor=False")
        self.rank, self.world = shard or (0, 1)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        self.history = []
        self.loss_fn = SoftmaxCrossEntropy(label_smoothing=cfg.label_smoothing)
        self._data = data
        self.replicas = None  # set by setup(): tinyvgg.replicas.Replicas, or None
        self.epoch = 0          # epochs completed
        self.step_in_epoch = 0  # batches completed in the current epoch
        self.global_step = 0

    # -- set-up ----------------------------------------------------------------
    def setup(self, resume_state=None):
        from .models import hidden_width, vgg
        from .optim import SGD, make_schedule

        if resume_state is None:
            self.cfg = init_from_config(self.cfg)  # (what train() did already: idempotent)
        cfg = self.cfg
        backend.use(cfg.device)
        backend.seed(cfg.seed)
        if self._data is not None:
            _check_options(cfg)
            self.data = self._data
        else:
            # A resumed run's labels follow its checkpoint's classes, by name.
            classes = resume_state.meta.get("classes") if resume_state is not None else None
            self.data = prepare_data(cfg, classes=classes)
        d = self.data
        for part, fix in (("train", "--limit / --val-size"), ("val", "--val-size"),
                          ("test", "the test folder")):
            if len(d[part]) == 0:
                raise ValueError(f"the {part} set is empty; check {fix}")
        self.num_classes = len(d["classes"])
        hidden = hidden_width(cfg.width) if cfg.hidden is None else cfg.hidden
        if resume_state is not None:
            self.model = resume_state.model.to(cfg.device)
        else:
            self.model = vgg(cfg.model, num_classes=self.num_classes, input_size=d["input_size"],
                             width=cfg.width, batch_norm=cfg.batch_norm, hidden=hidden,
                             dropout=cfg.dropout, init=cfg.init, dtype=np.dtype(cfg.dtype),
                             in_channels=self.data["channels"])
            if cfg.init_from:
                self._init_weights_from(cfg.init_from)
            self.model.to(cfg.device)
        from .data import DataLoader
        n_train = len(d["train"])
        drop_last = cfg.batch_norm and n_train % cfg.batch_size == 1  # BN cannot take a batch of 1
        dtype = self.model.dtype  # the batches go into the model: same dtype (--dtype, or a resumed checkpoint's)
        self.train_loader = DataLoader(d["train"], cfg.batch_size, d["train_transform"], shuffle=True,
                                       seed=cfg.seed, drop_last=drop_last, dtype=dtype)
        self.val_loader = DataLoader(d["val"], cfg.eval_batch_size, d["eval_transform"], shuffle=False,
                                     dtype=dtype)
        self.test_loader = DataLoader(d["test"], cfg.eval_batch_size, d["eval_transform"], shuffle=False,
                                      dtype=dtype)
        self.replicas = self._replicas()
        self.optimizer = SGD(self.model, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             nesterov=cfg.nesterov, decay_bias_and_norm=cfg.decay_bias_and_norm)
        self.schedule = make_schedule(cfg.schedule, self.optimizer, epochs=cfg.epochs,
                                      steps_per_epoch=len(self.train_loader), patience=cfg.patience,
                                      warmup_epochs=cfg.warmup_epochs, pct_start=cfg.pct_start)
        if resume_state is not None:
            meta = resume_state.meta
            if self.is_main and d.get("source"):  # (data given by the caller may not say)
                from .data import warn_if_source_changed
                warn_if_source_changed(meta.get("data_source"), d["source"], cfg.data_dir or cfg.dataset,
                                       "The resumed run trains and validates on the data as it is now.")
            self.optimizer.load_state_dict(resume_state.optimizer_state)
            self.schedule.load_state_dict(meta["schedule"])
            self.history = meta["history"]
            self.epoch = int(meta["epoch"])
            self.step_in_epoch = int(meta["step_in_epoch"])
            self.global_step = int(meta["global_step"])
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2))
        return self

    def _replicas(self):
        """The :class:`tinyvgg.replicas.Replicas` that step the batches (``cfg.replicas``, or
        :func:`tinyvgg.replicas.default_replicas`), or None: the model steps them itself."""
        from .replicas import Replicas, default_replicas

        cfg = self.cfg
        n = cfg.replicas if cfg.replicas is not None else default_replicas(self.model, cfg.batch_size,
                                                                             self.world)
        if n <= 1:
            return None
        if self.world > 1:
            raise ValueError(f"--replicas {n} with --data-parallel: the MPI ranks share the cores "
                             f"already; leave --replicas out (or give 1)")
        if cfg.batch_size < n:
            raise ValueError(f"--replicas {n} needs batches of at least {n} images (one per replica); "
                             f"got --batch-size {cfg.batch_size}")
        try:
            replicas = Replicas(self.model, self.loss_fn, n, max_batch=cfg.batch_size)
        except ValueError as e:
            raise ValueError(f"--replicas {n}: {e}") from None
        if self.is_main:
            print(f"replicas: {n} (the model and {n - 1} helper process{'es' if n > 2 else ''}, each "
                  f"stepping a share of every batch; --replicas 1 turns them off)", flush=True)
        return replicas

    def _init_weights_from(self, path):
        """Copy the weights of checkpoint ``path`` into the new model (same architecture:
        :func:`init_from_config`); the last layer keeps its fresh initialisation when the
        class count differs."""
        from . import checkpoint

        ck = checkpoint.load(path)
        state, replaced = dict(ck.state_dict), ck.config["num_classes"] != self.num_classes
        if replaced:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        try:
            self.model.load_state_dict(state, strict=not replaced)  # wrong shapes raise either way
        except (KeyError, ValueError) as e:
            raise ValueError(f"--init-from {path}: its weights do not fit the network being "
                             f"trained: {e}") from None
        if self.is_main:
            print(f"initialised from {path} ({ck.model.name}, width {ck.config['width']:g}, input "
                  f"{ck.config['input_size']})" + (f"; classifier.6 replaced: {ck.config['num_classes']} -> "
                                                   f"{self.num_classes} classes" if replaced else ""),
                  flush=True)

    # -- checkpoints -----------------------------------------------------------
    def save_checkpoint(self, reason="epoch"):
        if not self.is_main:
            return None
        from . import checkpoint
        path = self.out / "checkpoint.npz"
        checkpoint.save(path, self.model, self.optimizer, epoch=self.epoch,
                        step_in_epoch=self.step_in_epoch, global_step=self.global_step,
                        history=self.history, schedule=self.schedule.state_dict(),
                        train_config=self.cfg.to_dict(), classes=self.data["classes"],
                        mean=[float(v) for v in self.data["mean"]],
                        std=[float(v) for v in self.data["std"]],
                        input_size=self.data["input_size"], data_source=self.data.get("source"),
                        reason=reason)
        return path

    # -- the loop --------------------------------------------------------------
    def _diverged(self, loss_value):
        lr = self.optimizer.lr
        return TrainingDiverged(
            f"the training loss became {loss_value} at step {self.global_step} "
            f"(epoch {self.epoch + 1}, batch {self.step_in_epoch + 1}) with learning rate {lr:g}. "
            f"Usual causes: the learning rate is too high (try {lr / 10:g}); a deep network "
            f"without BatchNorm started from a poor initialisation (try --batch-norm or --init glorot, "
            f"or initialise from a trained VGG-11 as the paper did); or a warm-up is needed "
            f"(--warmup-epochs 1). Nothing after the last checkpoint was saved.")

    def _shard(self, x, y):
        if self.world == 1:
            return x, y
        n = len(y)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return x[lo:hi], y[lo:hi]

    def train_epoch(self):
        cfg = self.cfg
        model, opt, loss_fn = self.model, self.optimizer, self.loss_fn
        self.train_loader.set_epoch(self.epoch)
        n_batches = len(self.train_loader)
        skip = self.step_in_epoch
        bar = None
        if self.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=True, unit="batch")
        loss_sum = correct = 0  # device scalars between read-backs
        seen = 0
        last_read = {"loss": float("nan"), "acc": float("nan")}
        t0 = time.perf_counter()
        images_done = 0
        try:
            for b, (x, y) in enumerate(self.train_loader):
                if b < skip:
                    continue  # resuming mid-epoch: these steps were already taken
                x, y = self._shard(x, y)
                # Dropout masks of step (epoch, b) depend only on them: exact resume.
                backend.seed(hash((cfg.seed, self.epoch, b, self.rank)) & 0x7FFFFFFF)
                if self.replicas is not None:  # the same passes, the batch split over the cores
                    logits, loss = self.replicas.forward_backward(x, y)
                    if not math.isfinite(loss):
                        raise self._diverged(loss)
                else:
                    logits = model.forward(x, train=True)
                    loss = loss_fn.forward(logits, y)
                    if not backend.is_device_array(loss) and not math.isfinite(loss):
                        raise self._diverged(loss)
                    model.backward(loss_fn.backward(), input_grad=False)  # no dx for the images
                for h in self.hooks:
                    if hasattr(h, "after_backward"):
                        h.after_backward(self, self.global_step)
                opt.step()
                self.schedule.batch_end()
                loss_sum = loss_sum + loss * len(y)
                correct = correct + topk_correct(logits, y, 1)
                seen += len(y)
                images_done += len(y) * self.world
                self.step_in_epoch = b + 1
                self.global_step += 1
                for h in self.hooks:
                    if hasattr(h, "after_step"):
                        h.after_step(self, self.global_step, loss)
                if (b + 1) % cfg.log_every == 0 or b + 1 == n_batches:
                    # One read-back per logging interval (a sync on the GPU).
                    last_read = {"loss": float(loss_sum) / seen, "acc": float(correct) / seen}
                    if not math.isfinite(last_read["loss"]):
                        raise self._diverged(last_read["loss"])
                    if bar is not None:
                        dt = time.perf_counter() - t0
                        bar.set_postfix(loss=f"{last_read['loss']:.4f}", acc=f"{last_read['acc']:.4f}",
                                        lr=f"{opt.lr:.3g}", img_s=f"{images_done / max(dt, 1e-9):.0f}")
                if bar is not None:
                    bar.update(1)
        except Exception as e:
            _reraise_oom(e, cfg.batch_size, "--batch-size")  # a GPU OOM names the batch size
            raise
        finally:
            if bar is not None:
                bar.close()
        # The last batch always logs, so last_read already holds the epoch's totals.
        return last_read, time.perf_counter() - t0, images_done

    def _evaluate(self, loader):
        try:
            return evaluate(self.model, loader, flip=self.cfg.tta_flip)
        except Exception as e:
            _reraise_oom(e, self.cfg.eval_batch_size, "--eval-batch-size")
            raise

    def run(self):
        cfg = self.cfg
        interrupted = {"flag": False}
        previous = None
        if self.is_main and hasattr(signal, "SIGINT"):
            def on_sigint(signum, frame):
                interrupted["flag"] = True
                raise _Interrupted()
            try:
                previous = signal.signal(signal.SIGINT, on_sigint)
            except ValueError:  # not the main thread
                previous = None
        for h in self.hooks:
            if hasattr(h, "train_begin"):
                h.train_begin(self)
        try:
            while self.epoch < cfg.epochs:
                train_stats, elapsed, images = self.train_epoch()
                val = self._evaluate(self.val_loader)
                lr_used = self.optimizer.lr
                self.schedule.epoch_end(val["top1"])
                record = {"epoch": self.epoch + 1, "train_loss": train_stats["loss"],
                          "train_acc": train_stats["acc"], "val_loss": val["loss"], "val_acc": val["top1"],
                          "val_top5": val["top5"], "lr": lr_used, "time_s": elapsed,
                          "images_per_s": images / max(elapsed, 1e-9)}
                for h in self.hooks:
                    if hasattr(h, "epoch_end"):
                        h.epoch_end(self, record)
                self.history.append(record)
                self.epoch += 1
                self.step_in_epoch = 0
                self._log_epoch(record)
                self.save_checkpoint()
        except _Interrupted:
            path = self.save_checkpoint(reason="interrupted")
            if self.is_main:
                print(f"\ninterrupted: checkpoint saved to {path} (epoch {self.epoch + 1}, batch "
                      f"{self.step_in_epoch}); continue with --resume {self.out}", flush=True)
            raise KeyboardInterrupt from None
        except TrainingDiverged as e:
            for h in self.hooks:
                if hasattr(h, "diverged"):
                    h.diverged(self, e)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.replicas is not None:
                self.replicas.close()
        return self.finish()

    def _log_epoch(self, record):
        if not self.is_main:
            return
        r = record
        print(f"epoch {r['epoch']}/{self.cfg.epochs}: train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f} | "
              f"val loss {r['val_loss']:.4f} acc {r['val_acc']:.4f} | lr {r['lr']:.3g} | "
              f"{r['time_s']:.1f} s, {r['images_per_s']:.0f} img/s", flush=True)
        atomic_write_text(self.out / "history.json", json.dumps(self.history, indent=2))
        with atomic_open(self.out / "history.csv", "w") as f:
            # Columns: every scalar any epoch has (hooks such as the doctor add some;
            # their nested series stay in history.json only).
            def scalar(v):
                return isinstance(v, (int, float, str, bool)) or v is None
            columns = list(dict.fromkeys(k for rec in self.history for k, v in rec.items() if scalar(v)))
            w = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)
        from .plots import plot_history
        plot_history(self.history, self.out / "curves.png")

    def finish(self):
        test = self._evaluate(self.test_loader)
        for h in self.hooks:
            if hasattr(h, "train_end"):
                h.train_end(self)
        metrics = {"test_accuracy": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
                   "test_images": test["n"], "test_split": self.data["test_split"],
                   "epochs": self.epoch, "train_time_s": sum(h["time_s"] for h in self.history),
                   "model": self.cfg.model, "dataset": self.cfg.dataset,
                   "num_params": self.model.num_params()}
        if self.history:
            metrics["final_val_accuracy"] = self.history[-1]["val_acc"]
        if self.is_main:
            atomic_write_text(self.out / "metrics.json", json.dumps(metrics, indent=2))
            no_test = self.data["test_split"] != "test"  # the validation images stand in
            print(f"test accuracy: {test['top1']:.4f}"
                  + (" (on the validation images: the data has no test split)" if no_test else ""),
                  flush=True)
        return metrics


def resume_config(cfg, resume):
    """``(cfg, state)`` to continue ``resume`` (a run folder or checkpoint path) with:
    the saved settings, except those that only say how long or where to run, and the
    loaded :class:`tinyvgg.checkpoint.Checkpoint`. ``(cfg, None)`` when ``resume`` is None."""
    if resume is None:
        if cfg.init_from:
            from . import checkpoint
            arch = checkpoint.load_header(cfg.init_from)["config"]
            _note_ignored(cfg, {"model": arch["name"], "batch_norm": bool(arch["batch_norm"]),
                                "width": float(arch["width"]), "hidden": int(arch["hidden"])},
                          f"--init-from {cfg.init_from} fine-tunes its own architecture")
        return init_from_config(cfg), None
    if cfg.init_from:
        raise ValueError(f"--resume {resume} continues a run and --init-from {cfg.init_from} starts "
                         f"a new one from given weights: give one of them")
    from . import checkpoint
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.npz"
    state = checkpoint.load(path)
    needed = ("train_config", "schedule", "history", "epoch", "step_in_epoch", "global_step")
    lacking = [k for k in needed if k not in state.meta] + \
        (["the optimizer state"] if state.optimizer_state is None else [])
    if lacking:
        what = ("converted from torchvision" if state.meta.get("converted_from")
                else f"it lacks {', '.join(lacking)}")
        raise ValueError(f"--resume {resume}: {path} holds weights without a training state ({what}), "
                         f"so there is no run to continue. To train from these weights, start a new "
                         f"run with --init-from {path} (fine-tuning; the last layer is replaced when "
                         f"the number of classes differs)")
    saved = dict(state.meta["train_config"])
    done = int(state.meta["epoch"])
    if cfg.epochs < done:
        raise ValueError(f"--epochs {cfg.epochs}: the run in {resume} has already trained {done} "
                         f"epochs; give --epochs of at least {done + 1} to continue it (nothing was "
                         f"changed)")
    _note_ignored(cfg, saved, f"--resume {resume} continues the run with its own settings")
    if saved.get("epochs") != cfg.epochs and saved.get("schedule") in ("onecycle", "cosine", "step"):
        # These schedules are drawn over the whole run: a new length redraws them.
        print(f"note: --resume with --epochs {cfg.epochs} (the run was planned for {saved.get('epochs')}): "
              f"the {saved['schedule']} schedule is redrawn over {cfg.epochs} epochs, so the learning rate "
              f"continues from where the new curve stands at this step, not from the last rate used",
              file=sys.stderr)
    # The saved settings win, except those that only say how long or where to run.
    for key in _RESUME_GIVEN:
        saved[key] = getattr(cfg, key)
    if cfg.out == TrainConfig.out:
        saved["out"] = str(path.parent)
    return TrainConfig.from_dict(saved), state


# What --resume takes from the command line rather than from the run it continues.
_RESUME_GIVEN = ("epochs", "progress", "device", "log_every", "out", "replicas")


def _note_ignored(cfg, kept, what):
    """Print a note naming the settings of ``cfg`` (the command line's) that ``kept`` (a
    checkpoint's settings) overrides: each set away from its default (the recipe's, with
    the same BatchNorm for the learning rate) to something other than the kept value. The
    command line cannot tell a default it was given on purpose from one left out, so
    those are not listed."""
    recipe = cfg.recipe if cfg.recipe in RECIPES else "default"
    plain = TrainConfig.from_recipe(recipe)
    same_bn = TrainConfig.from_recipe(recipe, batch_norm=cfg.batch_norm)
    ignored = []
    for key, keep in kept.items():
        if key in _RESUME_GIVEN or key == "recipe" or not hasattr(cfg, key):
            continue
        given, default = (_plain(getattr(c, key)) for c in (cfg, same_bn if key == "lr" else plain))
        keep = _plain(keep)
        if key == "model":  # vgg11_bn and vgg11 with --batch-norm name the same network
            given, keep, default = (_letter(v) for v in (given, keep, default))
        if given == default or given == keep or keep is None:
            continue
        flag = ("--batch-norm" if given else "--no-batch-norm") if key == "batch_norm" else \
            f"--{key.replace('_', '-')} {getattr(cfg, key)}"
        ignored.append(f"{flag} (kept: {kept[key]})")
    if ignored:
        print(f"note: {what}; ignored: {', '.join(ignored)}", file=sys.stderr)


def _plain(v):
    """A setting as a saved config holds it (tuples are lists there)."""
    return list(v) if isinstance(v, tuple) else v


def _letter(name):
    try:
        return resolve_name(name)[0]
    except ValueError:
        return name


def init_from_config(cfg):
    """``cfg`` for fine-tuning from ``cfg.init_from`` (a checkpoint: a trained run's or
    converted torchvision weights): the checkpoint's architecture (model, batch_norm,
    width, hidden, input_size) and its input normalisation (``mean``/``std``, when it
    records them and ``cfg`` gives none). ``cfg`` itself when ``init_from`` is None.
    Raises ValueError naming ``--input-size`` when it contradicts the checkpoint, and
    what :func:`tinyvgg.checkpoint.load_header` raises for a bad file."""
    if not cfg.init_from:
        return cfg
    from . import checkpoint
    header = checkpoint.load_header(cfg.init_from)
    arch, meta = header["config"], header["meta"]
    if cfg.input_size is not None and cfg.input_size != arch["input_size"]:
        raise ValueError(f"--input-size {cfg.input_size}: --init-from {cfg.init_from} is a network "
                         f"for {arch['input_size']}-pixel inputs; leave --input-size out")
    if cfg.mean is None and cfg.std is None and meta.get("mean") is not None and meta.get("std") is not None:
        cfg = replace(cfg, mean=[float(v) for v in meta["mean"]], std=[float(v) for v in meta["std"]])
    return replace(cfg, model=arch["name"], batch_norm=bool(arch["batch_norm"]), width=float(arch["width"]),
                   hidden=int(arch["hidden"]), input_size=int(arch["input_size"]))


def train(cfg, hooks=(), resume=None, shard=None, hooks_for=None):
    """Train with ``cfg`` (a :class:`TrainConfig`); ``resume`` is a run folder or
    checkpoint path to continue from. ``hooks``: trainer hooks (see :class:`Trainer`);
    ``hooks_for``: a function ``cfg -> [hooks]`` called with the settings the run
    trains with (a resumed run's saved ones), for hooks a setting asks for (the
    command line adds the doctor this way when ``cfg.doctor``). Returns the final metrics."""
    cfg, state = resume_config(cfg, resume)
    hooks = list(hooks) + (list(hooks_for(cfg)) if hooks_for is not None else [])
    trainer = Trainer(cfg, hooks=hooks, shard=shard).setup(resume_state=state)
    return trainer.run()
