"""Which of the VGG paper's findings hold on data a laptop can train on?

Trains the configurations of Table 1 (A, A-LRN, B, C, D, E) and the paper's shallow
B-5x5 (section 4.1) at width 1/4 with ``train``'s default recipe, for one equal budget,
on every CIFAR-10 training image except a fixed validation split; A, B, D and E with two
seeds; plus D trained with scale jittering. Evaluates every run with the paper's test
protocols (:mod:`tinyvgg.evaluate_protocols`) and writes the paper's Tables 3-6, depth
against error with the seed spread, a verdict on each claim (seed-averaged differences,
2 paired standard errors) and the exact commands to
``experiments/results/paper_tables.md`` (numbers in ``paper_tables.json``, figures
``paper_depth.png`` and ``paper_curves.png``).

Usage (from the repository root)::

    python experiments/paper_tables.py                       # the study (146 min measured, 2-core CPU)
    python experiments/paper_tables.py --quick --out /tmp/q  # the whole pipeline in < 2 min
    python experiments/paper_tables.py --no-study            # re-render from the JSON
    python experiments/paper_tables.py --imagenet-demo --no-study   # only the 224-pixel section

Resumable (``--reuse``, the default): a run whose folder holds a finished training with
the same settings is not trained again, an interrupted run continues from its last checkpoint,
and a run's evaluation is cached beside its checkpoint, so an interrupted study
continues where it stopped. Progress and the estimated time left are printed as each run
finishes. Two runs train at a time by default (``--jobs``), one thread each.

The study (training and evaluation) is :mod:`paper_study`; the Markdown and figures are
:mod:`paper_report`; this file is the command that runs the sections asked for and
writes the results.

Data: the class-folder copy at ``../shared/data/cifar10`` (beside the repository), or
``--data-dir`` (a class-folder root or the official ``cifar-10-batches-py`` release).
Runs go to ``--out`` (default ``runs/paper_study/``, one folder per run as
``python -m tinyvgg train`` writes them).

Scale variants adapted to 32 x 32 images (the paper's S = 256, 384 and [256, 512] with
224 crops): "S = 32" is CIFAR's usual pad-4-and-crop at the native scale (no
rescaling), "S in [32, 48]" draws S per image (scale jittering) and crops 32 x 32. The
test scales follow :func:`tinyvgg.evaluate_protocols.test_scales`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # paper_study and paper_report beside this file

from paper_report import draw_figures, render  # noqa: E402
from paper_study import (DEFAULT_DATA, DEFAULT_IMAGENET, REPO, Settings,  # noqa: E402
                         imagenet_demo, run_study)
from tinyvgg.fileio import atomic_write_text  # noqa: E402


def machine():
    import numpy
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}, NumPy {numpy.__version__}")


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help=f"CIFAR-10 (class folders or the official "
                   f"release); default {DEFAULT_DATA}")
    p.add_argument("--out", default=None, help="run folders (default runs/paper_study, "
                   "runs/paper_study_quick with --quick)")
    p.add_argument("--results", default=None, help="where paper_tables.md/.json go (default "
                   "experiments/results; OUT with --quick)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs of every run (default {Settings.epochs}: 146 minutes measured on 2 cores; the time grows in proportion)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs trained at a time, one worker process each on one thread "
                        "(default: 2, or 1 on a 1-core machine; 1 trains in this process on "
                        "every core)")
    p.add_argument("--quick", action="store_true", help="the whole pipeline on a tiny dataset, "
                   "width 1/16, 1 epoch (< 2 min): a test, not a result")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                   help="keep runs that finished with the same settings, continue interrupted "
                        "ones from their checkpoints, reuse cached evaluations (the default; "
                        "--no-reuse trains everything again)")
    p.add_argument("--no-study", action="store_true", help="skip the CIFAR-10 study (keep the "
                   "study already in the results JSON)")
    p.add_argument("--imagenet-demo", action="store_true", help="add the 224-pixel section")
    p.add_argument("--imagenet-dir", default=str(DEFAULT_IMAGENET),
                   help="class folders of photos for --imagenet-demo (default %(default)s)")
    p.add_argument("--imagenet-images", type=int, default=4,
                   help="photos the demo runs through (default %(default)s; 1 with --quick)")
    p.add_argument("--imagenet-checkpoint", default=None, metavar="NPZ",
                   help="weights for the demo instead of random ones, e.g. torchvision's "
                        "pre-trained VGG-16 after `python -m tinyvgg convert vgg16.pth "
                        "vgg16.npz`; the demo then reports each method's error on the photos")
    p.add_argument("--imagenet-width", type=float, default=0.25,
                   help="VGG-16 width for the demo (1.0 = the paper's 138M parameters; slow)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="where the networks run (default %(default)s; on a GPU the runs "
                        "train one after another)")
    args = p.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")

    st = Settings.quick() if args.quick else Settings()
    if args.epochs is not None:
        st.epochs = args.epochs
    if args.out is None:
        args.out = str(REPO / "runs" / ("paper_study_quick" if args.quick else "paper_study"))
    results = Path(args.results) if args.results else \
        (Path(args.out) if args.quick else REPO / "experiments" / "results")
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / "paper_tables.json", results / "paper_tables.md"

    def log(msg):
        print(msg, flush=True)

    # Sections not run now are kept from the existing JSON (each says how it was measured).
    report = {}
    if json_path.is_file():
        try:
            report = json.loads(json_path.read_text())
        except ValueError as e:
            # never overwrite results we cannot read: they may be all that is left of a run
            p.exit(2, f"error: {json_path} is not valid JSON ({e}); move it away (a new "
                      f"study writes a new one) or restore it, e.g. with git checkout\n")
    if args.no_study and not args.imagenet_demo and not report.get("study"):
        p.exit(2, f"error: --no-study re-renders the study in {json_path}, and there is none; "
                  f"give --results FOLDER holding a paper_tables.json, or run the study\n")
    threads = " ".join(f"{k}={os.environ[k]}" for k in
                       ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                       if k in os.environ)
    cmd = ((threads + " " if threads else "") + "python experiments/paper_tables.py " + " ".join(
        argv if argv is not None else sys.argv[1:])).strip()
    stamp = dict(command=cmd, machine=machine(), date=time.strftime("%Y-%m-%d %H:%M"),
                 load_average=_load())
    if not args.no_study:
        log(f"paper_tables: {'QUICK ' if args.quick else ''}study, settings {asdict(st)}")
        report["study"] = run_study(args, st, log)
        report["study"].update(stamp, quick=args.quick, load_average_end=_load())
        report.pop("longer", None)  # the old study's section (A and E trained longer)
    if args.imagenet_demo:
        n = 1 if args.quick else args.imagenet_images
        width = min(args.imagenet_width, 0.0625) if args.quick else args.imagenet_width
        log(f"ImageNet-sample demo: VGG-16 at width {width:g}, {n} images")
        report["imagenet_demo"] = imagenet_demo(args.imagenet_dir, n, width, log,
                                                checkpoint=args.imagenet_checkpoint)
        report["imagenet_demo"].update(stamp)
    # atomic: a crash while writing never leaves a half-written result behind
    atomic_write_text(json_path, json.dumps(report, indent=2, default=_json_default))
    atomic_write_text(md_path, render(report))
    figures = draw_figures(report["study"], results) if report.get("study") else []
    log(f"wrote {md_path}, {json_path}" + "".join(f", {f}" for f in figures))
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def run(argv=None):
    """``main``, with the study's input errors (``SystemExit("error: ...")``: a missing data
    folder, photos or checkpoint) exiting with status 2 like argparse's own."""
    try:
        return main(argv)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(run())
