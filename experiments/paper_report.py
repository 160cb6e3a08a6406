"""The report of experiments/paper_tables.py: the Markdown rendering of the study's
results (Tables 3-6, the verdict on each claim with its likely reason, the exact
commands, the 224-pixel demo).

Pure rendering: :func:`render` turns the report dict (as :mod:`paper_study` computes it
and ``experiments/results/paper_tables.json`` stores it) into Markdown; it trains and
evaluates nothing, so ``python experiments/paper_tables.py --no-study`` re-renders the
committed file from the JSON in seconds.
"""

from __future__ import annotations

import math
import re

import numpy as np

from paper_study import (CLAIM_KEYS, LONGER_RUNS, TABLE5_RUNS, Settings, paired,  # noqa: E402
                         q_label, verdict)


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def minutes(s):
    return "n/a" if s is None else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


OVERFIT_POINTS = 5.0  # |validation - last-epoch training error| below this: not over-fitted
QUIET_LOAD = 0.5      # a 1-minute load average below this at the start: nothing else ran


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
    w("Everything below was measured by `experiments/paper_tables.py` (called "
      "`benchmarks/paper_tables.py` before issue #14, as the recorded commands say; each section "
      "names the command and machine); nothing is copied from the paper except the claims being tested. "
      "`python experiments/paper_tables.py --no-study` re-renders this file from "
      "`paper_tables.json`.")
    w("")
    study = report.get("study")
    if study:
        render_study(study, w, report.get("longer"))
    if report.get("longer"):
        render_longer(report["longer"], study, w)
    else:
        w("*The CIFAR-10 study (Tables 3-6) has not been measured for this file yet: "
          "`python experiments/paper_tables.py` runs it (sized for about 90 minutes on a free "
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
    w(f"- **Data:** {s['data_description']}. {st['n_train']} training images and a fixed "
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
      f"flips. Otherwise the paper's recipe (`--recipe paper`: no label smoothing, plain momentum, "
      f"weight decay on every parameter, no flip test-time augmentation), not `train`'s default.")
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
        w(cmd)
    w("```")
    w("")
    w("Evaluating a run with any protocol (`--split val` rebuilds the same held-out split "
      "from the checkpoint's training settings), for example:")
    w("")
    w("```")
    for cmd in s["eval_commands"]:
        w(cmd)
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
        w(cmd)
    w("```")
    w("")


def render_demo(d, w):
    w("## The 224-pixel path on real photographs (ImageNet sample)")
    w("")
    w(f"Measured with `{d['command']}` on {d['machine']} ({d['date']}; "
      f"{load_note(d.get('load_average'))}).")
    w("")
    if d.get("checkpoint"):
        weights = (f"the weights of `{d['checkpoint']}`: the predictions are real, "
                   f"and the errors below compare the methods")
    else:
        weights = ("**random weights** (He initialisation): the shapes and timings are the "
                   "point, the predicted classes mean nothing")
    w(f"{len(d['images'])} photographs of `{d['folder']}` ({d['n_files']} files; "
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
