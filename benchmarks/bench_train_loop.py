"""The whole training loop, end to end: `tinyvgg train` against a plain PyTorch loop.

    python benchmarks/bench_train_loop.py                       # CIFAR-10 folders from ../shared
    python benchmarks/bench_train_loop.py --data-dir DIR --limit 6400 --rounds 2
    python benchmarks/bench_train_loop.py --quick               # smoke run, synthetic images

What is timed: the training phase of an epoch (no validation pass), in images per
second, for VGG-11-BN at width 1/4 with fully connected layers of 1024 units,
batch 64 and 128, on CIFAR-10 class folders.

- **tinyvgg**: the command a user runs, ``python -m tinyvgg train`` (its loader
  thread, augmentation, step, progress bar and per-epoch bookkeeping), 2 epochs;
  its own ``history.csv`` gives each epoch's training images per second. The
  second epoch is the steady state (the first also fills the scratch buffers).
- **PyTorch**: a plain loop over the same images (``tinyvgg.train.prepare_data``
  loads them, so the split and the limit are the same) doing the same
  augmentation in NumPy (tinyvgg's own transform: pad-4 crop, flip, normalise),
  then ``torch.from_numpy``, forward, loss, backward and SGD (Nesterov 0.9,
  weight decay 5e-4), 2 epochs, no loader thread.

Both run in fresh processes, one after the other, alternating for ``--rounds``
rounds, so they share the machine's state of the moment and never run at the
same time (in one process the two libraries slow each other down: measured
here, PyTorch's step took twice its time when interleaved with tinyvgg's).
Reported: the median over rounds of the steady-state epoch's images per second
and the ratio of times per image (tinyvgg / PyTorch; the target is at most 1.25).

Every result records the BLAS library, its kernel and threads. When
``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` is set, the runs are made twice:
with both unset (what a user's machine runs) and as given (pinned).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo root on sys.path)

MODEL = dict(model="vgg11", batch_norm=True, width=0.25, hidden=1024)
TARGET = 1.25
PINNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def tinyvgg_run(data_dir, limit, batch, epochs, out, env, root=None, ranks=None, extra=()):
    """Images per second of each training epoch of ``python -m tinyvgg train`` (of the
    checkout ``root``, default this one, with the options ``extra`` added); with
    ``ranks``, of ``mpirun -n ranks python -m tinyvgg train ... --data-parallel`` (the
    global batch is ``batch``)."""
    launch = [] if not ranks else [*_launcher(), "-n", str(ranks)]
    cmd = [*launch, sys.executable, "-m", "tinyvgg", "train", "--model", MODEL["model"], "--batch-norm",
           "--width", str(MODEL["width"]), "--hidden", str(MODEL["hidden"]), "--epochs", str(epochs),
           "--dataset", "folder", "--data-dir", str(data_dir), "--limit", str(limit),
           "--val-size", "0.1", "--batch-size", str(batch), "--seed", "1", "--out", str(out)]
    cmd += (["--data-parallel"] if ranks else []) + list(extra)
    root = Path(root or C.REPO)
    env = dict(env, PYTHONPATH=str(root) + os.pathsep + env.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_train_loop: tinyvgg train failed:\n{r.stderr[-3000:]}")
    with open(Path(out) / "history.csv") as f:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(f)]
    shown = cmd[len(launch) + 1:]
    return rates, " ".join((["mpirun", "-n", str(ranks), "python"] if ranks else ["python"]) + shown)


def _launcher():
    launcher = C.mpi_launcher()
    if launcher is None:
        raise SystemExit("bench_train_loop: --ranks needs an MPI launcher (pip install mpi4py mpich)")
    return launcher


def torch_loop(spec):
    """--probe: the plain PyTorch loop (run in a fresh process); prints JSON."""
    import numpy as np
    import torch

    from tinyvgg.data import DataLoader
    from tinyvgg.train import TrainConfig, prepare_data
    cfg = TrainConfig(dataset="folder", data_dir=spec["data_dir"], limit=spec["limit"], val_size=0.1,
                      batch_size=spec["batch"], seed=1, model=MODEL["model"], batch_norm=True,
                      width=MODEL["width"], hidden=MODEL["hidden"], epochs=spec["epochs"])
    data = prepare_data(cfg)
    train = data["train"]
    # tinyvgg's loader with prefetch=0 only to draw the same batches and augmentation
    # on this thread: no loader thread, a plain loop.
    loader = DataLoader(train, spec["batch"], shuffle=True, transform=data["train_transform"], seed=1,
                        drop_last=False, prefetch=0)
    nn = torch.nn
    torch.manual_seed(0)
    w = [int(round(c * MODEL["width"])) for c in (64, 128, 256, 256, 512, 512, 512, 512)]
    pools_after = {0, 1, 3, 5, 7}
    mods, c_in = [], 3
    for i, c in enumerate(w):
        mods += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        if i in pools_after:
            mods.append(nn.MaxPool2d(2, 2))
        c_in = c
    size = data["input_size"] // 32
    mods += [nn.Flatten(), nn.Linear(c_in * size * size, MODEL["hidden"]), nn.ReLU(inplace=True),
             nn.Linear(MODEL["hidden"], MODEL["hidden"]), nn.ReLU(inplace=True),
             nn.Linear(MODEL["hidden"], len(data["classes"]))]
    net = nn.Sequential(*mods).train()
    decay = [p for p in net.parameters() if p.ndim > 1]
    other = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": other, "weight_decay": 0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    rates = []
    for epoch in range(spec["epochs"]):
        loader.set_epoch(epoch)
        t0, seen, correct = time.perf_counter(), 0, 0
        for x, y in loader:
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            opt.zero_grad(set_to_none=True)
            logits = net(xt)
            loss = nn.functional.cross_entropy(logits, yt)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(1) == yt).sum())  # the same per-batch bookkeeping
            seen += len(y)
        rates.append(seen / (time.perf_counter() - t0))
    print(json.dumps({"images_per_s": rates, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


def torch_run(data_dir, limit, batch, epochs, env):
    spec = {"data_dir": str(data_dir), "limit": limit, "batch": batch, "epochs": epochs}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)],
                       cwd=C.REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_train_loop: the PyTorch loop failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def quick_data(root):
    """A tiny class-folder dataset (3 classes x 24 PNGs of 32 x 32) for --quick."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for i in range(24):
            img = (rng.integers(0, 60, (32, 32, 3)) + 60 * k).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def measure(args, env, label):
    """Alternating rounds of both loops in the environment ``env``."""
    import numpy as np
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_loop_") as tmp:
        data_dir = quick_data(Path(tmp) / "data") if args.quick else Path(args.data_dir)
        for batch in args.batch_sizes:
            tv, th, other, dp, cmd = [], [], [], [], None
            for r in range(args.rounds):
                rates, cmd = tinyvgg_run(data_dir, args.limit, batch, args.epochs, Path(tmp) / f"run{batch}_{r}", env)
                tv.append(rates)
                th.append(torch_run(data_dir, args.limit, batch, args.epochs, env)["images_per_s"])
                msg = (f"[{label}] batch {batch} round {r + 1}: tinyvgg {rates[-1]:.0f} img/s, "
                       f"PyTorch loop {th[-1][-1]:.0f} img/s")
                if args.ranks:
                    dp.append(tinyvgg_run(data_dir, args.limit, batch, args.epochs, Path(tmp) / f"dp{batch}_{r}",
                                          env, ranks=args.ranks))
                    msg += f", tinyvgg train on {args.ranks} ranks {dp[-1][0][-1]:.0f} img/s"
                if args.compare_root or args.compare_args:
                    other.append(tinyvgg_run(data_dir, args.limit, batch, args.epochs,
                                             Path(tmp) / f"cmp{batch}_{r}", env, args.compare_root,
                                             extra=args.compare_args.split())[0])
                    msg += f", {args.compare_label} {other[-1][-1]:.0f} img/s"
                print(msg, flush=True)
            steady_tv = float(np.median([x[-1] for x in tv]))
            steady_th = float(np.median([x[-1] for x in th]))
            row = {"batch": batch, "tinyvgg_images_per_s": steady_tv, "torch_images_per_s": steady_th,
                   "ratio": steady_th / steady_tv, "tinyvgg_epochs": tv, "torch_epochs": th,
                   "tinyvgg_command": cmd.replace(str(data_dir), "DATA").replace(tmp, "runs")}
            if dp:
                row["ranks"] = args.ranks
                row["dp_images_per_s"] = float(np.median([x[0][-1] for x in dp]))
                row["dp_ratio"] = steady_th / row["dp_images_per_s"]
                row["dp_epochs"] = [x[0] for x in dp]
                row["dp_command"] = dp[0][1].replace(str(data_dir), "DATA").replace(tmp, "runs")
            if other:
                row["compare_images_per_s"] = float(np.median([x[-1] for x in other]))
                row["compare_epochs"] = other
            rows.append(row)
    return rows


def main(argv=None):
    if argv is None and "--probe" in sys.argv:
        return torch_loop(json.loads(sys.argv[sys.argv.index("--probe") + 1]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("TINYVGG_DATA")
    default_data = (Path(default_data) / "cifar10" / "train" if default_data
                    else C.REPO.parent / "shared" / "data" / "cifar10" / "train")
    p.add_argument("--data-dir", default=str(default_data), help="CIFAR-10 class folders")
    p.add_argument("--limit", type=int, default=6400, help="images used (10%% of them held out)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (the last is the steady state)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128])
    p.add_argument("--quick", action="store_true", help="smoke run on synthetic images")
    p.add_argument("--ranks", type=int, default=0,
                   help="also time `mpirun -n RANKS python -m tinyvgg train ... --data-parallel` (same global "
                        "batch; each rank takes its share of the cores) in every round")
    p.add_argument("--compare-root", default=None,
                   help="another checkout whose `tinyvgg train` also runs in every round (e.g. the code before a change)")
    p.add_argument("--compare-args", default="",
                   help="options added to the compared run's command (e.g. \"--replicas 1\": this checkout "
                        "without replicas, when --compare-root is not given)")
    p.add_argument("--compare-label", default=None,
                   help="its name in the report (default: \"before\" for --compare-root, else \"compared\")")
    p.add_argument("--out", default=str(C.REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.compare_label is None:  # the same checkout with other options is not "before" anything
        args.compare_label = "before" if args.compare_root else "compared"
    if args.quick:
        args.limit, args.epochs, args.rounds, args.batch_sizes = 72, 2, 1, [16]
    elif not Path(args.data_dir).is_dir():
        raise SystemExit(f"bench_train_loop: {args.data_dir} not found: give --data-dir (CIFAR-10 as "
                         f"class folders) or set TINYVGG_DATA")
    try:
        import torch
    except ImportError:
        raise SystemExit("bench_train_loop: PyTorch is not installed (pip install torch); this "
                         "benchmark compares against it")
    env = dict(os.environ, PYTHONPATH=str(C.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    user_env = {k: v for k, v in env.items() if k not in PINNING}
    configs = [("user", user_env)]
    if any(k in env for k in PINNING):
        configs.append(("pinned", env))
    info = C.machine_info("cpu", torch)
    info["pinning_variables"] = {k: os.environ.get(k) for k in PINNING}
    results = {}
    for label, e in configs:
        results[label] = {"blas": blas_of(e), "rows": measure(args, e, label)}
    payload = {"benchmark": "bench_train_loop", "quick": args.quick, "machine": info, "model": MODEL,
               "compare": ({"root": args.compare_root or str(C.REPO), "label": args.compare_label,
                            "commit": _commit(args.compare_root or C.REPO), "args": args.compare_args}
                           if args.compare_root or args.compare_args else None), "commit": _commit(C.REPO),
               "limit": args.limit, "epochs": args.epochs, "rounds": args.rounds, "target": TARGET,
               "ranks": args.ranks or None,
               "results": results}
    md = markdown(payload)
    print()
    print(md)
    C.write_results(args.out, "bench_train_loop" + ("_quick" if args.quick else ""), payload, md)


def _commit(root):
    """The short commit of the checkout ``root``, with " + uncommitted changes" when its
    tracked files differ from it; None when ``root`` is not a git checkout (an archive)."""
    r = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = r.stdout.strip()
    if r.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return commit + (" + uncommitted changes" if dirty else "")


def blas_of(env):
    """threadpoolctl's view of BLAS in a fresh process with ``env`` (kernel, threads)."""
    code = ("import json, numpy; from threadpoolctl import threadpool_info; "
            "print(json.dumps([{k: p.get(k) for k in ('internal_api', 'version', 'architecture', "
            "'num_threads')} for p in threadpool_info() if p['user_api'] == 'blas']))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def markdown(payload):
    info = payload["machine"]
    lines = ["# bench_train_loop: the whole training loop, `tinyvgg train` against a plain PyTorch loop", ""]
    if payload["quick"]:
        lines += ["**Quick (smoke) run: synthetic images, not the benchmark's numbers.**", ""]
    lines += C.machine_lines(info)
    pins = info.get("pinning_variables", {})
    lines += [f"- OpenBLAS pinning variables in the environment: "
              + (", ".join(f"{k}={v}" for k, v in pins.items() if v) or "none set (the user configuration only)"),
              f"- network: VGG-11-BN, width {payload['model']['width']:g}, fully connected layers of "
              f"{payload['model']['hidden']} units; {payload['limit']} CIFAR-10 images (10 % held out), "
              f"{payload['epochs']} epochs per run, {payload['rounds']} alternating rounds; images per second "
              "of the last epoch's training phase, medians over rounds", ""]
    for label, res in payload["results"].items():
        blas = res["blas"] or []
        kernel = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']} x{b['num_threads']}"
                           for b in blas)
        lines += [f"## {'User configuration (pinning variables unset)' if label == 'user' else 'As given (pinned)'}",
                  "", f"BLAS: {kernel}", ""]
        cmp = payload.get("compare")
        trs = [[r["batch"], C.fmt_f(r["tinyvgg_images_per_s"]), C.fmt_f(r["torch_images_per_s"]),
                C.fmt_x(r["ratio"])]
               + ([C.fmt_f(r["dp_images_per_s"]), C.fmt_x(r["dp_ratio"])] if "dp_images_per_s" in r else [])
               + ([C.fmt_f(r["compare_images_per_s"]), C.fmt_x(r["tinyvgg_images_per_s"] / r["compare_images_per_s"])]
                  if cmp else []) for r in res["rows"]]
        headers = ["batch", "tinyvgg train img/s", "PyTorch loop img/s", "time ratio"]
        ranks = payload.get("ranks")
        if ranks:
            headers += [f"tinyvgg train, {ranks} MPI ranks img/s", f"time ratio ({ranks} ranks)"]
        if cmp:
            what = ", ".join([cmp["commit"] or "not a git checkout"] + ([f"`{cmp['args']}`"] if cmp.get("args") else []))
            headers += [f"{cmp['label']} ({what}) img/s", f"speed-up over {cmp['label']}"]
        lines += [C.table(headers, trs), ""]
        for r in res["rows"]:
            lines.append(C.target_line(f"`tinyvgg train` at batch {r['batch']}", r["ratio"], payload["target"]))
            if "dp_ratio" in r:
                lines.append(C.target_line(f"`tinyvgg train --data-parallel` on {r['ranks']} ranks at global "
                                           f"batch {r['batch']}", r["dp_ratio"], payload["target"]))
        lines += ["", f"tinyvgg's command: `{res['rows'][0]['tinyvgg_command']}`", ""]
        if ranks:
            lines += [f"On {ranks} ranks: `{res['rows'][0]['dp_command']}` (synchronised BatchNorm: the same "
                      "steps as one process on the whole batch; each rank runs its share of the cores). The "
                      "PyTorch loop is one process with PyTorch's own threads.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
