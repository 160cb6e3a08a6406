"""The default training recipe, measured: each choice against the old default.

Every row is one ``python -m tinyvgg train`` command on the CIFAR-10 training images as
class folders (45,000 training and 5,000 validation images, the split of ``--seed 1``),
VGG-11 with BatchNorm at width 1/4 (hidden 1024), for ``--epochs`` epochs (default 4,
short enough to run every row in one sitting). Rows:

* ``old default``: the recipe ``train`` used before (the paper's, ``--recipe paper``,
  at batch 64);
* ``new_default``: the candidate default (today's default with label smoothing 0.1);
* one row per choice of the candidate, with that choice put back to the old one
  (leave one out), and rows with other peak learning rates. Label smoothing did not
  help measurably, so today's default is the ``no_smoothing`` row.

After training, each run's checkpoint is also scored with flip test-time augmentation
on the same validation images (``evaluate(..., flip=True)``), so the flip column costs no
training. Resumable: a row whose run folder already holds ``metrics.json`` is not run
again; results are rewritten after every row (``experiments/results/recipe_ablation.*``).

    python experiments/recipe_ablation.py --data-dir ../shared/data/cifar10/train
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

BASE = ["--model", "vgg11", "--batch-norm", "--width", "0.25", "--dataset", "folder", "--seed", "1"]
LS = ["--label-smoothing", "0.1"]  # the candidate default had it; today's default does not
ROWS = [  # (name, what changed, extra options)
    ("old_default", "the old default (the paper's recipe at batch 64)", ["--recipe", "paper", "--batch-size", "64"]),
    ("new_default", "the candidate default: today's default with label smoothing 0.1", LS),
    ("plateau", "schedule: the paper's plateau from lr 0.01 instead of one cycle to 0.1",
     ["--schedule", "plateau", "--lr", "0.01", *LS]),
    ("batch64", "batch 64 instead of 128", ["--batch-size", "64", *LS]),
    ("dropout", "dropout 0.5 instead of 0", ["--dropout", "0.5", *LS]),
    ("no_nesterov", "plain momentum instead of Nesterov", ["--no-nesterov", *LS]),
    ("decay_all", "weight decay on biases and BatchNorm too", ["--decay-bias-and-norm", *LS]),
    ("no_smoothing", "no label smoothing: **today's default**", ["--label-smoothing", "0"]),
    ("lr0.05", "peak lr 0.05 instead of 0.1", ["--lr", "0.05", *LS]),
    ("lr0.2", "peak lr 0.2 instead of 0.1", ["--lr", "0.2", *LS]),
]


def command(name, extra, args):
    out = Path(args.runs) / name
    return ([sys.executable, "-m", "tinyvgg", "train", *BASE, "--data-dir", args.data_dir,
             "--epochs", str(args.epochs), "--out", str(out), "--no-progress", *extra], out)


def flip_score(run):
    """Per-image correctness (bool arrays over the validation images) of the run's
    checkpoint, without and with flip TTA: ``{False: (V,), True: (V,)}``."""
    from tinyvgg import checkpoint
    from tinyvgg.data import DataLoader
    from tinyvgg.evaluate import evaluate
    from tinyvgg.train import TrainConfig, prepare_data

    ck = checkpoint.load(run / "checkpoint.npz")
    cfg = TrainConfig.from_dict(ck.meta["train_config"])
    data = prepare_data(cfg)
    loader = DataLoader(data["val"], 256, data["eval_transform"], shuffle=False)
    out = {}
    for f in (False, True):
        r = evaluate(ck.model, loader, flip=f, return_predictions=True)
        out[f] = r["predictions"] == r["labels"]
    return out


def paired_difference(a, b):
    """Mean of ``a - b`` over the same images (bool arrays) and its standard error."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def render(rows, args):
    lines = ["# The default recipe, measured", "",
             f"VGG-11-BN, width 1/4 (hidden 1024), {args.epochs} epochs, CIFAR-10 class folders: 45,000 "
             "training images, 5,000 validation images (seed 1). Validation accuracy at the last epoch; "
             "`+flip` scores the same checkpoint with flip test-time augmentation. Produced by "
             "`python experiments/recipe_ablation.py` (each row's command below; the runs were made before "
             "label smoothing left the default, so the commands spell out `--label-smoothing 0.1`, which "
             "was the default then). Today's default is the `no_smoothing` row, with flip test-time "
             "augmentation on (the `+flip` column).", "",
             "`vs new default`: the row's validation accuracy minus the candidate default's (`new_default`), in points, "
             "with its paired standard error over the same 5,000 images (a difference within 2 SE "
             "is noise). Train times were measured while other runs shared the 2 cores; compare "
             "them only within a row's neighbours, not with a quiet machine.", "",
             "| row | change | val acc | vs new default | val acc +flip | flip gain | last train loss | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vs = "—" if r["name"] == "new_default" or "vs_new" not in r else \
            f"{100 * r['vs_new'][0]:+.2f} ± {100 * r['vs_new'][1]:.2f}"
        fg = f"{100 * r['flip_gain'][0]:+.2f} ± {100 * r['flip_gain'][1]:.2f}"
        lines.append(f"| {r['name']} | {r['change']} | {r['val_acc']:.4f} | {vs} | {r['val_acc_flip']:.4f} | "
                     f"{fg} | {r['train_loss']:.4f} | {r['train_time_s'] / 60:.1f} min |")
    lines += ["", "Commands:", ""] + [f"- `{r['name']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("TINYVGG_DATA_CIFAR_FOLDER"),
                   help="the CIFAR-10 training class folders (e.g. ../shared/data/cifar10/train)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--runs", default="runs/ablation", help="run folders (kept: the study resumes)")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    p.add_argument("--out", default=str(HERE / "results" / "recipe_ablation"))
    args = p.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        p.error("--data-dir: give the folder of CIFAR-10 class folders")
    from tinyvgg.fileio import atomic_open, atomic_write_text

    wanted = set(args.rows.split(",")) if args.rows else None
    results_path = Path(args.out + ".json")
    done = {r["name"]: r for r in json.loads(results_path.read_text())} if results_path.exists() else {}
    # Per-image correctness, kept beside the JSON so paired differences survive a restart.
    correct_path = Path(args.out + "_correct.npz")
    correct = {}
    if correct_path.exists():
        with np.load(correct_path) as z:
            for key in z.files:
                n, f = key.rsplit(".", 1)
                correct.setdefault(n, {})[f == "flip"] = z[key]
    for name, change, extra in ROWS:
        if wanted and name not in wanted:
            continue
        cmd, run = command(name, extra, args)
        shown = "python -m tinyvgg train " + " ".join(shlex.quote(c) for c in cmd[4:])
        if not (run / "metrics.json").exists():
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
            subprocess.run(cmd, check=True)
        if name not in done:
            hist = json.loads((run / "history.json").read_text())
            correct[name] = flip_score(run)
            c = correct[name]
            done[name] = {"name": name, "change": change, "command": shown, "val_acc": float(c[False].mean()),
                          "val_acc_flip": float(c[True].mean()), "flip_gain": paired_difference(c[True], c[False]),
                          "train_loss": hist[-1]["train_loss"],
                          "train_time_s": sum(h["time_s"] for h in hist), "history": hist}
        if "new_default" in correct:
            for n, r in done.items():
                if n in correct:
                    r["vs_new"] = paired_difference(correct[n][False], correct["new_default"][False])
        rows = [done[n] for n, _, _ in ROWS if n in done]
        with atomic_open(correct_path, "wb") as fh:
            np.savez_compressed(fh, **{f"{n}.{'flip' if f else 'plain'}": v for n, c in correct.items()
                                       for f, v in c.items()})
        atomic_write_text(results_path, json.dumps(rows, indent=2))
        atomic_write_text(Path(args.out + ".md"), render(rows, args))
        print(f"  {name}: val {done[name]['val_acc']:.4f}, +flip {done[name]['val_acc_flip']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
