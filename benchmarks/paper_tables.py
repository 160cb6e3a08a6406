"""Which of the VGG paper's findings hold on data a laptop can train on?

Trains the six configurations of Table 1 (A, A-LRN, B, C, D, E) at one reduced width
and one equal budget on CIFAR-10, plus two training-scale variants of D, evaluates them
with the paper's test protocols (:mod:`tinyvgg.evaluate_protocols`) on a fixed
validation split held out of the training images, and writes the paper's Tables 3-6,
a verdict on each claim and the exact commands to ``benchmarks/results/paper_tables.md``
(numbers also in ``paper_tables.json``).

Usage (from the repository root)::

    python benchmarks/paper_tables.py                       # the full study (<= 90 min, 2-core CPU)
    python benchmarks/paper_tables.py --budget-minutes 20   # fewer training images, same recipe
    python benchmarks/paper_tables.py --quick --out /tmp/q  # the whole pipeline in < 2 min
    python benchmarks/paper_tables.py --imagenet-demo --no-study   # only the 224-pixel section

Data: the class-folder copy at ``../shared/data/cifar10`` (beside the repository), or
``--data-dir`` (a class-folder root or the official ``cifar-10-batches-py`` release).
Runs go to ``--out`` (default ``runs/paper_tables/``, one folder per model as
``python -m tinyvgg train`` writes them); with ``--reuse`` a run whose folder holds a
finished training with the same settings is not trained again.

Scale variants adapted to 32 x 32 images (the paper's S = 256, 384 and [256, 512] with
224 crops): "S = 32" is CIFAR's usual pad-4-and-crop at the native scale (no
rescaling), "S = 40" rescales every image to 40 x 40 and takes random 32 x 32 crops,
"S in [32, 48]" draws S per image (scale jittering) and crops 32 x 32. The test scales
follow :func:`tinyvgg.evaluate_protocols.test_scales`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tinyvgg import backend  # noqa: E402
from tinyvgg import evaluate_protocols as ep  # noqa: E402
from tinyvgg.fileio import atomic_write_text  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10"
DEFAULT_IMAGENET = REPO.parent / "shared" / "data" / "imagenet-sample"
IMAGENET_MEAN = [123.68, 116.78, 103.94]  # the mean RGB of ILSVRC images (the paper subtracts it)

# The models of the study: run name -> (tinyvgg model name, Table 1 letter, training scale).
RUNS = {
    "A": ("vgg11", "A", None),
    "A-LRN": ("vgg11_lrn", "A-LRN", None),
    "B": ("vgg13", "B", None),
    "C": ("vgg16_1x1", "C", None),
    "D": ("vgg16", "D", None),
    "E": ("vgg19", "E", None),
    "D-S40": ("vgg16", "D", 40),
    "D-S32-48": ("vgg16", "D", (32, 48)),
}
DEPTH_RUNS = ["A", "A-LRN", "B", "C", "D", "E"]
TABLE5_RUNS = ["D", "D-S32-48"]


@dataclass
class Settings:
    """The recipe shared by every run (the equal budget)."""

    width: float = 0.125
    hidden: int = 256
    batch_norm: bool = True
    dropout: float = 0.3
    init: str = "glorot"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.2
    crop_padding: int = 4
    n_train: int = 12000
    n_val: int = 2000
    seed: int = 0
    eval_batch: int = 250

    @classmethod
    def for_budget(cls, minutes):
        """The full recipe (90 minutes) with the training set scaled to ``minutes``
        (epochs, model and schedule unchanged; the validation set halves below 45)."""
        s = cls()
        if minutes < 90:
            s.n_train = max(500, int(round(s.n_train * minutes / 90 / 100)) * 100)
            s.n_val = 2000 if minutes >= 45 else 1000
        return s

    @classmethod
    def quick(cls):
        return cls(width=1 / 16, hidden=16, epochs=1, batch_size=16, n_train=40, n_val=16,
                   eval_batch=64, warmup_epochs=0.0, lr=0.02)


def scale_label(scale):
    if scale is None:
        return "32 (pad 4 + crop)"
    if isinstance(scale, (tuple, list)):
        return f"[{scale[0]}, {scale[1]}]"
    return str(scale)


def q_label(scales):
    return ", ".join(str(q) for q in scales)


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------

def quick_dataset(root, per_class=8, seed=0):
    """A tiny class-folder dataset in ``root``: ``per_class`` real CIFAR-10 images per
    class when ``../shared`` is there, else synthetic 32 x 32 images (a class colour
    and stripe orientation, plus noise). Returns (root, description)."""
    from PIL import Image

    root = Path(root)
    src = DEFAULT_DATA / "train"
    if src.is_dir():
        for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
            (root / cls).mkdir(parents=True, exist_ok=True)
            names = sorted(os.listdir(src / cls))[:per_class]
            for n in names:
                shutil.copy(src / cls / n, root / cls / n)
        return root, f"{per_class} real CIFAR-10 images per class copied from {src}"
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for k in range(10):
        d = root / f"class{k}"
        d.mkdir(parents=True, exist_ok=True)
        colour = np.array([(k * 70) % 256, (k * 130 + 60) % 256, (k * 200 + 20) % 256])
        stripes = ((xx * np.cos(k) + yy * np.sin(k)) // 4 % 2)[..., None]
        for i in range(per_class):
            im = colour * (0.5 + 0.5 * stripes) + rng.normal(0, 25, (32, 32, 3))
            Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(d / f"{i:03d}.png")
    return root, f"{per_class} synthetic 32x32 images per class (../shared/data is missing)"


def dataset_kind(data_dir):
    """("cifar10", dir) for the official pickled release, else ("folder", dir)."""
    from tinyvgg.data import find_dataset_dir

    try:
        if find_dataset_dir("cifar10", data_dir, split="train") is not None:
            return "cifar10"
    except ValueError:
        pass
    return "folder"


# ----------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------

def train_config(run, st, dataset, data_dir, out, device, progress):
    from tinyvgg.train import TrainConfig

    name, _, scale = RUNS[run]
    return TrainConfig(
        model=name, dataset=dataset, data_dir=str(data_dir), epochs=st.epochs,
        batch_size=st.batch_size, lr=st.lr, momentum=st.momentum, weight_decay=st.weight_decay,
        schedule=st.schedule, warmup_epochs=st.warmup_epochs, width=st.width, hidden=st.hidden,
        batch_norm=st.batch_norm, dropout=st.dropout, init=st.init, input_size=None,
        val_size=st.n_val, flip=True, crop_padding=st.crop_padding, scale=scale,
        limit=st.n_train + st.n_val, eval_batch_size=st.eval_batch, seed=st.seed, device=device,
        out=str(Path(out) / run), progress=progress, log_every=20)


def shown(path):
    """``path`` relative to the repository root when it is beside or inside it (for the
    commands in the report), else as it is."""
    p = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(p.relative_to(base))
        except ValueError:
            continue
    return str(path)


def train_command(cfg):
    """The ``python -m tinyvgg train`` command equivalent to ``cfg``."""
    parts = ["python -m tinyvgg train", f"--model {cfg.model}", f"--dataset {cfg.dataset}",
             f"--data-dir {shown(cfg.data_dir)}", f"--width {cfg.width:g}", f"--hidden {cfg.hidden}",
             "--batch-norm" if cfg.batch_norm else "--no-batch-norm", f"--dropout {cfg.dropout:g}",
             f"--init {cfg.init}", f"--epochs {cfg.epochs}", f"--batch-size {cfg.batch_size}",
             f"--lr {cfg.lr:g}", f"--momentum {cfg.momentum:g}",
             f"--weight-decay {cfg.weight_decay:g}", f"--schedule {cfg.schedule}",
             f"--warmup-epochs {cfg.warmup_epochs:g}", f"--limit {cfg.limit}",
             f"--val-size {int(cfg.val_size)}", f"--seed {cfg.seed}"]
    if cfg.scale is None:
        parts.append(f"--crop-padding {cfg.crop_padding}")
    elif isinstance(cfg.scale, (tuple, list)):
        parts.append(f"--scale {cfg.scale[0]},{cfg.scale[1]}")
    else:
        parts.append(f"--scale {cfg.scale}")
    parts.append(f"--out {shown(cfg.out)}")
    return " ".join(parts)


def _same_config(saved, cfg):
    ignore = {"progress", "device", "out", "log_every"}
    want = cfg.to_dict()
    return all(saved.get(k) == v for k, v in want.items() if k not in ignore)


def train_run(run, cfg, reuse, log):
    """Train (or reuse) one run; returns its metrics dict with ``wall_s``."""
    from tinyvgg.train import train

    folder = Path(cfg.out)
    if reuse and (folder / "metrics.json").is_file() and (folder / "checkpoint.npz").is_file() \
            and (folder / "config.json").is_file():
        saved = json.loads((folder / "config.json").read_text())
        if _same_config(saved, cfg):
            metrics = json.loads((folder / "metrics.json").read_text())
            log(f"  {run}: reusing the finished run in {folder}")
            metrics.setdefault("wall_s", None)
            metrics["reused"] = True
            return metrics
    t0 = time.perf_counter()
    metrics = train(cfg)
    metrics["wall_s"] = time.perf_counter() - t0
    metrics["reused"] = False
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# ----------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------

def correct(post, labels):
    return (np.asarray(post).argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def paired(post_a, post_b, labels):
    """Top-1 error difference err(a) - err(b) in points and its paired standard error
    (the standard deviation of the per-image differences over sqrt(n))."""
    d = correct(post_b, labels) - correct(post_a, labels)  # err_a - err_b
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return 100 * float(d.mean()), 100 * se


def verdict(delta, se, expect_positive=True):
    """'supported', 'contradicted' or 'not resolved' for a difference that the paper
    says is positive (err of the worse - err of the better), at 2 standard errors."""
    if not math.isfinite(se) or se == 0:
        return "supported" if (delta > 0) == expect_positive and delta != 0 else "not resolved"
    z = delta / se if expect_positive else -delta / se
    if z >= 2:
        return "supported"
    if z <= -2:
        return "contradicted"
    return "not resolved (within 2 SE)" if z > 0 else "not resolved (within 2 SE; wrong sign)"


def metrics_of(post, labels):
    return {"top1_error": 100 * (1 - ep.topk_accuracy(post, labels, 1)),
            "top5_error": 100 * (1 - ep.topk_accuracy(post, labels, 5))}


# ----------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------

def study_data(args):
    """(data folder, description, temporary folder to remove or None): CIFAR-10 from
    ``--data-dir`` or ``../shared``, or with ``--quick`` a tiny synthetic stand-in."""
    if args.quick and args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="paper_tables_quick_")
        data_dir, data_desc = quick_dataset(Path(tmp) / "data")
        return data_dir, data_desc, tmp
    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA
    if not data_dir.exists():
        raise SystemExit(f"error: {data_dir} not found; give --data-dir (the class-folder "
                         f"copy of CIFAR-10 or the official release), or --quick")
    return data_dir, f"CIFAR-10 training images from {data_dir}", None


def run_study(args, st, log):
    from tinyvgg.train import prepare_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, data_desc, tmp = study_data(args)
    dataset = dataset_kind(data_dir)
    progress = sys.stderr.isatty() and not args.quick
    backend.use(args.device)
    try:
        runs = list(RUNS)
        cfgs = {r: train_config(r, st, dataset, data_dir, out, args.device, progress) for r in runs}
        log(f"data: {data_desc} ({dataset}); {st.n_train} training + {st.n_val} validation "
            f"images (seeded split, seed {st.seed})")
        t_study = time.perf_counter()
        train_metrics = {}
        for i, r in enumerate(runs, 1):
            log(f"[{i}/{len(runs)}] training {r} ({RUNS[r][0]}, S = {scale_label(RUNS[r][2])})")
            train_metrics[r] = train_run(r, cfgs[r], args.reuse, log)
            m = train_metrics[r]
            log(f"  {r}: final validation accuracy {m.get('final_val_accuracy', float('nan')):.4f}"
                f", training {m['train_time_s']:.0f} s"
                + (f", wall {m['wall_s']:.0f} s" if m.get("wall_s") else ""))
        t_train = time.perf_counter() - t_study

        # The held-out validation set, exactly as training drew it (identical for every
        # run: same seed, limit and val_size).
        data = prepare_data(cfgs["D"])
        val = data["val"]
        check = prepare_data(cfgs["D-S32-48"])["val"]
        assert np.array_equal(check.labels, val.labels), "the runs do not share a validation set"
        labels = np.asarray(val.labels)
        ems = {r: ep.as_eval_model(Path(cfgs[r].out) / "checkpoint.npz", name=r) for r in runs}

        t_eval = time.perf_counter()
        results = {}   # (run, protocol) -> dict
        posts = {}     # (run, protocol) -> (N, K)

        def evaluate(run, protocol):
            res = ep.evaluate_protocol(ems[run], val, protocol, batch_size=st.eval_batch,
                                       progress=progress, return_posteriors=True,
                                       desc=f"{run} {protocol}")
            posts[(run, protocol)] = res["posteriors"]
            results[(run, protocol)] = {
                "top1_error": 100 * res["top1_error"], "top5_error": 100 * res["top5_error"],
                "scales": res["scales"], "time_s": res["time_s"], "n": res["n"]}
            log(f"  {run:9s} {protocol:17s} Q = {q_label(res['scales']):12s} top-1 error "
                f"{100 * res['top1_error']:5.1f} %  ({res['time_s']:.0f} s)")

        log("evaluating (single scale, multi-scale, dense) on the validation set")
        for r in runs:
            for p in ("single", "multi-scale", "dense"):
                evaluate(r, p)
        log("evaluating (multi-crop) for Table 5")
        for r in TABLE5_RUNS:
            evaluate(r, "multi-crop")
            # dense + multi-crop is the average of the two (section 4.3): reuse them
            comb = 0.5 * (posts[(r, "dense")] + posts[(r, "multi-crop")])
            posts[(r, "dense+multi-crop")] = comb
            results[(r, "dense+multi-crop")] = dict(metrics_of(comb, labels),
                                                   scales=results[(r, "dense")]["scales"],
                                                   time_s=results[(r, "dense")]["time_s"]
                                                   + results[(r, "multi-crop")]["time_s"],
                                                   n=len(labels))
        t_eval = time.perf_counter() - t_eval

        fusion = fusion_table(posts, labels)
        claims = judge_claims(results, posts, labels, fusion)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    np.savez_compressed(out / "posteriors.npz", labels=labels,
                        **{f"{r}|{p}": v for (r, p), v in posts.items()})
    table_rows = {}
    for r in runs:
        m = train_metrics[r]
        table_rows[r] = {
            "model": RUNS[r][0], "config": RUNS[r][1], "train_scale": RUNS[r][2],
            "train_scale_label": scale_label(RUNS[r][2]), "params": int(m["num_params"]),
            "train_time_s": m["train_time_s"], "wall_s": m.get("wall_s"),
            "reused": m.get("reused", False), "epochs": m["epochs"],
            "final_val_accuracy": m.get("final_val_accuracy"),
            "final_train_accuracy": _last_train_accuracy(Path(cfgs[r].out)),
            "protocols": {p: results[(rr, p)] for (rr, p) in results if rr == r},
        }
    return {
        "settings": asdict(st), "dataset": dataset, "data_dir": str(data_dir),
        "data_description": data_desc, "n_val": int(len(labels)), "runs": table_rows,
        "fusion": fusion, "claims": claims,
        "train_commands": {r: train_command(cfgs[r]) for r in runs},
        "eval_commands": eval_commands(cfgs),
        "time": {"training_s": t_train, "evaluation_s": t_eval,
                 "total_s": time.perf_counter() - t_study},
    }


LONGER_RUNS = ["A", "E"]  # the two ends of the depth chain A -> B -> D -> E


def longer_training(args, st, epochs, study, log):
    """Test the likely reason for the depth result: train A and E again with ``epochs``
    epochs (everything else as in the study: data, split, recipe, seed) and compare their
    single-scale error with the study's, on the same validation images."""
    from dataclasses import replace

    from tinyvgg.train import prepare_data

    data_dir, data_desc, tmp = study_data(args)
    long_st = replace(st, epochs=epochs)
    out = Path(args.out) / f"longer-{epochs}ep"
    backend.use(args.device)
    try:
        progress = sys.stderr.isatty() and not args.quick
        cfgs = {r: train_config(r, long_st, dataset_kind(data_dir), data_dir, out, args.device,
                                progress) for r in LONGER_RUNS}
        rows, posts = {}, {}
        t0 = time.perf_counter()
        for r in LONGER_RUNS:
            log(f"[longer] training {r} for {epochs} epochs")
            m = train_run(r, cfgs[r], args.reuse, log)
            rows[r] = {"epochs": epochs, "train_time_s": m["train_time_s"],
                       "final_train_accuracy": _last_train_accuracy(Path(cfgs[r].out))}
        val = prepare_data(cfgs["A"])["val"]
        labels = np.asarray(val.labels)
        for r in LONGER_RUNS:
            em = ep.as_eval_model(Path(cfgs[r].out) / "checkpoint.npz", name=r)
            res = ep.evaluate_protocol(em, val, "single", batch_size=st.eval_batch,
                                       return_posteriors=True, progress=progress,
                                       desc=f"{r} single")
            posts[r] = res["posteriors"]
            rows[r]["top1_error"] = 100 * res["top1_error"]
            log(f"  {r} after {epochs} epochs: top-1 error {rows[r]['top1_error']:.1f} %")
        total = time.perf_counter() - t0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    d, se = paired(posts["E"], posts["A"], labels)  # err(E) - err(A)
    report = {"epochs": epochs, "study_epochs": st.epochs, "runs": rows, "n_val": int(len(labels)),
              "e_minus_a": d, "e_minus_a_se": se, "time_s": total,
              "train_commands": {r: train_command(cfgs[r]) for r in LONGER_RUNS}}
    # the same difference in the study, from its saved posteriors (same validation images)
    saved = Path(args.out) / "posteriors.npz"
    if study and saved.is_file():
        with np.load(saved) as z:
            if np.array_equal(z["labels"], labels):
                d0, se0 = paired(z["E|single"], z["A|single"], labels)
                report.update(study_e_minus_a=d0, study_e_minus_a_se=se0)
    return report


def _last_train_accuracy(folder):
    """Training accuracy of the last epoch (on augmented batches, dropout on), from the
    run's history.json; None when missing."""
    try:
        return float(json.loads((Path(folder) / "history.json").read_text())[-1]["train_acc"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


FUSIONS = [
    # (name, runs, protocol)
    ("D + E (multi-scale)", ["D", "E"], "multi-scale"),
    ("D + E (dense)", ["D", "E"], "dense"),
    ("D at S = 32, 40, [32, 48] (multi-scale)", ["D", "D-S40", "D-S32-48"], "multi-scale"),
    ("D at S = 32, 40, [32, 48] (dense)", ["D", "D-S40", "D-S32-48"], "dense"),
    ("D + D [32, 48] (dense + multi-crop)", ["D", "D-S32-48"], "dense+multi-crop"),
    ("all 8 models (multi-scale)", list(RUNS), "multi-scale"),
]


def fusion_table(posts, labels):
    rows = []
    for name, runs, protocol in FUSIONS:
        members = [posts[(r, protocol)] for r in runs]
        fused = np.mean(members, axis=0)
        best = min(runs, key=lambda r: 1 - ep.topk_accuracy(posts[(r, protocol)], labels, 1))
        delta, se = paired(posts[(best, protocol)], fused, labels)
        rows.append(dict(metrics_of(fused, labels), name=name, runs=runs, protocol=protocol,
                         best_member=best,
                         best_member_top1_error=metrics_of(posts[(best, protocol)], labels)["top1_error"],
                         gain_over_best=delta, gain_se=se))
    return rows


def judge_claims(results, posts, labels, fusion):
    """Each claim of the paper with the numbers of this run and a verdict (2 SE rule)."""
    claims = []

    def err(r, p="single"):
        return results[(r, p)]["top1_error"]

    def diff(a, b, p="single", q=None):
        return paired(posts[(a, p)], posts[(b, q or p)], labels)

    # 1. LRN does not help: A-LRN is not better than A.
    d, se = diff("A-LRN", "A")
    helped = d < 0 and (not se > 0 or d < -2 * se)  # A-LRN better beyond 2 SE
    v = "contradicted" if helped else "supported"
    claims.append({"claim": "LRN does not improve configuration A (A vs A-LRN)",
                   "numbers": f"single-scale top-1 error A {err('A'):.1f} %, A-LRN "
                              f"{err('A-LRN'):.1f} % (A-LRN - A = {d:+.1f} ± {se:.1f} points)",
                   "verdict": v + (" (no significant gain from LRN)" if v == "supported"
                                   else " (LRN helped here, beyond 2 SE)")})
    # 2. Error falls with depth: A -> B -> D -> E.
    chain = ["A", "B", "D", "E"]
    errs = [err(r) for r in chain]
    steps = [diff(a, b) for a, b in zip(chain, chain[1:])]
    d, se = diff("A", "E")
    monotone = all(x > y for x, y in zip(errs, errs[1:]))
    claims.append({"claim": "error decreases with depth (A 11 -> B 13 -> D 16 -> E 19 layers)",
                   "numbers": "single-scale top-1 error " + ", ".join(
                       f"{r} {e:.1f} %" for r, e in zip(chain, errs)) + "; steps " + ", ".join(
                       f"{a}-{b} {x:+.1f} ± {s:.1f}" for (a, b), (x, s) in
                       zip(zip(chain, chain[1:]), steps)) + f"; A - E = {d:+.1f} ± {se:.1f} points",
                   "verdict": verdict(d, se) + ("; monotone" if monotone else "; not monotone")})
    # 3. 1x1 convolutions add less than 3x3 ones: C worse than D (and C better than B).
    d, se = diff("C", "D")
    d2, se2 = diff("B", "C")
    claims.append({"claim": "three extra 1x1 conv layers (C) help less than three 3x3 (D); "
                            "C still beats B",
                   "numbers": f"single-scale top-1 error B {err('B'):.1f} %, C {err('C'):.1f} %, "
                              f"D {err('D'):.1f} %; C - D = {d:+.1f} ± {se:.1f}, B - C = "
                              f"{d2:+.1f} ± {se2:.1f} points",
                   "verdict": f"C vs D: {verdict(d, se)}; B vs C: {verdict(d2, se2)}"})
    # 4. Scale jittering at training helps (at single and multi-scale test).
    parts, verdicts = [], []
    for p in ("single", "multi-scale"):
        for base in ("D", "D-S40"):
            d, se = diff(base, "D-S32-48", p)
            fixed = scale_label(RUNS[base][2]).split(" ")[0]
            parts.append(f"{p}: D S={fixed} {err(base, p):.1f} % vs D S=[32,48] "
                         f"{err('D-S32-48', p):.1f} % ({d:+.1f} ± {se:.1f})")
            verdicts.append(f"vs S={fixed} ({p} test): {verdict(d, se)}")
    claims.append({"claim": "scale jittering at training (S in [32, 48]) beats fixed S (32 or 40)",
                   "numbers": "; ".join(parts), "verdict": "; ".join(verdicts)})
    # 5. Multi-scale testing helps (vs single scale), model by model.
    gains = []
    for r in RUNS:
        d, se = diff(r, r, "single", "multi-scale")
        gains.append((r, d, se))
    better = sum(1 for _, d, _ in gains if d > 0)
    sig = sum(1 for _, d, se in gains if verdict(d, se) == "supported")
    worse = sum(1 for _, d, se in gains if verdict(d, se) == "contradicted")
    claims.append({"claim": "multi-scale testing beats single-scale testing",
                   "numbers": "single - multi-scale top-1 error: " + ", ".join(
                       f"{r} {d:+.1f} ± {se:.1f}" for r, d, se in gains),
                   "verdict": f"better for {better} of {len(gains)} models, significantly for "
                              f"{sig}, significantly worse for {worse}"})
    # 6. Dense and multi-crop are complementary.
    parts, verdicts = [], []
    for r in TABLE5_RUNS:
        best = min(("dense", "multi-crop"), key=lambda p: err(r, p))
        d, se = diff(r, r, best, "dense+multi-crop")
        parts.append(f"{r}: dense {err(r, 'dense'):.1f} %, multi-crop "
                     f"{err(r, 'multi-crop'):.1f} %, combined {err(r, 'dense+multi-crop'):.1f} % "
                     f"(best single method - combined = {d:+.1f} ± {se:.1f})")
        verdicts.append(f"{r}: {verdict(d, se)}")
    claims.append({"claim": "dense and multi-crop evaluation are complementary (their average "
                            "beats both)", "numbers": "; ".join(parts),
                   "verdict": ", ".join(verdicts)})
    # 7. Fusion helps.
    parts, verdicts = [], []
    for f in fusion:
        parts.append(f"{f['name']}: {f['top1_error']:.1f} % vs best member {f['best_member']} "
                     f"{f['best_member_top1_error']:.1f} % ({f['gain_over_best']:+.1f} ± "
                     f"{f['gain_se']:.1f})")
        verdicts.append(f"{f['name']}: {verdict(f['gain_over_best'], f['gain_se'])}")
    claims.append({"claim": "fusing several models (averaging their posteriors) beats the best "
                            "single model", "numbers": "; ".join(parts),
                   "verdict": "; ".join(verdicts)})
    for c, key in zip(claims, CLAIM_KEYS):
        c["key"] = key
    return claims


def eval_commands(cfgs):
    ck = {r: f"{shown(cfgs[r].out)}/checkpoint.npz" for r in cfgs}
    cmds = [f"python -m tinyvgg evaluate {ck[r]} --split val --protocol {p}"
            for r in ("D", "D-S32-48") for p in PROTO_ORDER]
    cmds.append(f"python -m tinyvgg evaluate {ck['D']} {ck['E']} --split val --protocol multi-scale"
                "   # fusion D + E")
    return cmds


PROTO_ORDER = ("single", "multi-scale", "dense", "multi-crop", "dense+multi-crop")


# ----------------------------------------------------------------------------------
# The 224-pixel path on real photographs
# ----------------------------------------------------------------------------------

def imagenet_labels(folder):
    """{wnid folder: ILSVRC-2012 class index}, or None when the folder's classes cannot be
    placed: ``../shared/data/imagenet-sample`` holds every tenth class (100 folders, whose
    sorted wnids are classes 0, 10, 20, ...), a full copy all 1000 (sorted wnids are the
    class indices torchvision's weights use)."""
    dirs = sorted(d.name for d in Path(folder).iterdir() if d.is_dir())
    stride = {100: 10, 1000: 1}.get(len(dirs))
    return None if stride is None else {d: stride * i for i, d in enumerate(dirs)}


IMAGENET_METHODS = ("single", "dense", "multi-crop", "dense+multi-crop")  # all at Q = 256


def imagenet_demo(folder, n_images=4, width=0.25, log=print, checkpoint=None):
    """A VGG-16 through rescaling, dense evaluation and multi-crop on a few photographs of
    the ImageNet sample: shapes and timings. Random weights, or with ``checkpoint`` (for
    example torchvision's pre-trained VGG-16 converted by ``python -m tinyvgg convert``)
    its weights, and then the top-1/top-5 error of each method on the photos."""
    from PIL import Image

    from tinyvgg.data.imageio import decode_image
    from tinyvgg.models import count_params, vgg

    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is not a folder of class folders of photos; give "
                         f"--imagenet-dir")
    files = sorted(p for d in sorted(folder.iterdir()) if d.is_dir() for p in sorted(d.iterdir())
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"error: no images under {folder}")
    modes = {}
    for p in files:
        with Image.open(p) as im:
            modes[p] = im.mode
    gray = [p for p in files if modes[p] in ("L", "LA", "1", "I", "F") or modes[p].startswith("I;16")]
    chosen = [p for p in files if p not in gray][:max(0, n_images - len(gray[:1]))] + gray[:1]
    t0 = time.perf_counter()
    if checkpoint is None:
        hidden = max(16, int(round(4096 * width)))
        backend.seed(0)
        model = vgg("vgg16", num_classes=1000, input_size=224, width=width, hidden=hidden,
                    init="he")
        em = ep.as_eval_model(model, mean=IMAGENET_MEAN, std=None, train_scale=256,
                              name=f"VGG-16 width {width:g}")
    else:
        em = ep.as_eval_model(str(checkpoint), train_scale=256, name=Path(checkpoint).name)
        model = em.model
        cfg = model.config
        if cfg.get("num_classes") != 1000 or em.input_size != 224 or em.channels != 3:
            raise SystemExit(f"error: {checkpoint} is a {cfg.get('name')} for "
                             f"{cfg.get('num_classes')} classes at {em.input_size} pixels and "
                             f"{em.channels} channels; the ImageNet demo needs 1000 classes, "
                             f"224 pixels, RGB")
        width, hidden = cfg.get("width", 1.0), cfg.get("hidden", 4096)
    t_build = time.perf_counter() - t0
    macs = sum(r["macs"] for r in model.layer_table())
    labels = imagenet_labels(folder) if checkpoint is not None else None
    rows = []
    for p in chosen:
        mode = modes[p]
        arr = decode_image(p, "L" if p in gray else "RGB")  # (H, W, 1) or (H, W, 3) uint8
        row = {"file": f"{p.parent.name}/{p.name}", "mode": mode, "shape": list(arr.shape)}
        t = time.perf_counter()
        single = ep.single_scale_posteriors(em, [arr], Q=256)
        row["single_s"] = time.perf_counter() - t
        row["dense"], dense_post = [], {}
        for q in (256, 384):
            resc = ep.prepare_images([arr], q, em)[0][1]
            t = time.perf_counter()
            post, maps = ep.dense_posteriors(em, [arr], Q=q, flip=True, return_maps=True)
            dense_post[q] = post
            row["dense"].append({"Q": q, "input": list(resc.shape), "score_map": list(maps[0]),
                                 "time_s": time.perf_counter() - t})
        t = time.perf_counter()
        mc = ep.multi_crop_posteriors(em, [arr], Q=256, grid=5, flip=True)
        at256 = ep.prepare_images([arr], 256, em)[0][1].shape[2:]
        row["multi_crop"] = {"Q": 256, "crops": 50, "crop_shape": [3, 224, 224],
                             "positions": len(set(ep.grid_crops(at256, 224))),
                             "time_s": time.perf_counter() - t}
        row["posterior_shape"] = list(mc.shape)
        row["top5_multi_crop"] = [int(k) for k in np.argsort(-mc[0])[:5]]
        row["agree_single_dense_top1"] = bool(single.argmax() == dense_post[256].argmax())
        if labels is not None:
            posts = {"single": single, "dense": dense_post[256], "multi-crop": mc,
                     "dense+multi-crop": 0.5 * (dense_post[256] + mc)}
            row["label"] = labels[p.parent.name]
            row["top5"] = {m: [int(k) for k in np.argsort(-np.asarray(v)[0])[:5]]
                           for m, v in posts.items()}
        rows.append(row)
        log(f"  {row['file']} ({mode}, {arr.shape[1]}x{arr.shape[0]}): dense 256 map "
            f"{row['dense'][0]['score_map']} in {row['dense'][0]['time_s']:.1f} s, multi-crop "
            f"{row['multi_crop']['time_s']:.1f} s")
    errors = None
    if labels is not None and rows:
        errors = {m: {"top1_error": 100 * float(np.mean([r["top5"][m][0] != r["label"]
                                                         for r in rows])),
                      "top5_error": 100 * float(np.mean([r["label"] not in r["top5"][m]
                                                         for r in rows]))}
                  for m in IMAGENET_METHODS}
    return {"folder": str(folder), "n_files": len(files), "grayscale_files": [
        f"{p.parent.name}/{p.name}" for p in gray], "width": width, "hidden": hidden,
        "params": model.num_params(), "params_full_width": count_params("vgg16"),
        "macs_per_224_crop": int(macs), "build_s": t_build, "images": rows,
        "mean": None if em.mean is None else [round(float(v), 2) for v in np.ravel(em.mean)],
        "std": None if em.std is None else [round(float(v), 2) for v in np.ravel(em.std)],
        "checkpoint": None if checkpoint is None else str(checkpoint), "errors": errors}


# ----------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------

def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def minutes(s):
    return "n/a" if s is None else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


def _short(text):
    """Paths in commands relative to the repository root (``../shared`` beside it)."""
    text = str(text).replace(str(REPO) + os.sep, "")
    return text.replace(str(REPO.parent) + os.sep, "../")


OVERFIT_POINTS = 5.0  # |validation - last-epoch training error| below this: not over-fitted
QUIET_LOAD = 0.5      # a 1-minute load average below this at the start: nothing else ran
# The claims of judge_claims, in order (JSON written before "key" existed is read by position).
CLAIM_KEYS = ["lrn", "depth", "1x1", "jitter", "multi-scale", "dense+crop", "fusion"]


def load_note(start, end=None):
    """The load average in words: a quiet machine, or other jobs sharing the CPU."""
    if not start:
        return "load average unknown"
    text = f"load average {start} at the start" + (f", {end} at the end" if end else "")
    if start[0] < QUIET_LOAD:
        return text + ": nothing else ran when it started"
    return (text + ": other work was running or had just stopped, so the times may be upper "
            "bounds")


def _all_supported(verdict):
    """True when every part of a (possibly compound) verdict says 'supported'."""
    if verdict.startswith("better for"):  # multi-scale: "better for k of n models, significantly for m, ..."
        k, n, m, worse = map(int, re.findall(r"\d+", verdict)[:4])
        return m == n and worse == 0
    words = re.findall(r"supported|contradicted|not resolved|not monotone", verdict)
    return bool(words) and all(x == "supported" for x in words)


def likely_reason(key, st, train_err):
    """The most likely reason a claim did not reproduce in this run, with its numbers."""
    def te(*names):
        return ", ".join(f"{r} {train_err[r]:.0f} %" for r in names if r in train_err)

    epochs = f"{st['epochs']} epochs on {st['n_train']} images at width {st['width']:g}"
    if key == "lrn":
        return ("BatchNorm after every convolution already normalises what LRN would, and one "
                "training seed per model cannot separate a small effect from seed noise.")
    if key in ("depth", "1x1"):
        chain = ["A", "B", "D", "E"] if key == "depth" else ["B", "C", "D"]
        known = [r for r in chain if r in train_err]
        if len(known) >= 2 and train_err[known[-1]] > train_err[known[0]]:
            return (f"an equal budget of {epochs} is far from convergence, and the deeper nets "
                    f"converge more slowly: last-epoch training error {te(*chain)}. The "
                    f"comparison is between under-trained networks, not of what each depth "
                    f"can learn.")
        return (f"the deeper nets fit their training batches as well or better (last-epoch "
                f"training error {te(*chain)}) but do not generalise better from "
                f"{st['n_train']} images in {st['epochs']} epochs; one seed per model adds "
                f"noise the error bars do not show.")
    if key == "jitter":
        return (f"at 32 pixels the jitter range [32, 48] gives little scale variation to learn "
                f"from, the fixed-S baseline already has pad-4 random crops, and in {epochs} "
                f"the stronger augmentation costs fit (last-epoch training error "
                f"{te('D', 'D-S40', 'D-S32-48')}).")
    if key == "multi-scale":
        return ("rescaling a 32-pixel image to Q = S - 5 throws detail away and to S + 5 "
                "invents it by interpolation, and a model trained at one fixed S never saw other "
                "scales.")
    if key == "dense+crop":
        return ("at 32 pixels the dense score map is 1 x 1, so dense evaluation is one window "
                "plus its flip and overlaps the multi-crop windows heavily: the two see "
                "nearly the same pixels and make correlated errors.")
    if key == "fusion":
        return ("the members share data, recipe and augmentation, so their errors are "
                "strongly correlated, and averaging in weaker members (Table 6 names each "
                "fusion's best member) can pull the best one down.")
    return "see the general reasons below."


def render(report):
    L = []
    w = L.append
    w("# The VGG paper's tables, reproduced small (tinyvgg)")
    w("")
    w("Everything below was measured by `benchmarks/paper_tables.py` (each section names the "
      "command and machine); nothing is copied from the paper except the claims being tested. "
      "`python benchmarks/paper_tables.py --no-study` re-renders this file from "
      "`paper_tables.json`.")
    w("")
    study = report.get("study")
    if study:
        render_study(study, w, report.get("longer"))
    if report.get("longer"):
        render_longer(report["longer"], study, w)
    else:
        w("*The CIFAR-10 study (Tables 3-6) has not been measured for this file yet: "
          "`python benchmarks/paper_tables.py` runs it (sized for about 90 minutes on a free "
          "2-core CPU, an estimate from measured per-image costs, not a measured end-to-end "
          "time); "
          "`--budget-minutes M` runs a smaller version.*")
        w("")
    demo = report.get("imagenet_demo")
    if demo:
        render_demo(demo, w)
    return "\n".join(L) + "\n"


def render_study(s, w, longer=None):
    st = s["settings"]
    runs = s["runs"]
    w("## Setting")
    w("")
    w(f"- **Measured with:** `{s['command']}` on {s['machine']} ({s['date']}; "
      f"{load_note(s.get('load_average'), s.get('load_average_end'))}); "
      + ("a QUICK pipeline check (tiny data, 1 epoch): NOT a result." if s.get("quick")
         else "a real run of the full recipe (the default, sized for at most 90 minutes on "
         "2 cores)." if s.get("budget_minutes", 90) >= 90
         else f"a real run of the {s['budget_minutes']:g}-minute recipe."))
    w(f"- **Data:** {_short(s['data_description'])}. {st['n_train']} training images and a fixed "
      f"validation split of {s['n_val']} images held out of the training images (seeded "
      f"permutation, seed {st['seed']}; the same split for every model). All errors below are "
      f"on this validation split (the paper reports ILSVRC validation errors too).")
    w(f"- **Models:** the configurations of Table 1 at width {st['width']:g} (channels "
      f"{max(1, round(64 * st['width']))}-{max(1, round(128 * st['width']))}-"
      f"{max(1, round(256 * st['width']))}-{max(1, round(512 * st['width']))}-"
      f"{max(1, round(512 * st['width']))}), fully connected layers of {st['hidden']} units, "
      f"dropout {st['dropout']:g}, "
      f"{'BatchNorm after every convolution' if st['batch_norm'] else 'no BatchNorm'}"
      f", {st['init']} initialisation. Deviation from the paper: BatchNorm lets every depth train "
      f"from scratch in a short budget (the paper initialised its deeper nets from net A instead).")
    w(f"- **Equal budget:** every model {st['epochs']} epochs of SGD (batch {st['batch_size']}, "
      f"momentum {st['momentum']:g}, weight decay {st['weight_decay']:g}), learning rate "
      f"{st['lr']:g} with a {st['warmup_epochs']:g}-epoch warm-up and a cosine decay (the "
      f"paper divides by 10 on plateaus, which a short run never reaches); random horizontal "
      f"flips.")
    w("- **Training scale S at 32 pixels** (the paper: S = 256, 384, [256, 512] with 224 "
      "crops): *S = 32*: CIFAR's pad-4-and-crop at the native scale; *S = 40*: every image "
      "rescaled to 40 x 40, random 32 x 32 crops; *S in [32, 48]*: S drawn per image (scale "
      "jittering), random 32 x 32 crops.")
    w("- **Test scales Q** (`tinyvgg.evaluate_protocols.test_scales`): single scale Q = S (Q = "
      "40 for [32, 48]); multi-scale {S - 5, S, S + 5} for fixed S (the paper's offset 32 at "
      "crop 224, scaled to crop 32: round(32 * 32 / 224) = 5) and {32, 40, 48} for [32, 48]. "
      "A test image smaller than 32 is padded with the mean colour as in training. Dense and "
      "multi-crop use the multi-scale set (as the paper's Table 5).")
    w("- **Top-5 error** is reported for the layout but means little with 10 classes (a random "
      "guess has 50 % top-5 error); read the top-1 column.")
    n = s["n_val"]
    e = float(np.mean([row["protocols"]["single"]["top1_error"] for row in runs.values()])) / 100
    w(f"- **Noise:** with {n} validation images the standard error of one error rate near "
      f"{100 * e:.0f} % (the mean here) is about {100 * math.sqrt(e * (1 - e) / n):.1f} points; "
      f"differences between two models "
      f"are judged with the paired standard error (same images) shown as ± below, and a claim "
      f"counts as supported or contradicted only beyond 2 standard errors. One training seed "
      f"per model: seed-to-seed variation of a short run is not in these error bars.")
    t = s["time"]
    w(f"- **Time:** training {minutes(t['training_s'])}, evaluation {minutes(t['evaluation_s'])}, "
      f"whole study {minutes(t['total_s'])}.")
    full = Settings()
    if not s.get("quick") and st["n_train"] < full.n_train:
        kt, ke = full.n_train / st["n_train"], full.n_val / st["n_val"]
        w(f"- **The full recipe** (the default, `--budget-minutes 90`) trains on {full.n_train} "
          f"images ({kt:.1f}x) and evaluates on {full.n_val} ({ke:.0f}x): extrapolated from "
          f"these timings, about {minutes(kt * t['training_s'])} of training and "
          f"{minutes(ke * t['evaluation_s'])} of evaluation on this machine (an estimate, not "
          f"a measurement).")
    w("")
    w("## Table 3: performance at a single test scale")
    w("")
    w("| ConvNet config. | train (S) | test (Q) | top-1 val. error (%) | top-5 val. error (%) | "
      "last-epoch train error (%) | parameters | training time |")
    w("|---|---|---|---|---|---|---|---|")
    for r, row in runs.items():
        p = row["protocols"]["single"]
        tt = minutes(row["train_time_s"]) + (" (reused)" if row.get("reused") else "")
        tr = row.get("final_train_accuracy")
        w(f"| {r} | {row['train_scale_label']} | {q_label(p['scales'])} | {fmt(p['top1_error'])} | "
          f"{fmt(p['top5_error'])} | {fmt(None if tr is None else 100 * (1 - tr))} | "
          f"{row['params']:,} | {tt} |")
    w("")
    w("Last-epoch train error: on the augmented training batches with dropout on, averaged "
      "over the last epoch (a train error close to the validation error means the model is "
      "under-fitted, not over-fitted). Training time: the training epochs only (without the "
      "per-epoch validation pass), as `metrics.json` records it.")
    w("")
    w("## Table 4: performance at multiple test scales")
    w("")
    w("| ConvNet config. | train (S) | test (Q) | top-1 val. error (%) | top-5 val. error (%) |")
    w("|---|---|---|---|---|")
    for r, row in runs.items():
        p = row["protocols"]["multi-scale"]
        w(f"| {r} | {row['train_scale_label']} | {q_label(p['scales'])} | {fmt(p['top1_error'])} | "
          f"{fmt(p['top5_error'])} |")
    w("")
    w("Each Q: the central 32 x 32 crop; posteriors averaged over the three scales.")
    w("")
    w("## Table 5: dense versus multi-crop evaluation")
    w("")
    w("| ConvNet config. | train (S) | evaluation method | test (Q) | top-1 val. error (%) | "
      "top-5 val. error (%) | evaluation time |")
    w("|---|---|---|---|---|---|---|")
    for r in TABLE5_RUNS:
        row = runs[r]
        for p, label in (("dense", "dense"), ("multi-crop", "multi-crop (5x5 grid x 2 flips per Q)"),
                         ("dense+multi-crop", "multi-crop & dense")):
            x = row["protocols"][p]
            w(f"| {r} | {row['train_scale_label']} | {label} | {q_label(x['scales'])} | "
              f"{fmt(x['top1_error'])} | {fmt(x['top5_error'])} | {minutes(x['time_s'])} |")
    w("")
    w("Dense: the fully convolutional network on the whole image and its mirror image, the "
      "class score map averaged, then soft-maxed. At 32 pixels every test image under 64 "
      "pixels gives a 1 x 1 score map (five 2 x 2 pools floor odd sides), so dense evaluation "
      "here is one window anchored at the top-left plus its flip, unlike at 224.")
    w("")
    w("## Table 6: fusion (posteriors averaged over models)")
    w("")
    w("| combined ConvNet models | evaluation | top-1 val. error (%) | top-5 val. error (%) | "
      "best member (top-1 %) |")
    w("|---|---|---|---|---|")
    for f in s["fusion"]:
        w(f"| {f['name']} | {f['protocol']} | {fmt(f['top1_error'])} | {fmt(f['top5_error'])} | "
          f"{f['best_member']} ({fmt(f['best_member_top1_error'])}) |")
    w("")
    w("## Do the paper's findings hold here?")
    w("")
    w("Differences in top-1 error points, worse minus better as the paper predicts them (a "
      "positive number agrees with the paper), ± one paired standard error.")
    w("")
    train_err = {r: 100 * (1 - row["final_train_accuracy"]) for r, row in runs.items()
                 if row.get("final_train_accuracy") is not None}
    for i, c in enumerate(s["claims"], 1):
        w(f"{i}. **{c['claim']}**: {c['verdict']}. {c['numbers']}.")
        key = c.get("key") or (CLAIM_KEYS[i - 1] if i <= len(CLAIM_KEYS) else None)
        if not _all_supported(c["verdict"]) and key:
            reason = likely_reason(key, st, train_err)
            if key == "depth" and longer and "study_e_minus_a" in longer:
                reason += (f" Tested below with {longer['epochs']} epochs instead of "
                           f"{longer['study_epochs']}: E - A went from "
                           f"{longer['study_e_minus_a']:+.1f} to {longer['e_minus_a']:+.1f} "
                           f"points ({depth_trend(longer['study_e_minus_a'], longer['study_e_minus_a_se'], longer['e_minus_a'], longer['e_minus_a_se'])}).")
            w(f"   *Likely reason:* {reason}")
    w("")
    gaps = [(r, runs[r]["protocols"]["single"]["top1_error"], tr) for r, tr in train_err.items()]
    if gaps:
        lo, hi = min(gaps, key=lambda g: g[2]), max(gaps, key=lambda g: g[2])
        spread = (f"training error from {lo[2]:.0f} % for {lo[0]} to {hi[2]:.0f} % for "
                  f"{hi[0]}")
        gap = max(abs(v - tr) for _, v, tr in gaps)
        if gap <= OVERFIT_POINTS:
            w(f"In this run every model's last-epoch training error is within {gap:.1f} points "
              f"of its validation error, so none over-fits: all are under-trained, some more "
              f"than others ({spread}).")
        else:
            g = sorted(gaps, key=lambda g: g[1] - g[2])
            w(f"Validation minus last-epoch training error ranges from {g[0][1] - g[0][2]:+.1f} "
              f"points ({g[0][0]}) to {g[-1][1] - g[-1][2]:+.1f} points ({g[-1][0]}); the "
              f"training error is measured on augmented batches with dropout on, so it "
              f"overstates the clean training error ({spread}).")
        w("")
    w("Why a claim may not reproduce here, in general: the budget is a few epochs at width "
      f"{st['width']:g} on {st['n_train']} images, so deeper nets (which train more slowly per "
      "epoch) are far from converged and the comparison is between under-trained networks; "
      "32-pixel images leave little room for scale effects (S = 40 is only 1.25x the crop) and "
      "for dense evaluation (1 x 1 score maps); and one seed per model. The paper trained "
      "74 epochs on 1.3M images at full width.")
    w("")
    w("## Exact commands")
    w("")
    w("The study:")
    w("")
    w("```")
    w(s["command"])
    w("```")
    w("")
    w("Each training run, as `python -m tinyvgg train` (what the script runs in-process through "
      "`tinyvgg.train.train(TrainConfig(...))`):")
    w("")
    w("```")
    for r, cmd in s["train_commands"].items():
        w(_short(cmd))
    w("```")
    w("")
    w("Evaluating a run with any protocol (`--split val` rebuilds the same held-out split "
      "from the checkpoint's training settings), for example:")
    w("")
    w("```")
    for cmd in s["eval_commands"]:
        w(_short(cmd))
    w("```")
    w("")


def depth_trend(d0, se0, d, se):
    """How E - A (top-1 error points) moved from the study (d0) to longer training (d),
    judged against 2 standard errors of the larger of the two."""
    tol = 2 * max(se, se0)
    if d - d0 < -tol:
        text = "E gains on A, towards the paper's finding"
    elif d - d0 > tol:
        text = "E falls further behind A, away from the paper's finding"
    else:
        return "the gap barely changes"
    if d < -2 * se and d0 > 0:
        text += ", and E is now better beyond 2 standard errors"
    return text


def render_longer(lg, study, w):
    w(f"## Is the depth result under-training? A and E trained {lg['epochs']} epochs")
    w("")
    w(f"Measured with `{lg['command']}` on {lg['machine']} ({lg['date']}; "
      f"{load_note(lg.get('load_average'), lg.get('load_average_end'))}); "
      f"{minutes(lg['time_s'])} in all. The recipe, data, validation split and seed of the "
      f"study above, only the number of epochs changed (the cosine schedule stretches with "
      f"it).")
    w("")
    w("| ConvNet config. | epochs | top-1 val. error (%) | last-epoch train error (%) | "
      "training time |")
    w("|---|---|---|---|---|")
    rows = []
    if study:
        for r in LONGER_RUNS:
            row = study["runs"].get(r)
            if row:
                rows.append((r, study["settings"]["epochs"],
                             row["protocols"]["single"]["top1_error"],
                             row.get("final_train_accuracy"), row["train_time_s"]))
    for r in LONGER_RUNS:
        row = lg["runs"][r]
        rows.append((r, row["epochs"], row["top1_error"], row.get("final_train_accuracy"),
                     row["train_time_s"]))
    for r, e, err, tr, t in rows:
        w(f"| {r} | {e} | {fmt(err)} | {fmt(None if tr is None else 100 * (1 - tr))} | "
          f"{minutes(t)} |")
    w("")
    d, se = lg["e_minus_a"], lg["e_minus_a_se"]
    if "study_e_minus_a" in lg:
        d0, se0 = lg["study_e_minus_a"], lg["study_e_minus_a_se"]
        w(f"E minus A, top-1 error: {d0:+.1f} ± {se0:.1f} points after {lg['study_epochs']} "
          f"epochs, {d:+.1f} ± {se:.1f} after {lg['epochs']} (a negative number means the "
          f"deeper E is better, as the paper finds). With "
          f"{lg['epochs'] / max(1, lg['study_epochs']):g}x the training, "
          f"{depth_trend(d0, se0, d, se)}.")
    else:
        w(f"E minus A, top-1 error after {lg['epochs']} epochs: {d:+.1f} ± {se:.1f} points "
          f"(a negative number means the deeper E is better, as the paper finds).")
    w("")
    w("```")
    for cmd in lg["train_commands"].values():
        w(_short(cmd))
    w("```")
    w("")


def render_demo(d, w):
    w("## The 224-pixel path on real photographs (ImageNet sample)")
    w("")
    w(f"Measured with `{d['command']}` on {d['machine']} ({d['date']}; "
      f"{load_note(d.get('load_average'))}).")
    w("")
    if d.get("checkpoint"):
        weights = (f"the weights of `{_short(d['checkpoint'])}`: the predictions are real, "
                   f"and the errors below compare the methods")
    else:
        weights = ("**random weights** (He initialisation): the shapes and timings are the "
                   "point, the predicted classes mean nothing")
    w(f"{len(d['images'])} photographs of `{_short(d['folder'])}` ({d['n_files']} files; "
      f"grayscale: {', '.join(d['grayscale_files']) or 'none'}) through the paper's test-time "
      f"pipeline with a VGG-16 (configuration D) of {weights}. "
      f"Width {d['width']:g} (hidden {d['hidden']}): {d['params']:,} parameters and "
      f"{d['macs_per_224_crop'] / 1e9:.2f} G multiply-adds per 224 x 224 crop"
      + (f", against {d['params_full_width']:,} parameters at full width (about 15.5 G "
         f"multiply-adds per crop, too slow for this CPU demo)" if d['width'] < 1 else "")
      + f". Mean RGB {d['mean']} subtracted"
      + (f", divided by the std {d['std']}" if d.get("std") else "")
      + f"; grayscale photos are repeated over the three channels. Built in "
      f"{d['build_s']:.1f} s.")
    w("")
    w("| image | mode | H x W x C | Q | rescaled input (N, C, H, W) | dense score map (N, K, h, w) "
      "| dense time (2 passes) | multi-crop at Q = 256 (50 crops) |")
    w("|---|---|---|---|---|---|---|---|")
    for r in d["images"]:
        for i, dn in enumerate(r["dense"]):
            mc = (f"{r['multi_crop']['positions']} positions x 2 flips of (3, 224, 224), "
                  f"{r['multi_crop']['time_s']:.1f} s") if i == 0 else ""
            w(f"| {r['file'] if i == 0 else ''} | {r['mode'] if i == 0 else ''} | "
              f"{'x'.join(map(str, r['shape'])) if i == 0 else ''} | {dn['Q']} | "
              f"{tuple(dn['input'])} | {tuple(dn['score_map'])} | {dn['time_s']:.1f} s | {mc} |")
    w("")
    dense = [r["dense"][0]["time_s"] for r in d["images"]]
    crops = [r["multi_crop"]["time_s"] for r in d["images"]]
    single = [r["single_s"] for r in d["images"]]
    w(f"Mean time per image at Q = 256: central crop {np.mean(single):.1f} s, dense (image + "
      f"flip) {np.mean(dense):.1f} s, multi-crop (50 crops) {np.mean(crops):.1f} s: dense "
      f"evaluation sees the whole image for {np.mean(crops) / max(np.mean(dense), 1e-9):.0f}x less "
      f"time than the 50 crops, the paper's reason to prefer it (section 3.2).")
    w("")
    if d.get("errors"):
        w(f"Error on these {len(d['images'])} photographs, every method at Q = 256 (class "
          f"indices from `imagenet_labels`: the sample's sorted wnids are every tenth ILSVRC "
          f"class):")
        w("")
        w("| method | top-1 error (%) | top-5 error (%) |")
        w("|---|---|---|")
        for m, e in d["errors"].items():
            w(f"| {m} | {fmt(e['top1_error'])} | {fmt(e['top5_error'])} |")
        w("")
    w("Rescaling keeps the aspect ratio (shorter side Q), so the dense score map is not square: "
      "h = H / 32 - 6, w = W / 32 - 6 (rounded down), with fc6 a 7 x 7 convolution and fc7, "
      "fc8 1 x 1 convolutions. The class posteriors are (1, 1000) for every method.")
    w("")


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
    p.add_argument("--out", default=None, help="run folders (default runs/paper_tables, "
                   "runs/paper_tables_quick with --quick)")
    p.add_argument("--results", default=None, help="where paper_tables.md/.json go (default "
                   "benchmarks/results; OUT with --quick)")
    p.add_argument("--budget-minutes", type=float, default=90.0,
                   help="scale the training set to this budget on a 2-core CPU (default 90)")
    p.add_argument("--quick", action="store_true", help="the whole pipeline on a tiny dataset, "
                   "width 1/16, 1 epoch (< 2 min): a test, not a result")
    p.add_argument("--reuse", action="store_true", help="do not retrain runs that finished with "
                   "the same settings")
    p.add_argument("--no-study", action="store_true", help="skip the CIFAR-10 study (keep the "
                   "study already in the results JSON)")
    p.add_argument("--imagenet-demo", action="store_true", help="add the 224-pixel section")
    p.add_argument("--imagenet-dir", default=str(DEFAULT_IMAGENET))
    p.add_argument("--imagenet-images", type=int, default=4)
    p.add_argument("--imagenet-checkpoint", default=None, metavar="NPZ",
                   help="weights for the demo instead of random ones, e.g. torchvision's "
                        "pre-trained VGG-16 after `python -m tinyvgg convert vgg16.pth "
                        "vgg16.npz`; the demo then reports each method's error on the photos")
    p.add_argument("--imagenet-width", type=float, default=0.25,
                   help="VGG-16 width for the demo (1.0 = the paper's 138M parameters; slow)")
    p.add_argument("--longer", type=int, default=None, metavar="EPOCHS",
                   help="also train A and E for EPOCHS epochs (recipe otherwise unchanged) to "
                        "test whether under-training explains the depth result; costs "
                        "EPOCHS / 8 times the study's training time of A and E")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = p.parse_args(argv)
    if args.longer is not None and args.longer < 1:
        p.error(f"--longer needs a positive number of epochs, got {args.longer}")

    st = Settings.quick() if args.quick else Settings.for_budget(args.budget_minutes)
    if args.out is None:
        args.out = str(REPO / "runs" / ("paper_tables_quick" if args.quick else "paper_tables"))
    results = Path(args.results) if args.results else \
        (Path(args.out) if args.quick else REPO / "benchmarks" / "results")
    results.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results / "paper_tables.json", results / "paper_tables.md"

    def log(msg):
        print(msg, flush=True)

    # Sections not run now are kept from the existing JSON (each says how it was measured).
    report = {}
    if json_path.is_file():
        try:
            report = json.loads(json_path.read_text())
        except ValueError:
            report = {}
    threads = " ".join(f"{k}={os.environ[k]}" for k in
                       ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                       if k in os.environ)
    cmd = ((threads + " " if threads else "") + "python benchmarks/paper_tables.py " + " ".join(
        argv if argv is not None else sys.argv[1:])).strip()
    stamp = dict(command=cmd, machine=machine(), date=time.strftime("%Y-%m-%d %H:%M"),
                 load_average=_load())
    if not args.no_study:
        log(f"paper_tables: {'QUICK ' if args.quick else ''}study, settings {asdict(st)}")
        report["study"] = run_study(args, st, log)
        report["study"].update(stamp, quick=args.quick, load_average_end=_load(),
                               budget_minutes=None if args.quick else args.budget_minutes)
        if report.pop("longer", None) is not None and not args.longer:
            log("dropped the old --longer section: it compared against the previous study")
    if args.longer:
        study = report.get("study")
        base = Settings(**study["settings"]) if (args.no_study and study) else st
        log(f"longer training: A and E for {args.longer} epochs")
        report["longer"] = longer_training(args, base, args.longer, study, log)
        report["longer"].update(stamp, load_average_end=_load())
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
    log(f"wrote {md_path} and {json_path}")
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())
