"""The study of experiments/paper_tables.py: train the configurations of Table 1 (and
B-5x5, and D with scale jittering) on CIFAR-10 at one equal budget, evaluate them with the
paper's test protocols and judge each of the paper's claims on seed-averaged differences
with paired standard errors.

Everything here computes; nothing renders (:mod:`paper_report` turns the dict this module
returns into the Markdown report and figures, :mod:`paper_tables` is the command that runs
both). Resumable in parts: each run's folder keeps its checkpoint, history and cached
posteriors (:func:`train_run`, :func:`evaluate_run`), so an interrupted study continues
where it stopped.

Sections: the runs and their recipe (:data:`RUNS`, :func:`group`, :class:`Settings`), data
(:func:`quick_dataset`, :func:`study_data`), one run (:func:`train_config`,
:func:`train_run`, :func:`evaluate_run`, :func:`run_one`, :func:`train_command`),
statistics (:func:`paired_correct`, :class:`Evidence`, :func:`verdict`), the study
(:func:`execute`, :func:`run_study`), fusion and the claims (:func:`fusion_table`,
:func:`judge_claims`), and the 224-pixel path on photographs (:func:`imagenet_demo`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
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

# ----------------------------------------------------------------------------------
# The runs and their recipe
# ----------------------------------------------------------------------------------

# The models of the study: run name -> (tinyvgg model name, configuration, training
# scale S, training seed). The seed changes the initialisation, batch order, augmentation
# and dropout, never the validation images (every run shares ``Settings.split_seed``).
RUNS = {
    "A": ("vgg11", "A", None, 1),
    "A-seed2": ("vgg11", "A", None, 2),
    "A-LRN": ("vgg11_lrn", "A-LRN", None, 1),
    "B": ("vgg13", "B", None, 1),
    "B-seed2": ("vgg13", "B", None, 2),
    "B-5x5": ("vgg13_5x5", "B-5x5", None, 1),
    "C": ("vgg16_1x1", "C", None, 1),
    "D": ("vgg16", "D", None, 1),
    "D-seed2": ("vgg16", "D", None, 2),
    "E": ("vgg19", "E", None, 1),
    "E-seed2": ("vgg19", "E", None, 2),
    "D-S32-48": ("vgg16", "D", (32, 48), 1),
}
DEPTH_CHAIN = ["A", "B", "D", "E"]          # the depth claim: 11 -> 13 -> 16 -> 19 layers
DEPTH = {"A": 11, "A-LRN": 11, "B": 13, "B-5x5": 8, "C": 16, "D": 16, "E": 19}  # weight layers
TABLE5_RUNS = ["D", "D-S32-48"]             # dense vs multi-crop (the paper's Table 5)
PROTOCOLS = ("single", "multi-scale", "dense")
# Relative cost of one training epoch (VGG-11-BN = 1): the training times of the 12-epoch
# study of commit c487f39 (width 1/4, batch 128, two runs at a time, one thread each).
# They set the order in which runs start (longest first) and the remaining-time estimate.
COST = {"vgg11": 1.0, "vgg11_lrn": 1.7, "vgg13": 1.7, "vgg13_5x5": 1.3, "vgg16_1x1": 1.63,
        "vgg16": 2.1, "vgg19": 2.5}


def group(name):
    """The runs of one model (configuration and training scale) over its seeds: "A" ->
    ["A", "A-seed2"]; a run without seeds -> [name]."""
    model, cfgname, scale, _ = RUNS[name]
    return [r for r, (m, c, s, _) in RUNS.items() if (m, c, s) == (model, cfgname, scale)]


@dataclass
class Settings:
    """The budget every run gets: ``train``'s default recipe (one cycle to lr 0.1,
    Nesterov momentum, batch 128, weight decay on weights only, no dropout, pad-4 crops
    and flips) at width 1/4, on every CIFAR-10 training image except ``n_val`` held out
    (``n_train`` None: all of them)."""

    width: float = 0.25
    hidden: int | None = None     # None: 4096 * width, as the command line
    batch_norm: bool = True
    epochs: int = 15
    batch_size: int = 128
    crop_padding: int = 4
    n_train: int | None = None
    n_val: int = 5000
    split_seed: int = 1
    eval_batch: int = 250
    multi_crop_images: int = 2000  # multi-crop (50 windows per scale) on this many of the n_val
    recipe: str = "default"
    lr: float | None = None        # None: the recipe's

    @classmethod
    def quick(cls):
        return cls(width=1 / 16, hidden=16, epochs=1, batch_size=16, n_train=40, n_val=16,
                   eval_batch=64, multi_crop_images=8)


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
# Training and evaluation of one run (in this process or a worker process)
# ----------------------------------------------------------------------------------

def train_config(run, st, dataset, data_dir, out, device, progress):
    from tinyvgg.train import TrainConfig

    name, _, scale, seed = RUNS[run]
    extra = {} if st.lr is None else {"lr": st.lr}
    return TrainConfig.from_recipe(
        st.recipe, model=name, dataset=dataset, data_dir=str(data_dir), epochs=st.epochs,
        batch_size=st.batch_size, width=st.width, hidden=st.hidden, batch_norm=st.batch_norm,
        input_size=None, val_size=st.n_val, flip=True, crop_padding=st.crop_padding,
        scale=scale, limit=None if st.n_train is None else st.n_train + st.n_val,
        eval_batch_size=st.eval_batch, seed=seed, split_seed=st.split_seed, device=device,
        out=str(Path(out) / run), progress=progress, log_every=50, **extra)


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


def train_command(cfg, st):
    """The ``python -m tinyvgg train`` command equivalent to ``cfg`` (the recipe's
    defaults left out)."""
    parts = ["python -m tinyvgg train"] + ([f"--recipe {cfg.recipe}"] if cfg.recipe != "default" else []) + [
        f"--model {cfg.model}", f"--dataset {cfg.dataset}", f"--data-dir {shown(cfg.data_dir)}",
        f"--width {cfg.width:g}"]
    if st.hidden is not None:
        parts.append(f"--hidden {cfg.hidden}")
    parts += ["--batch-norm" if cfg.batch_norm else "--no-batch-norm", f"--epochs {cfg.epochs}",
              f"--batch-size {cfg.batch_size}"]
    if st.lr is not None:
        parts.append(f"--lr {cfg.lr:g}")
    if cfg.limit is not None:
        parts.append(f"--limit {cfg.limit}")
    parts += [f"--val-size {int(cfg.val_size)}", f"--seed {cfg.seed}", f"--split-seed {cfg.split_seed}",
              f"--eval-batch-size {cfg.eval_batch_size}"]
    if isinstance(cfg.scale, (tuple, list)):
        parts.append(f"--scale {cfg.scale[0]},{cfg.scale[1]}")
    elif cfg.scale is not None:
        parts.append(f"--scale {cfg.scale}")
    parts.append(f"--out {shown(cfg.out)}")
    return " ".join(parts)


def _same_config(saved, cfg):
    """Whether a run folder's saved config trained what ``cfg`` asks for (the data folder
    compared as a resolved path, so a relative and an absolute spelling agree)."""
    ignore = {"progress", "device", "out", "log_every", "data_dir"}
    want = cfg.to_dict()

    def where(d):
        return None if d.get("data_dir") is None else Path(d["data_dir"]).resolve()

    return where(saved) == where(want) and all(saved.get(k) == v for k, v in want.items()
                                               if k not in ignore)


def _saved_config(folder):
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def train_run(run, cfg, reuse, log):
    """Train (or reuse) one run; returns its metrics dict with ``wall_s``, ``started`` and
    ``finished`` (Unix times). With ``reuse``: a finished run with the same settings is
    kept; an interrupted one (a checkpoint, no metrics.json) continues from its checkpoint."""
    from tinyvgg.train import train

    folder = Path(cfg.out)
    saved = _saved_config(folder) if reuse else None
    same = saved is not None and _same_config(saved, cfg) and (folder / "checkpoint.npz").is_file()
    if same and (folder / "metrics.json").is_file():
        metrics = json.loads((folder / "metrics.json").read_text())
        if metrics.get("epochs") == cfg.epochs:
            log(f"  {run}: reusing the finished run in {shown(folder)}")
            metrics["reused"] = True
            return metrics
    # What a previous training left here describes another checkpoint: never read it back.
    for stale in ("metrics.json", "protocols.json", "posteriors.npz"):
        (folder / stale).unlink(missing_ok=True)
    t0, started = time.perf_counter(), time.time()
    try:
        load = [round(v, 2) for v in os.getloadavg()]  # the machine when this run started
    except OSError:
        load = None
    resume = str(folder) if same else None
    if resume:
        log(f"  {run}: continuing the interrupted run in {shown(folder)}")
    metrics = train(cfg, resume=resume)
    metrics.update(wall_s=time.perf_counter() - t0, started=started, finished=time.time(),
                   resumed=bool(resume), reused=False, load_average=load)
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def multi_crop_indices(labels, n):
    """The validation images multi-crop evaluates: a seeded sample of ``n`` that keeps the
    class proportions (all of them when ``n`` >= their number), sorted."""
    from tinyvgg.data import stratified_sample

    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    return np.sort(np.asarray(stratified_sample(labels, int(n), 0)))


def evaluate_run(run, cfg, st, reuse, log):
    """The paper's test protocols for one run on the validation set: single scale,
    multi-scale and dense for every run, multi-crop (on ``st.multi_crop_images`` of the
    validation images) for the runs of Table 5. Cached in the run folder
    (``protocols.json`` and ``posteriors.npz``, tied to the checkpoint's size and time), so
    a resumed study does not evaluate again. Returns (results, posteriors, labels,
    multi-crop indices): ``{protocol: metrics}``, ``{protocol: (N, K)}``, (N,), (M,)."""
    from tinyvgg.train import prepare_data

    folder = Path(cfg.out)
    ck = folder / "checkpoint.npz"
    stamp = {"checkpoint_size": ck.stat().st_size, "checkpoint_mtime_ns": ck.stat().st_mtime_ns,
             "multi_crop_images": st.multi_crop_images, "eval_batch": st.eval_batch}
    protocols = PROTOCOLS + (("multi-crop",) if run in TABLE5_RUNS else ())
    jpath, ppath = folder / "protocols.json", folder / "posteriors.npz"
    if reuse and jpath.is_file() and ppath.is_file():
        saved = json.loads(jpath.read_text())
        if saved.get("stamp") == stamp and set(protocols) <= set(saved["results"]):
            with np.load(ppath) as z:
                posts = {p: z[p] for p in protocols}
                labels, mc_idx = z["labels"], z["multi_crop_idx"]
            log(f"  {run}: reusing its evaluation in {shown(jpath)}")
            return saved["results"], posts, labels, mc_idx
    val = prepare_data(cfg)["val"]
    labels = np.asarray(val.labels)
    mc_idx = multi_crop_indices(labels, st.multi_crop_images)
    em = ep.as_eval_model(ck, name=run)
    results, posts = {}, {}
    for p in protocols:
        data = val.subset(mc_idx) if p == "multi-crop" else val
        res = ep.evaluate_protocol(em, data, p, batch_size=st.eval_batch, progress=False,
                                   return_posteriors=True, desc=f"{run} {p}")
        posts[p] = res["posteriors"]
        results[p] = {"top1_error": 100 * res["top1_error"], "top5_error": 100 * res["top5_error"],
                      "scales": res["scales"], "time_s": res["time_s"], "n": res["n"]}
        log(f"  {run:9s} {p:12s} Q = {q_label(res['scales']):10s} top-1 error "
            f"{100 * res['top1_error']:5.1f} % on {res['n']} images ({res['time_s']:.0f} s)")
    np.savez_compressed(ppath, labels=labels, multi_crop_idx=mc_idx, **posts)
    atomic_write_text(jpath, json.dumps({"stamp": stamp, "results": results}, indent=2))
    return results, posts, labels, mc_idx


def run_one(run, cfg, st, reuse, workers=None):
    """Train and evaluate one run (the job of a worker process). ``workers``: the number
    of CPU worker threads in this process (1 when several runs share the cores)."""
    if workers is not None:
        from tinyvgg.ops.cpu import parallel
        parallel.set_workers(workers)

    def log(msg):
        print(msg, flush=True)

    backend.use(cfg.device)
    metrics = train_run(run, cfg, reuse, log)
    evaluate_run(run, cfg, st, True, log)  # cached in the run folder for run_study
    return {"run": run, "metrics": metrics}


# ----------------------------------------------------------------------------------
# Statistics: paired over the same validation images, averaged over seeds
# ----------------------------------------------------------------------------------

def correct(post, labels):
    return (np.asarray(post).argmax(axis=1) == np.asarray(labels)).astype(np.float64)


def paired_correct(ca, cb):
    """Top-1 error difference err(a) - err(b) in points from per-image correctness
    (each a seed average or one run's 0/1), and its paired standard error: the standard
    deviation of the per-image differences over sqrt(n)."""
    d = np.asarray(cb, np.float64) - np.asarray(ca, np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return 100 * float(d.mean()), 100 * se


def verdict(delta, se, expect_positive=True):
    """'supported', 'contradicted' or 'not resolved' for a difference that the paper
    says is positive (err of the worse - err of the better), at 2 standard errors."""
    if not math.isfinite(se) or se == 0:  # no spread: the sign decides
        if delta == 0:
            return "not resolved"
        return "supported" if (delta > 0) == expect_positive else "contradicted"
    z = delta / se if expect_positive else -delta / se
    if z >= 2:
        return "supported"
    if z <= -2:
        return "contradicted"
    if z == 0:
        return "not resolved (no difference)"
    return "not resolved (within 2 SE)" if z > 0 else "not resolved (within 2 SE; wrong sign)"


def word(v):
    """The verdict without its qualifier: supported, contradicted or not resolved."""
    return v if v in ("supported", "contradicted") else "not resolved"


def metrics_of(post, labels):
    return {"top1_error": 100 * (1 - ep.topk_accuracy(post, labels, 1)),
            "top5_error": 100 * (1 - ep.topk_accuracy(post, labels, 5))}


class Evidence:
    """The study's posteriors, with seed-averaged statistics. ``posts[(run, protocol)]``
    is (N, K) over the validation images, except the multi-crop protocols, which cover
    the images ``mc_idx`` only (``labels_of`` gives the matching labels)."""

    SUBSET = ("multi-crop", "dense+multi-crop", "dense@mc")

    def __init__(self, posts, labels, mc_idx):
        self.posts, self.labels, self.mc_idx = posts, np.asarray(labels), np.asarray(mc_idx)

    def labels_of(self, protocol):
        return self.labels[self.mc_idx] if protocol in self.SUBSET else self.labels

    def correct(self, runs, protocol="single"):
        """Per-image correctness averaged over ``runs`` (a run name or a list: its seeds)."""
        runs = [runs] if isinstance(runs, str) else list(runs)
        lab = self.labels_of(protocol)
        return np.mean([correct(self.posts[(r, protocol)], lab) for r in runs], axis=0)

    def err(self, runs, protocol="single"):
        """Top-1 error (%) averaged over seeds."""
        return 100 * (1 - float(self.correct(runs, protocol).mean()))

    def seed_errs(self, runs, protocol="single"):
        return [self.err(r, protocol) for r in ([runs] if isinstance(runs, str) else runs)]

    def diff(self, a, b, p="single", q=None):
        """Seed-averaged err(a) - err(b) (points) ± paired SE; a, b: a run or its seeds."""
        return paired_correct(self.correct(a, p), self.correct(b, q or p))


def seeds_note(ev, runs, protocol="single"):
    """'A 21.3 % (seeds 21.0, 21.6)' for a group, 'A-LRN 22.0 %' for one run."""
    name = runs if isinstance(runs, str) else runs[0]
    if isinstance(runs, str) or len(runs) == 1:
        return f"{name} {ev.err(runs, protocol):.1f} %"
    per = ", ".join(f"{e:.1f}" for e in ev.seed_errs(runs, protocol))
    return f"{name} {ev.err(runs, protocol):.1f} % (seeds {per})"


# ----------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------

def study_data(args):
    """(data folder, description): CIFAR-10 from ``--data-dir`` or ``../shared``, or with
    ``--quick`` a tiny stand-in made once in ``OUT/quick-data`` (so a resumed quick study
    finds the same data)."""
    if args.quick and args.data_dir is None:
        root = Path(args.out) / "quick-data"
        marker = root / "description.txt"
        if not marker.is_file():
            shutil.rmtree(root, ignore_errors=True)
            _, desc = quick_dataset(root / "images")
            atomic_write_text(marker, desc)
        return root / "images", marker.read_text()
    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA
    if not data_dir.exists():
        hint = "" if args.quick else ", or --quick (a tiny stand-in dataset)"
        raise SystemExit(f"error: {data_dir} not found; give --data-dir (the class-folder "
                         f"copy of CIFAR-10 or the official release){hint}")
    return data_dir, f"CIFAR-10 training images from {shown(data_dir)}"


def run_cost(run, st):
    return COST[RUNS[run][0]] * st.epochs


def execute(runs, cfgs, st, args, log):
    """Train and evaluate ``runs``, ``args.jobs`` at a time (each worker process on one
    thread: two single-threaded trainings use 2 cores better than one on two threads),
    longest first; logs each finished run with the time left. Returns {run: job result}."""
    order = sorted(runs, key=lambda r: -run_cost(r, st))
    total = sum(run_cost(r, st) for r in runs)
    t0 = time.perf_counter()
    done, cost_trained, cost_left = {}, 0.0, total

    def finished(res):
        nonlocal cost_trained, cost_left
        r = res["run"]
        done[r] = res
        cost_left -= run_cost(r, st)
        m = res["metrics"]
        if not m.get("reused"):
            cost_trained += run_cost(r, st)
        elapsed = time.perf_counter() - t0
        left = (f", about {elapsed / cost_trained * cost_left / 60:.0f} min left"
                if cost_trained > 0 and cost_left > 0 else "")
        log(f"[{len(done)}/{len(runs)}] {r} done: validation accuracy "
            f"{m.get('final_val_accuracy', float('nan')):.4f}"
            + (" (reused)" if m.get("reused") else f", training {m['train_time_s'] / 60:.1f} min")
            + f"; {elapsed / 60:.1f} min since the start{left}")

    jobs = max(1, int(getattr(args, "jobs", 1) or 1))
    if jobs == 1 or args.device != "cpu":
        for r in order:
            log(f"training {r} ({RUNS[r][0]}, S = {scale_label(RUNS[r][2])}, seed {RUNS[r][3]})")
            finished(run_one(r, cfgs[r], st, args.reuse))
        return done
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # The worker processes read these when NumPy loads: one BLAS thread each.
    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            log(f"training {len(runs)} runs, {jobs} at a time (one thread each), longest first")
            futs = [pool.submit(run_one, r, cfgs[r], st, args.reuse, 1) for r in order]
            try:
                for f in as_completed(futs):
                    finished(f.result())
            except BaseException:
                # a failed run (or Ctrl-C) stops the study now, not after the queued runs;
                # the finished runs stay on disk for the next --reuse
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return done


def _evaluated_at(folder):
    """When a run's evaluation was written (Unix time; the cache file's time), so a
    resumed study reports when the work was done, not when it was read back."""
    try:
        return (Path(folder) / "protocols.json").stat().st_mtime
    except OSError:
        return None


def _history(folder):
    """[{epoch, train_acc, val_acc}] of a run (its history.json), [] when missing."""
    try:
        h = json.loads((Path(folder) / "history.json").read_text())
    except (OSError, ValueError):
        return []
    return [{k: row.get(k) for k in ("epoch", "train_acc", "val_acc", "train_loss", "val_loss")}
            for row in h]


def run_study(args, st, log):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, data_desc = study_data(args)
    dataset = dataset_kind(data_dir)
    backend.use(args.device)
    t_study = time.perf_counter()
    runs = list(RUNS)
    cfgs = {r: train_config(r, st, dataset, data_dir, out, args.device, False) for r in runs}
    log(f"data: {data_desc} ({dataset}); "
        f"{'all' if st.n_train is None else st.n_train} training images but {st.n_val} "
        f"held out for validation (split seed {st.split_seed}, the same for every run)")
    jobs = execute(runs, cfgs, st, args, log)
    t_runs = time.perf_counter() - t_study
    # Every run's cached evaluation, on the same validation images.
    posts, results, labels, mc_idx = {}, {}, None, None
    for r in runs:
        res, p, lab, idx = evaluate_run(r, cfgs[r], st, True, lambda m: None)
        if labels is None:
            labels, mc_idx = lab, idx
        if not (np.array_equal(lab, labels) and np.array_equal(idx, mc_idx)):
            raise RuntimeError(f"{r}: its validation images differ from {runs[0]}'s; the "
                               f"runs must share one split (split_seed)")
        for k, v in p.items():
            posts[(r, k)] = v
        results.update({(r, k): v for k, v in res.items()})
    for r in TABLE5_RUNS:
        # dense + multi-crop: the average of the two posteriors (section 4.3), on the
        # multi-crop images; dense on the same images for the comparison
        posts[(r, "dense@mc")] = posts[(r, "dense")][mc_idx]
        posts[(r, "dense+multi-crop")] = 0.5 * (posts[(r, "dense@mc")] + posts[(r, "multi-crop")])
        for p in ("dense@mc", "dense+multi-crop"):
            results[(r, p)] = dict(metrics_of(posts[(r, p)], labels[mc_idx]),
                                   scales=results[(r, "dense")]["scales"], n=len(mc_idx),
                                   time_s=None)
    ev = Evidence(posts, labels, mc_idx)
    fusion = fusion_table(ev)
    claims = judge_claims(ev, results, fusion)
    score_maps = dense_map_sizes(cfgs["D"], st, results[("D", "dense")]["scales"])

    np.savez_compressed(out / "posteriors.npz", labels=labels, multi_crop_idx=mc_idx,
                        **{f"{r}|{p}": v for (r, p), v in posts.items()})
    table_rows = {}
    for r in runs:
        m = jobs[r]["metrics"]
        hist = _history(cfgs[r].out)
        table_rows[r] = {
            "model": RUNS[r][0], "config": RUNS[r][1], "seed": RUNS[r][3],
            "group": group(r)[0], "train_scale": RUNS[r][2],
            "train_scale_label": scale_label(RUNS[r][2]), "params": int(m["num_params"]),
            "train_time_s": m["train_time_s"], "wall_s": m.get("wall_s"),
            "started": m.get("started"), "finished": _evaluated_at(cfgs[r].out),
            "reused": m.get("reused", False), "epochs": m["epochs"],
            "final_val_accuracy": m.get("final_val_accuracy"),
            "final_train_accuracy": hist[-1]["train_acc"] if hist else None,
            "history": hist,
            "protocols": {p: results[(rr, p)] for (rr, p) in results if rr == r},
        }
    starts = [row["started"] for row in table_rows.values() if row["started"]]
    ends = [row["finished"] for row in table_rows.values() if row["finished"]]
    reused = [r for r, row in table_rows.items() if row["reused"]]
    note = None
    if reused and starts:
        when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
        note = (f"{len(reused)} of {len(runs)} runs were trained by an earlier invocation with "
                f"the same settings (`--reuse`: the runs started {when(min(starts))} and the "
                f"last one ended {when(max(ends))}); this invocation read their checkpoints, "
                f"histories and cached posteriors and computed the tables and claims.")
        loads = [jobs[r]["metrics"].get("load_average") for r in reused]
        if all(loads):
            note += (f" The 1-minute load average when they started ranged from "
                     f"{min(x[0] for x in loads):.2f} to {max(x[0] for x in loads):.2f}.")
        else:
            note += " The load average while they trained is not recorded here."
    return {
        "run_note": note,
        "settings": asdict(st), "dataset": dataset, "data_dir": shown(data_dir),
        "data_description": data_desc, "n_val": int(len(labels)),
        "n_multi_crop": int(len(mc_idx)), "runs": table_rows,
        "jobs": int(args.jobs) if args.device == "cpu" else 1, "device": args.device,
        "fusion": fusion, "claims": claims, "dense_score_maps": score_maps,
        "train_commands": {r: train_command(cfgs[r], st) for r in runs},
        "eval_commands": eval_commands(cfgs),
        "time": {"this_invocation_s": time.perf_counter() - t_study, "runs_s": t_runs,
                 "span_s": (max(ends) - min(starts)) if starts and ends else None,
                 "train_sum_s": sum(row["train_time_s"] for row in table_rows.values())},
    }


def dense_map_sizes(cfg, st, scales):
    """{Q: [h, w]}: the class score map dense evaluation averages, for a 32 x 32 image at
    each test scale Q (the evidence for what dense evaluation can do at this size)."""
    em = ep.as_eval_model(Path(cfg.out) / "checkpoint.npz", name="D")
    img = np.zeros((32, 32, 3), np.uint8)
    sizes = {}
    for q in scales:
        _, maps = ep.dense_posteriors(em, [img], Q=q, flip=True, return_maps=True)
        sizes[str(q)] = [int(v) for v in list(maps[0])[-2:]]
    return sizes


FUSIONS = [
    # (name, runs, protocol)
    ("D + E (multi-scale)", ["D", "E"], "multi-scale"),
    ("D + E (dense)", ["D", "E"], "dense"),
    ("D, seeds 1 + 2 (multi-scale)", ["D", "D-seed2"], "multi-scale"),
    ("E, seeds 1 + 2 (multi-scale)", ["E", "E-seed2"], "multi-scale"),
    ("D + D [32, 48] (multi-scale)", ["D", "D-S32-48"], "multi-scale"),
    ("D + D [32, 48] (dense + multi-crop)", ["D", "D-S32-48"], "dense+multi-crop"),
    (f"all {len(RUNS)} runs: 8 models, 4 with 2 seeds (multi-scale)", list(RUNS), "multi-scale"),
]


def fusion_table(ev):
    rows = []
    for name, runs, protocol in FUSIONS:
        lab = ev.labels_of(protocol)
        fused = np.mean([ev.posts[(r, protocol)] for r in runs], axis=0)
        best = min(runs, key=lambda r: ev.err(r, protocol))
        delta, se = paired_correct(ev.correct(best, protocol), correct(fused, lab))
        rows.append(dict(metrics_of(fused, lab), name=name, runs=runs, protocol=protocol,
                         n=len(lab), best_member=best,
                         best_member_top1_error=ev.err(best, protocol),
                         gain_over_best=delta, gain_se=se))
    return rows


def _claim(claim, rows, sep):
    """A claim from ``[(numbers, verdict)]`` rows, one per model or fusion."""
    return {"claim": claim, "numbers": "; ".join(n for n, _ in rows),
            "verdict": sep.join(v for _, v in rows)}


def judge_claims(ev, results, fusion):
    """Each claim of the paper with the numbers of this run and a verdict: a difference
    counts only beyond 2 paired standard errors of the seed-averaged difference."""
    claims = []
    g = {r: group(r) for r in RUNS}

    def pm(d, se):
        return f"{d:+.1f} ± {se:.1f}"

    # 1. LRN does not help: A-LRN is not better than A.
    d, se = ev.diff("A-LRN", g["A"])
    helped = d < 0 and (not se > 0 or d < -2 * se)
    v = "contradicted" if helped else "supported"
    claims.append({"claim": "LRN does not improve configuration A (A vs A-LRN)",
                   "numbers": f"single-scale top-1 error {seeds_note(ev, g['A'])}, "
                              f"{seeds_note(ev, 'A-LRN')} (A-LRN - A = {pm(d, se)} points)",
                   "verdict": v + (" (no significant gain from LRN)" if v == "supported"
                                   else " (LRN helped here, beyond 2 SE)"),
                   "short": v, "headline": f"A {ev.err(g['A']):.1f} %, A-LRN {ev.err('A-LRN'):.1f} %"})
    # 2. Error falls with depth: A -> B -> D -> E.
    chain = [g[r] for r in DEPTH_CHAIN]
    errs = [ev.err(x) for x in chain]
    steps = [ev.diff(a, b) for a, b in zip(chain, chain[1:])]
    d, se = ev.diff(g["A"], g["E"])
    monotone = all(x > y for x, y in zip(errs, errs[1:]))
    claims.append({"claim": "error decreases with depth (A 11 -> B 13 -> D 16 -> E 19 layers)",
                   "numbers": "single-scale top-1 error " + ", ".join(seeds_note(ev, x) for x in chain)
                              + f"; A - E = {pm(d, se)} points; each step (" + ", ".join(
                                  f"{a} - {b} {pm(x, s)}: {word(verdict(x, s))}"
                                  for (a, b), (x, s) in zip(zip(DEPTH_CHAIN, DEPTH_CHAIN[1:]), steps))
                              + ")",
                   "verdict": verdict(d, se) + ("; monotone" if monotone else "; not monotone"),
                   "short": f"A vs E {word(verdict(d, se))}; steps " + ", ".join(
                       f"{a}-{b} {word(verdict(x, s))}" for (a, b), (x, s) in
                       zip(zip(DEPTH_CHAIN, DEPTH_CHAIN[1:]), steps))
                       + ("" if monotone else "; not monotone"),
                   "headline": ", ".join(f"{r} {e:.1f}" for r, e in zip(DEPTH_CHAIN, errs)) + " %"})
    # 3. 1x1 convolutions add less than 3x3 ones: C worse than D, and C better than B.
    d, se = ev.diff("C", g["D"])
    d2, se2 = ev.diff(g["B"], "C")
    claims.append({"claim": "three extra 1x1 conv layers (C) help less than three 3x3 (D); "
                            "C still beats B",
                   "numbers": f"single-scale top-1 error {seeds_note(ev, g['B'])}, "
                              f"{seeds_note(ev, 'C')}, {seeds_note(ev, g['D'])}; C - D = "
                              f"{pm(d, se)}, B - C = {pm(d2, se2)} points",
                   "verdict": f"C vs D: {verdict(d, se)}; B vs C: {verdict(d2, se2)}",
                   "short": f"C vs D {word(verdict(d, se))}; B vs C {word(verdict(d2, se2))}",
                   "headline": f"B {ev.err(g['B']):.1f}, C {ev.err('C'):.1f}, D {ev.err(g['D']):.1f} %"})
    # 4. Pairs of 3x3 beat single 5x5 (section 4.1): B vs B-5x5.
    d, se = ev.diff("B-5x5", g["B"])
    claims.append({"claim": "a stack of two 3x3 conv layers beats one 5x5 layer of the same "
                            "receptive field (B vs B-5x5; on ImageNet the paper measured a "
                            "top-1 error 7 % higher for the 5x5 net)",
                   "numbers": f"single-scale top-1 error {seeds_note(ev, g['B'])}, "
                              f"{seeds_note(ev, 'B-5x5')}; B-5x5 - B = {pm(d, se)} points "
                              f"({100 * d / ev.err(g['B']):+.0f} % of B's error, the paper's "
                              f"measure)",
                   "verdict": verdict(d, se), "short": word(verdict(d, se)),
                   "headline": f"B {ev.err(g['B']):.1f} %, B-5x5 {ev.err('B-5x5'):.1f} %"})
    # 5. Scale jittering at training helps (at single and multi-scale test).
    parts, verdicts = [], []
    for p in ("single", "multi-scale"):
        d, se = ev.diff(g["D"], "D-S32-48", p)
        parts.append(f"{p}: {seeds_note(ev, g['D'], p)} at S = 32 vs D S in [32, 48] "
                     f"{ev.err('D-S32-48', p):.1f} % ({pm(d, se)})")
        verdicts.append(f"{p} test: {verdict(d, se)}")
    claims.append({"claim": "scale jittering at training (S in [32, 48]) beats a fixed S = 32",
                   "numbers": "; ".join(parts), "verdict": "; ".join(verdicts),
                   "short": "; ".join(f"{word(v.split(': ')[1])} at {v.split(': ')[0]}"
                                      for v in verdicts),
                   "headline": f"single-scale test: D {ev.err(g['D']):.1f} %, D [32, 48] "
                               f"{ev.err('D-S32-48'):.1f} %"})
    # 6. Multi-scale testing helps (vs single scale), model by model (seed-averaged).
    gains = []
    for r in RUNS:
        if g[r][0] != r:
            continue
        d, se = ev.diff(g[r], g[r], "single", "multi-scale")
        gains.append((r, d, se))
    better = sum(1 for _, d, _ in gains if d > 0)
    sig = sum(1 for _, d, se in gains if verdict(d, se) == "supported")
    worse = sum(1 for _, d, se in gains if verdict(d, se) == "contradicted")
    claims.append({"claim": "multi-scale testing beats single-scale testing",
                   "numbers": "single - multi-scale top-1 error: " + ", ".join(
                       f"{r} {pm(d, se)}" for r, d, se in gains),
                   "verdict": f"better for {better} of {len(gains)} models, significantly for "
                              f"{sig}, significantly worse for {worse}",
                   "short": f"supported for {sig} of {len(gains)} models, contradicted for "
                            f"{worse}",
                   "headline": f"mean gain {np.mean([d for _, d, _ in gains]):+.1f} points"})

    # 7. Dense and multi-crop are complementary.
    def complementary(r):
        best = min(("dense@mc", "multi-crop"), key=lambda p: ev.err(r, p))
        d, se = ev.diff(r, r, best, "dense+multi-crop")
        return (f"{r}: dense {ev.err(r, 'dense@mc'):.1f} %, multi-crop "
                f"{ev.err(r, 'multi-crop'):.1f} %, combined {ev.err(r, 'dense+multi-crop'):.1f} % "
                f"(best single method - combined = {pm(d, se)})", f"{r}: {verdict(d, se)}")

    claims.append(_claim("dense and multi-crop evaluation are complementary (their average "
                         "beats both)", [complementary(r) for r in TABLE5_RUNS], ", "))
    claims[-1]["short"] = ", ".join(f"{r} {word(v.split(': ')[1])}"
                                    for r, v in zip(TABLE5_RUNS, claims[-1]["verdict"].split(", ")))
    claims[-1]["headline"] = (f"D: dense {ev.err('D', 'dense@mc'):.1f}, multi-crop "
                              f"{ev.err('D', 'multi-crop'):.1f}, both "
                              f"{ev.err('D', 'dense+multi-crop'):.1f} %")
    # 8. Fusion helps.
    claims.append(_claim(
        "fusing several models (averaging their posteriors) beats the best single model",
        [(f"{f['name']}: {f['top1_error']:.1f} % vs best member {f['best_member']} "
          f"{f['best_member_top1_error']:.1f} % ({pm(f['gain_over_best'], f['gain_se'])})",
          f"{f['name']}: {verdict(f['gain_over_best'], f['gain_se'])}") for f in fusion], "; "))
    sig = sum(verdict(f["gain_over_best"], f["gain_se"]) == "supported" for f in fusion)
    top = min(fusion, key=lambda f: f["top1_error"])
    claims[-1]["short"] = f"supported for {sig} of {len(fusion)} fusions"
    claims[-1]["headline"] = (f"best: {top['name']} {top['top1_error']:.1f} % vs its best member "
                              f"{top['best_member_top1_error']:.1f} %")
    for c, key in zip(claims, CLAIM_KEYS):
        c["key"] = key
    return claims


# The claims of judge_claims, in order.
CLAIM_KEYS = ["lrn", "depth", "1x1", "5x5", "jitter", "multi-scale", "dense+crop", "fusion"]


def eval_commands(cfgs):
    ck = {r: f"{shown(cfgs[r].out)}/checkpoint.npz" for r in cfgs}
    cmds = [f"python -m tinyvgg evaluate {ck[r]} --split val --protocol {p}"
            for r in TABLE5_RUNS for p in PROTO_ORDER]
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
