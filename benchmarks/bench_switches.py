"""Speed switches of the CPU path, each on against off: one training step, in one process.

    python benchmarks/bench_switches.py            # a few minutes on 2 cores
    python benchmarks/bench_switches.py --quick    # smoke run, seconds
    python benchmarks/bench_switches.py --switches blocked_sgd_update   # one switch

The switches (each measured with the others at their defaults):

- ``relu_inplace``: the VGG models' ReLUs write over their input (``ReLU.inplace``,
  as torchvision's) instead of returning a new array;
- ``caller_runs_a_task``: :func:`tinyvgg.ops.cpu.parallel.run` runs the last task
  of an op on the calling thread instead of handing every task to a worker
  (``parallel.CALLER_RUNS_A_TASK``);
- ``blocked_sgd_update``: SGD updates the parameters block by block
  (``tinyvgg.optim.UPDATE_BLOCK`` values at a time, on the worker threads) instead
  of one whole parameter array at a time (``UPDATE_BLOCK = 0``, the simple version);
- ``shared_meetings``: on 2 replicas (``tinyvgg.replicas``, the step of ``tinyvgg
  train`` by default on 2 cores for large enough steps), BatchNorm's meetings pass
  through the shared memory (``replicas.SHARED_MEETINGS``, x86 only) instead of as
  messages on the socket; networks with BatchNorm only (the others have no meetings), and the
  helpers restart at every switch (that first step is not timed);
- ``grads_in_place``: on 2 replicas, the helpers' fully connected layers write their
  gradients straight into the shared memory the model reads them from
  (``replicas.GRADS_IN_PLACE``, ``Layer.grads_into``) instead of copying them there
  after the backward pass; every network.
- ``channels_last_weights``: on 2 replicas, every Conv2d weight (and its momentum
  buffer) stored channels-last, as ``Conv2d`` stores it
  (``tinyvgg.ops.cpu.channels_last.CHANNELS_LAST_WEIGHTS``), instead of
  C-contiguous, which costs the convolutions a copy of the weight in each pass and a
  transpose of its gradient; the helpers restart at every switch.

The same model's step (bench_train.py's: forward, loss, backward, SGD) is timed in
blocks of steps that alternate between the switch off and on, for ``--rounds``
rounds, so both see the same process, memory and machine load (separate processes
differed by up to 15 % between runs of the same code on the 2-core VMs). Reported:
median step time of each and the ratio, and the time of the SGD update within those
steps. Results go to ``<out>/bench_switches.{json,md}``.
"""

from __future__ import annotations

import sys
import time

import _common as C  # noqa: E402  (puts the repo root on sys.path)
import numpy as np

from bench_train import tinyvgg_step  # noqa: E402

# (key, model, input size, width, batch, classes, hidden, batch_norm)
CONFIGS = [("vgg11-32-w0.25-h128", "vgg11", 32, 0.25, 64, 10, 128, False),
           ("vgg11-bn-32-w0.25", "vgg11", 32, 0.25, 64, 10, 1024, True),
           ("vgg11-32-w1-h512", "vgg11", 32, 1.0, 64, 10, 512, False),
           ("vgg11-32-w1", "vgg11", 32, 1.0, 64, 10, 4096, False)]
QUICK = [("vgg11-bn-32-w1/16", "vgg11", 32, 1 / 16, 8, 10, 64, True)]


def _relu_inplace(model, on):
    from tinyvgg.layers import ReLU
    for layer in model.layers:
        if isinstance(layer, ReLU):
            layer.inplace = on


def _caller_runs_a_task(model, on):
    from tinyvgg.ops.cpu import parallel
    parallel.CALLER_RUNS_A_TASK = on


def _blocked_sgd_update(model, on):
    from tinyvgg import optim
    optim.UPDATE_BLOCK = _DEFAULT_BLOCK if on else 0


def _replicas_flag(flag):
    """The switch of ``tinyvgg.replicas.<flag>``, which the helpers read when they start:
    set it, and end the helpers, so that the next step starts them with it."""
    def switch(model, on, step=None):
        from tinyvgg import replicas
        setattr(replicas, flag, on)
        if step is not None:
            step.replicas.close()
    return switch


def _channels_last_weights(model, on, step):
    """Store every Conv2d weight and its momentum buffer channels-last (on) or
    C-contiguous (off), and end the helpers (their shared copies take the new layout)."""
    from tinyvgg.layers import Conv2d
    from tinyvgg.ops.cpu import channels_last as cl
    cl.CHANNELS_LAST_WEIGHTS = on
    relayout = cl.channels_last_weight if on else np.ascontiguousarray
    names = {id(p): name for name, p, _ in model.named_parameters()}
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            name = names[id(layer.params["weight"])]
            layer.params["weight"] = relayout(layer.params["weight"])
            if name in step.opt.buffers:
                step.opt.buffers[name] = relayout(step.opt.buffers[name])
    if getattr(step, "replicas", None) is not None:
        step.replicas.close()


def _default_block():
    from tinyvgg import optim
    return optim.UPDATE_BLOCK


_DEFAULT_BLOCK = _default_block()
SWITCHES = {"relu_inplace": _relu_inplace, "caller_runs_a_task": _caller_runs_a_task,
            "blocked_sgd_update": _blocked_sgd_update, "shared_meetings": _replicas_flag("SHARED_MEETINGS"),
            "grads_in_place": _replicas_flag("GRADS_IN_PLACE"), "channels_last_weights": _channels_last_weights}
# switches timed on the step of replicas
REPLICAS = {"shared_meetings": 2, "grads_in_place": 2, "channels_last_weights": 2}
ONLY = {"shared_meetings": lambda cfg: cfg[7]}  # networks a switch applies to: BatchNorm has the meetings


def measure(cfg, switch, rounds, block):
    """``(steps, updates)``: {on: [seconds]} of whole steps and of the SGD update
    within them, over blocks of ``block`` steps alternating ``switch`` off and on."""
    from tinyvgg.optim import SGD
    _, name, size, width, batch, classes, hidden, bn = cfg
    n = REPLICAS.get(switch, 1)
    step, model = tinyvgg_step(name, size, width, batch, classes, hidden, bn, replicas=n)
    switch_fn = (lambda m, on: SWITCHES[switch](m, on, step)) if n > 1 else SWITCHES[switch]
    times, updates = {False: [], True: []}, {False: [], True: []}
    sgd_step, timed = SGD.step, []

    def timed_sgd_step(opt):
        t0 = time.perf_counter()
        sgd_step(opt)
        timed.append(time.perf_counter() - t0)
    for _ in range(2):
        step()
    SGD.step = timed_sgd_step
    try:
        for _ in range(rounds):
            for on in (False, True):
                switch_fn(model, on)
                step()  # the first step after a switch: buffers of the new sizes
                for _ in range(block):
                    timed.clear()
                    t0 = time.perf_counter()
                    step()
                    times[on].append(time.perf_counter() - t0)
                    updates[on].append(sum(timed))
    finally:
        SGD.step = sgd_step
        switch_fn(model, True)  # every switch is on by default
        if n > 1:
            step.replicas.close()
    return times, updates


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 8; 1 with --quick)")
    p.add_argument("--switches", default=None, help=f"comma-separated, of: {', '.join(SWITCHES)} (default all)")
    args = p.parse_args(argv)
    chosen = args.switches.split(",") if args.switches else list(SWITCHES)
    unknown = [s for s in chosen if s not in SWITCHES]
    if unknown:
        p.error(f"unknown switch {', '.join(unknown)}; choose from {', '.join(SWITCHES)}")
    if args.device != "cpu":
        raise SystemExit("bench_switches: a CPU benchmark")
    args.no_torch = True
    from tinyvgg import replicas
    if "shared_meetings" in chosen and not replicas.SHARED_MEETINGS:
        print("bench_switches: shared_meetings skipped: this processor does not keep stores in order "
              "(x86 only)", flush=True)
        chosen.remove("shared_meetings")
    _, _, _, info = C.start(args)
    rounds = args.rounds or (1 if args.quick else 8)
    rows = []
    for switch in chosen:
        for cfg in (QUICK if args.quick else CONFIGS):
            if not ONLY.get(switch, lambda cfg: True)(cfg):
                continue
            block = 2 if args.quick else (2 if cfg[3] >= 1 else 5)
            t, u = measure(cfg, switch, rounds, block)
            off, on = C.median(t[False]), C.median(t[True])
            rows.append({"switch": switch, "config": cfg[0], "hidden": cfg[6], "batch_norm": cfg[7],
                         "off_s": off, "on_s": on, "ratio": on / off, "steps_each": len(t[True]),
                         "update_off_s": C.median(u[False]), "update_on_s": C.median(u[True])})
            print(f"{switch:20s} {cfg[0]:22s} off {off * 1e3:7.1f} ms  on {on * 1e3:7.1f} ms  "
                  f"ratio {on / off:.3f}  (SGD update {rows[-1]['update_off_s'] * 1e3:.1f} -> "
                  f"{rows[-1]['update_on_s'] * 1e3:.1f} ms)", flush=True)
    info["loadavg_at_end"] = C.loadavg()
    lines = ["# Speed switches on against off: one training step, blocks alternating in one process", ""]
    if args.quick:
        lines += ["**Quick (smoke) run: tiny network, not the benchmark's numbers.**", ""]
    lines += C.machine_lines(info) + [
        f"- command: `python benchmarks/bench_switches.py{' --quick' if args.quick else ''}"
        f"{' --switches ' + args.switches if args.switches else ''}`, "
        f"{rounds} rounds; medians", ""]
    lines += [C.table(["switch", "network", "hidden", "off ms", "on ms", "on / off", "steps each",
                       "SGD update off ms", "SGD update on ms"],
                      [[r["switch"], r["config"], r["hidden"], C.fmt_ms(r["off_s"]), C.fmt_ms(r["on_s"]),
                        f"{r['ratio']:.3f}", r["steps_each"], C.fmt_ms(r["update_off_s"]),
                        C.fmt_ms(r["update_on_s"])] for r in rows])]
    lines += ["", "`SGD update`: the time of `SGD.step()` within the same steps (part of the step time)."]
    C.write_results(args.out, "bench_switches",
                    {"benchmark": "bench_switches", "quick": args.quick, "machine": info, "rows": rows},
                    "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
