"""The study of experiments/paper_tables.py: train the configurations of Table 1 on CIFAR-10
at one equal budget, evaluate them with the paper's test protocols and judge each of the
paper's claims with paired standard errors.

Everything here computes; nothing renders (:mod:`paper_report` turns the dict this module
returns into the Markdown report, :mod:`paper_tables` is the command that runs both).
Resumable: with ``reuse`` a run whose folder holds a finished training with the same
settings is not trained again (:func:`train_run`), so an interrupted study continues
where it stopped.

Sections: the runs and their recipe (:data:`RUNS`, :class:`Settings`), data
(:func:`quick_dataset`, :func:`study_data`), training (:func:`train_config`,
:func:`train_run`, :func:`train_command`), statistics (:func:`paired`, :func:`verdict`),
the study (:func:`run_study`, :func:`longer_training`), fusion and the claims
(:func:`fusion_table`, :func:`judge_claims`), and the 224-pixel path on photographs
(:func:`imagenet_demo`).
"""

from __future__ import annotations

import json
import math
import os
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
    # The paper's recipe (no label smoothing, plain momentum, decay on every parameter,
    # no flip TTA), with the study's own schedule, rate, batch and dropout below.
    return TrainConfig.from_recipe(
        "paper", model=name, dataset=dataset, data_dir=str(data_dir), epochs=st.epochs,
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
    parts = ["python -m tinyvgg train", f"--recipe {cfg.recipe}", f"--model {cfg.model}", f"--dataset {cfg.dataset}",
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
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
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
    return data_dir, f"CIFAR-10 training images from {shown(data_dir)}", None


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
        "settings": asdict(st), "dataset": dataset, "data_dir": shown(data_dir),
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


def _claim(claim, rows, sep):
    """A claim from ``[(numbers, verdict)]`` rows, one per model or fusion."""
    return {"claim": claim, "numbers": "; ".join(n for n, _ in rows),
            "verdict": sep.join(v for _, v in rows)}


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
    def complementary(r):
        best = min(("dense", "multi-crop"), key=lambda p: err(r, p))
        d, se = diff(r, r, best, "dense+multi-crop")
        return (f"{r}: dense {err(r, 'dense'):.1f} %, multi-crop {err(r, 'multi-crop'):.1f} %, "
                f"combined {err(r, 'dense+multi-crop'):.1f} % (best single method - combined = "
                f"{d:+.1f} ± {se:.1f})", f"{r}: {verdict(d, se)}")

    claims.append(_claim("dense and multi-crop evaluation are complementary (their average "
                         "beats both)", [complementary(r) for r in TABLE5_RUNS], ", "))
    # 7. Fusion helps.
    claims.append(_claim(
        "fusing several models (averaging their posteriors) beats the best single model",
        [(f"{f['name']}: {f['top1_error']:.1f} % vs best member {f['best_member']} "
          f"{f['best_member_top1_error']:.1f} % ({f['gain_over_best']:+.1f} ± {f['gain_se']:.1f})",
          f"{f['name']}: {verdict(f['gain_over_best'], f['gain_se'])}") for f in fusion], "; "))
    for c, key in zip(claims, CLAIM_KEYS):
        c["key"] = key
    return claims


# The claims of judge_claims, in order (JSON written before "key" existed is read by position).
CLAIM_KEYS = ["lrn", "depth", "1x1", "jitter", "multi-scale", "dense+crop", "fusion"]


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
    from tinyvgg.models import count_params, hidden_width, vgg

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
        hidden = hidden_width(width)
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
    return {"folder": shown(folder), "n_files": len(files), "grayscale_files": [
        f"{p.parent.name}/{p.name}" for p in gray], "width": width, "hidden": hidden,
        "params": model.num_params(), "params_full_width": count_params("vgg16"),
        "macs_per_224_crop": int(macs), "build_s": t_build, "images": rows,
        "mean": None if em.mean is None else [round(float(v), 2) for v in np.ravel(em.mean)],
        "std": None if em.std is None else [round(float(v), 2) for v in np.ravel(em.std)],
        "checkpoint": None if checkpoint is None else shown(checkpoint), "errors": errors}
