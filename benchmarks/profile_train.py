"""Where the training loop's time goes: `tinyvgg train` on CIFAR-10 folders, profiled.

    python benchmarks/profile_train.py                          # this checkout
    python benchmarks/profile_train.py --root /path/to/other/checkout --label before
    python benchmarks/profile_train.py --merge before.json after.json   # the side-by-side report

Trains VGG-11-BN (width 1/4, fully connected layers of 1024 units, batch 64) for
one epoch of ``--limit`` CIFAR-10 images through ``tinyvgg.train.train`` (the
command line's trainer) with timers wrapped around, at class level so that any
version of the package can be profiled the same way:

- every layer type's forward and backward (BatchNorm, ReLU, pooling, the
  convolution, the fully connected layers, dropout), the loss and the SGD update
  (wall time on the training thread);
- inside the convolution, im2col (the columns) and folding the product into the
  output (thread-seconds: the worker threads run them side by side, so these can
  add up to more than their convolution's wall time);
- the loader: the training thread's wait for the next batch, and the loader
  thread's augmentation (thread-seconds, overlapping the training);
- the rest of the epoch: progress bar, per-batch bookkeeping, logging.

Results: ``<out>/profile_train_<label>.json``; ``--merge`` writes
``<out>/profile_train.md`` with the runs side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _wrap(acc, key, owner, attr, layer=False):
    """Add the wall time of every call of ``owner.attr`` to ``acc[key]``; a layer's
    forward in evaluation mode (the validation pass) goes to a key of its own."""
    fn = getattr(owner, attr, None)
    if fn is None:
        return

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            training = not (layer and attr == "forward") or bool(k.get("train", a[2] if len(a) > 2 else False))
            acc[key if training else "validation pass (all layers, forward)"] += time.perf_counter() - t0
    setattr(owner, attr, timed)


def profile(args):
    sys.path.insert(0, str(Path(args.root).resolve()))
    import tinyvgg
    from tinyvgg import layers as L
    from tinyvgg import losses, optim
    from tinyvgg.data import loader as loader_mod
    from tinyvgg.train import TrainConfig, train

    assert Path(tinyvgg.__file__).resolve().is_relative_to(Path(args.root).resolve()), tinyvgg.__file__
    acc = defaultdict(float)
    for cls in (L.Conv2d, L.BatchNorm2d, L.BatchNorm1d, L.ReLU, L.MaxPool2d, L.Linear, L.Dropout, L.Flatten):
        _wrap(acc, f"{cls.__name__} forward", cls, "forward", layer=True)
        _wrap(acc, f"{cls.__name__} backward", cls, "backward")
    _wrap(acc, "loss", losses.SoftmaxCrossEntropy, "forward")
    _wrap(acc, "loss", losses.SoftmaxCrossEntropy, "backward")
    _wrap(acc, "SGD update", optim.SGD, "step")
    threads = defaultdict(float)  # thread-seconds, overlapping
    for mod_name in ("tinyvgg.ops.cpu.conv", "tinyvgg.ops.cpu.channels_last", "tinyvgg.ops.cpu_conv"):
        try:
            mod = __import__(mod_name, fromlist=["_"])
        except ImportError:
            continue
        _wrap(threads, "im2col (columns)", mod, "_columns")
        _wrap(threads, "folding the product", mod, "_fold")
    _wrap(threads, "loader thread: batch assembly and augmentation", loader_mod.DataLoader, "_batch")
    iter_orig = loader_mod.DataLoader.__iter__

    def timed_iter(self):
        it = iter_orig(self)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            acc["loader wait (training thread)"] += time.perf_counter() - t0
            yield item
    loader_mod.DataLoader.__iter__ = timed_iter

    with tempfile.TemporaryDirectory(prefix="profile_train_") as tmp:
        cfg = TrainConfig(model="vgg11", batch_norm=True, width=0.25, hidden=1024, epochs=1,
                          batch_size=64, dataset="folder", data_dir=args.data_dir, limit=args.limit,
                          val_size=0.1, seed=1, out=str(Path(tmp) / "run"), progress=True)
        train(cfg)
        with open(Path(tmp) / "run" / "history.csv") as f:
            header, row = f.readline().strip().split(","), f.readline().strip().split(",")
        rec = dict(zip(header, row))
    # the validation pass after the epoch also ran the layers (forward only): its time is
    # not in the epoch's training time, so the forward totals cover both; measure it apart
    epoch_s = float(rec["time_s"])
    images = round(float(rec["images_per_s"]) * epoch_s)
    return {"label": args.label, "root": _describe(args.root), "epoch_s": epoch_s,
            "images": images, "images_per_s": float(rec["images_per_s"]),
            "training_thread_s": dict(acc), "thread_seconds": dict(threads),
            "blas": _blas(), "limit": args.limit}


def _describe(root):
    """``commit <hash>`` of the checkout ``root`` (with "+ changes" when its tree is
    dirty), or its path when it is not a git checkout."""
    import subprocess
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if r.returncode != 0:
        return str(Path(root).resolve())
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tinyvgg"],
                           capture_output=True, text=True).stdout.strip()
    return f"commit {r.stdout.strip()}" + (" + changes" if dirty else "")


def _blas():
    from threadpoolctl import threadpool_info
    return [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info() if p["user_api"] == "blas"]


def merge(paths, out):
    runs = [json.loads(Path(p).read_text()) for p in paths]
    lines = ["# Where the training loop's time goes: VGG-11-BN, width 1/4, batch 64, CIFAR-10 folders", "",
             "`python benchmarks/profile_train.py` (see its notes): one epoch of "
             f"{runs[0]['limit']} images (90 % trained on) through `tinyvgg.train.train`, timers "
             "wrapped around every layer type, the loss, the SGD update, the loader and the "
             "convolution's im2col and folding. Milliseconds per batch of 64 images.", ""]
    for r in runs:
        blas = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in r["blas"])
        lines.append(f"- **{r['label']}**: {r['root']}, {r['images_per_s']:.0f} training images/s "
                     f"({blas})")
    lines += [""]
    keys = []
    for r in runs:
        for k in r["training_thread_s"]:
            if k not in keys:
                keys.append(k)
    per_batch = [r["images"] / 64 for r in runs]
    # forward totals include the validation pass; the note below says so
    rows = []
    for k in sorted(keys, key=lambda k: -runs[-1]["training_thread_s"].get(k, 0)):
        rows.append([k] + [f"{1e3 * r['training_thread_s'].get(k, 0) / n:.1f}" for r, n in zip(runs, per_batch)])
    rows.append(["epoch (training phase), wall"] + [f"{1e3 * r['epoch_s'] / n:.1f}" for r, n in zip(runs, per_batch)])
    lines += [_table(["training thread, ms per batch"] + [r["label"] for r in runs], rows), "",
              "The validation pass after the epoch (forward only, 10 % of the images) is not in "
              "the epoch's wall time; it is listed on its own row, per training batch. What the "
              "epoch's wall time has beyond the training rows is the progress bar, per-batch "
              "bookkeeping and logging.", ""]
    tkeys = sorted({k for r in runs for k in r["thread_seconds"]})
    trows = [[k] + [f"{1e3 * r['thread_seconds'].get(k, 0) / n:.1f}" for r, n in zip(runs, per_batch)] for k in tkeys]
    lines += [_table(["thread-seconds, ms per batch"] + [r["label"] for r in runs], trows), "",
              "Thread-seconds overlap: im2col and folding run on the worker threads side by side, "
              "the loader thread prepares the next batches while the training thread computes.", ""]
    text = "\n".join(lines)
    (Path(out) / "profile_train.md").write_text(text)
    print(text)


def _table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(HERE.parent), help="the checkout whose tinyvgg to profile")
    p.add_argument("--label", default="after")
    default_data = os.environ.get("TINYVGG_DATA")
    default_data = (Path(default_data) / "cifar10" / "train" if default_data
                    else HERE.parent.parent / "shared" / "data" / "cifar10" / "train")
    p.add_argument("--data-dir", default=str(default_data))
    p.add_argument("--limit", type=int, default=3200)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--merge", nargs="+", help="profile JSON files to put side by side")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before a run's minutes, not after
    if args.merge:
        return merge(args.merge, args.out)
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"profile_train: {args.data_dir} not found: give --data-dir or set TINYVGG_DATA")
    result = profile(args)
    path = Path(args.out) / f"profile_train_{args.label}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
