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
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import backend
from .evaluate import evaluate, topk_correct
from .fileio import atomic_open, atomic_write_text
from .losses import SoftmaxCrossEntropy

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "GPUOutOfMemory", "train", "prepare_data", "resume_config"]


@dataclass
class TrainConfig:
    """Everything a run needs; the command line fills it (``python -m tinyvgg train``)."""

    model: str = "vgg11"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "plateau"          # plateau (the paper's) | step | cosine | constant
    patience: int = 2
    warmup_epochs: float = 0.0
    width: float = 0.25
    hidden: int | None = None          # default: 4096 * width
    batch_norm: bool = False
    dropout: float = 0.5
    init: str = "glorot"              # narrow nets: torchvision's N(0, 0.01) FC init starves them
    input_size: int | None = None      # default: the dataset's size rounded up to a multiple of 32
    val_size: float = 0.1              # fraction (or count, if >= 1) of the training set held out
    flip: bool = True
    crop_padding: int = 4
    scale: tuple | None = None         # S or (S_min, S_max): isotropic rescale before the crop
    pca: bool = False
    limit: int | None = None           # use only the first LIMIT training images (tests, quick runs)
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/latest"
    progress: bool = True
    log_every: int = 10
    doctor: bool = False
    doctor_every: int = 50
    dtype: str = "float32"

    def to_dict(self):
        d = asdict(self)
        if d["scale"] is not None:
            d["scale"] = list(d["scale"]) if isinstance(d["scale"], (tuple, list)) else d["scale"]
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown settings {sorted(unknown)}")
        return cls(**d)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class GPUOutOfMemory(RuntimeError):
    """The GPU ran out of memory; the message names the batch size and a smaller one."""


class _Interrupted(Exception):
    pass


def _reraise_oom(e, batch_size, flag):
    from .ops.cuda_kernels import is_out_of_memory, oom_message
    if is_out_of_memory(e):
        raise GPUOutOfMemory(oom_message(batch_size, e, flag=flag)) from e


def _native_size(ds):
    im = ds.images[0]
    return max(im.shape[0], im.shape[1])


def prepare_data(cfg):
    """Load the training, validation and test sets and build their transforms.

    Returns a dict with ``train``, ``val``, ``test`` (Datasets), ``train_transform``,
    ``eval_transform``, ``mean``, ``std``, ``classes``, ``input_size`` and
    ``test_split`` (which split the final test accuracy is computed on).
    """
    from .data import (EvalTransform, TrainTransform, compute_mean_std, compute_pca, load_dataset,
                       train_val_split)

    name = cfg.dataset
    if name == "folder" and cfg.data_dir is None:
        raise ValueError("--dataset folder needs --data-dir, the root of the class folders")
    # Class folders of mixed sizes load as lists when the transforms rescale them
    # (--scale); otherwise --input-size fixes one size at load time.
    size = cfg.input_size if (name == "folder" and cfg.scale is None) else None
    full = load_dataset(name, cfg.data_dir, split="train", size=size)
    test_split = "test"
    try:
        test = load_dataset(name, cfg.data_dir, split="test", size=size)
    except (FileNotFoundError, ValueError):
        test = None
    if not isinstance(full.images, np.ndarray) and cfg.scale is None:
        raise ValueError(f"{cfg.data_dir}: the images have different sizes; give --input-size "
                         f"(rescale and centre-crop at load time) or --scale S")
    if name == "folder" and test is not None and _same_dataset(full, test):
        test = None  # no test folder: load_dataset returned the training folder again
    val_size = cfg.val_size if cfg.val_size < 1 else int(cfg.val_size)
    if cfg.limit is not None:
        # Take the limit from a seeded shuffle, so a small run still sees every class.
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(full))[:cfg.limit])
        full = full.subset(keep)
    train_ds, val_ds = train_val_split(full, val_size, seed=cfg.seed)
    if test is None:
        test, test_split = val_ds, "validation (the dataset has no test split)"
    mean, std = compute_mean_std(train_ds)
    size = cfg.input_size or int(math.ceil(_native_size(train_ds) / 32) * 32)
    pca = compute_pca(train_ds) if cfg.pca else None
    scale = tuple(cfg.scale) if isinstance(cfg.scale, (list, tuple)) else cfg.scale
    # Batches in the model's dtype (--dtype float64: computed in float64 too).
    train_tf = TrainTransform(size, mean, std, padding=cfg.crop_padding if scale is None else 0,
                              scale=scale, flip=cfg.flip, pca=pca, dtype=cfg.dtype)
    eval_tf = EvalTransform(size, mean, std, scale=scale, dtype=cfg.dtype)
    return {"train": train_ds, "val": val_ds, "test": test, "train_transform": train_tf,
            "eval_transform": eval_tf, "mean": mean, "std": std, "classes": list(full.classes),
            "input_size": size, "test_split": test_split, "channels": _channels(train_ds)}


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
    doctor and data-parallel training plug in through them.
    ``shard=(rank, world)`` makes this process train on its share of every
    global batch (data-parallel training); only rank 0 writes files and prints.
    """

    def __init__(self, cfg, hooks=(), shard=None, data=None):
        self.cfg = cfg
        self.hooks = list(hooks)
        if cfg.doctor and not any(type(h).__name__ == "Doctor" for h in self.hooks):
            # --doctor lives in the config, so a resumed or data-parallel run keeps it.
            from .doctor import Doctor
            self.hooks.append(Doctor(every=cfg.doctor_every))
        self.rank, self.world = shard or (0, 1)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out)
        self.history = []
        self.loss_fn = SoftmaxCrossEntropy()
        self._data = data
        self.epoch = 0          # epochs completed
        self.step_in_epoch = 0  # batches completed in the current epoch
        self.global_step = 0

    # -- set-up ----------------------------------------------------------------
    def setup(self, resume_state=None):
        from .models import vgg
        from .optim import SGD, make_schedule

        cfg = self.cfg
        backend.use(cfg.device)
        backend.seed(cfg.seed)
        self.data = self._data or prepare_data(cfg)
        d = self.data
        self.num_classes = len(d["classes"])
        hidden = cfg.hidden or max(16, int(round(4096 * cfg.width)))
        if resume_state is not None:
            self.model = resume_state.model.to(cfg.device)
        else:
            self.model = vgg(cfg.model, num_classes=self.num_classes, input_size=d["input_size"],
                             width=cfg.width, batch_norm=cfg.batch_norm, hidden=hidden,
                             dropout=cfg.dropout, init=cfg.init, dtype=np.dtype(cfg.dtype),
                             in_channels=self.data["channels"])
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
        self.optimizer = SGD(self.model, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                             nesterov=cfg.nesterov)
        self.schedule = make_schedule(cfg.schedule, self.optimizer, epochs=cfg.epochs,
                                      steps_per_epoch=len(self.train_loader), patience=cfg.patience,
                                      warmup_epochs=cfg.warmup_epochs)
        if resume_state is not None:
            meta = resume_state.meta
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
                        input_size=self.data["input_size"], reason=reason)
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
                logits = model.forward(x, train=True)
                loss = loss_fn.forward(logits, y)
                if not backend.is_device_array(loss) and not math.isfinite(loss):
                    raise self._diverged(loss)
                model.backward(loss_fn.backward())
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
            return evaluate(self.model, loader)
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
            print(f"test accuracy: {test['top1']:.4f}", flush=True)
        return metrics


def resume_config(cfg, resume):
    """``(cfg, state)`` to continue ``resume`` (a run folder or checkpoint path) with:
    the saved settings, except those that only say how long or where to run, and the
    loaded :class:`tinyvgg.checkpoint.Checkpoint`. ``(cfg, None)`` when ``resume`` is None."""
    if resume is None:
        return cfg, None
    from . import checkpoint
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoint.npz"
    state = checkpoint.load(path)
    saved = dict(state.meta["train_config"])
    # The saved settings win, except those that only say how long or where to run.
    for key in ("epochs", "progress", "device", "log_every", "out"):
        saved[key] = getattr(cfg, key)
    if cfg.out == TrainConfig.out:
        saved["out"] = str(path.parent)
    return TrainConfig.from_dict(saved), state


def train(cfg, hooks=(), resume=None, shard=None):
    """Train with ``cfg`` (a :class:`TrainConfig`); ``resume`` is a run folder or
    checkpoint path to continue from. Returns the final metrics."""
    cfg, state = resume_config(cfg, resume)
    trainer = Trainer(cfg, hooks=hooks, shard=shard).setup(resume_state=state)
    return trainer.run()
