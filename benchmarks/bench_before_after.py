"""One training step, before and after a change, measured in one run.

Runs ``benchmarks/bench_train.py`` (no PyTorch, no RSS) alternately from two source
trees -- ``--before`` (for example ``git archive REV tinyvgg benchmarks | tar -x -C DIR``)
and this checkout -- for ``--rounds`` rounds, so both see the same machine load, and
reports the median step time of each and their ratio. Writes
``results/bench_before_after.{json,md}``.

    python benchmarks/bench_before_after.py --before /tmp/oldtree --label-before 3511e00
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def run_once(tree, only, repeats):
    """Step times (seconds) per config of one bench_train run from ``tree``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "benchmarks/bench_train.py", "--no-torch", "--rss", "none",
               "--repeats", str(repeats), "--only", only, "--out", out]
        subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        data = json.loads((Path(out) / "bench_train.json").read_text())
    return {s["config"]: s["times"]["tinyvgg"] for s in data["steps"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="source tree of the 'before' code (holds tinyvgg/ and benchmarks/)")
    p.add_argument("--label-before", default="before")
    p.add_argument("--label-after", default="after")
    p.add_argument("--only", default="vgg11-32-w1,vgg11-32-w0.25")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results" / "bench_before_after"))
    args = p.parse_args(argv)
    if not (Path(args.before) / "benchmarks" / "bench_train.py").is_file():
        p.error(f"--before {args.before}: no benchmarks/bench_train.py there")
    from benchmarks._common import loadavg, machine_info, machine_lines  # noqa: E402
    from tinyvgg.fileio import atomic_write_text

    info = machine_info("cpu")
    times = {"before": {}, "after": {}}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for side, tree in (("before", args.before), ("after", str(HERE.parent))):
            for config, t in run_once(tree, args.only, args.repeats).items():
                times[side].setdefault(config, []).extend(t)
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for config in times["after"]:
        b, a = statistics.median(times["before"][config]), statistics.median(times["after"][config])
        rows.append({"config": config, "before_s": b, "after_s": a, "ratio": a / b,
                     "n": len(times["after"][config])})
    lines = [f"# One training step before ({args.label_before}) and after ({args.label_after})", "",
             f"`python benchmarks/bench_before_after.py --before TREE --label-before {args.label_before}`: "
             f"{args.rounds} alternating rounds of `bench_train.py --no-torch --rss none --repeats "
             f"{args.repeats}`; medians of all timed steps. Load average during the run: "
             f"{min(load):.1f} to {max(load):.1f}.", "",
             "| config | before (s) | after (s) | after / before | steps each |", "|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['before_s']:.3f} | {r['after_s']:.3f} | {r['ratio']:.2f} | {r['n']} |"
              for r in rows]
    info["loadavg_at_end"] = loadavg()
    lines += [""] + machine_lines(info)
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    atomic_write_text(Path(args.out + ".json"), json.dumps({"rows": rows, "times": times, "load": load,
                                                                       "machine": info}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
