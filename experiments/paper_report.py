"""The report of experiments/paper_tables.py: the Markdown rendering of the study's
results (Tables 3-6, depth with its seed spread, the verdict on each claim with its
evidence, the exact commands, the 224-pixel demo) and its two figures.

Pure rendering: :func:`render` turns the report dict (as :mod:`paper_study` computes it
and ``experiments/results/paper_tables.json`` stores it) into Markdown, and
:func:`draw_figures` draws the figures from the same dict; neither trains nor evaluates,
so ``python experiments/paper_tables.py --no-study`` re-renders the committed files from
the JSON in seconds.
"""

from __future__ import annotations

import math
import re

import numpy as np

from paper_study import CLAIM_KEYS, DEPTH, DEPTH_CHAIN, TABLE5_RUNS, q_label  # noqa: E402

FIGURES = {"depth": "paper_depth.png", "curves": "paper_curves.png"}


def fmt(v, nd=1):
    return "n/a" if v is None else f"{v:.{nd}f}"


def minutes(s):
    return "n/a" if s is None else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


QUIET_LOAD = 0.5      # a 1-minute load average below this at the start: nothing else ran
STILL_FALLING = 0.5   # points of validation error gained in the last epoch: not flat yet


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


def train_error(row):
    """Last-epoch training error (%) of a run, None when unknown."""
    tr = row.get("final_train_accuracy")
    return None if tr is None else 100 * (1 - tr)


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def groups(runs):
    """{first run of a model: [its runs over seeds]} in the study's order."""
    out = {}
    for r, row in runs.items():
        out.setdefault(row.get("group", r), []).append(r)
    return out


def likely_reason(key, s):
    """Why a claim may not have reproduced in this run, with the evidence the run holds."""
    runs, st = s["runs"], s["settings"]
    gr = groups(runs)

    def mean_te(r):
        """Seed-mean last-epoch training error of a model, None when unknown."""
        vals = [train_error(runs[x]) for x in gr.get(r, [r]) if x in runs]
        return float(np.mean(vals)) if vals and None not in vals else None

    def mean_ve(r):
        return float(np.mean([runs[x]["protocols"]["single"]["top1_error"] for x in gr.get(r, [r])]))

    def te(*names):
        return ", ".join(f"{r} {mean_te(r):.1f} %" for r in names
                         if r in runs and mean_te(r) is not None)

    def same_order(names):
        names = [r for r in names if r in runs and mean_te(r) is not None]
        return len(names) > 1 and sorted(names, key=mean_te) == sorted(names, key=mean_ve)

    if key == "lrn":
        return ("BatchNorm after every convolution already normalises the activations that LRN "
                "would, so LRN has little left to add either way.")
    if key in ("depth", "1x1"):
        chain = DEPTH_CHAIN if key == "depth" else ["B", "C", "D"]
        state = ("the networks are still learning" if not_converged(s) else
                 "the validation curves have flattened")
        text = (f"after {plural(st['epochs'], 'epoch')} {state} (see \"Trained enough to "
                f"compare?\"); last-epoch training error (seed means) {te(*chain)}. ")
        if same_order(chain):
            return text + ("Their validation errors rank exactly as these training errors do: "
                           "what separates them here is how far each has got in fitting its "
                           "training data in the budget, not what its depth can learn.")
        return text + ("Their validation errors do not rank as these training errors do, so "
                       "fitting speed alone does not explain the order.")
    if key == "5x5":
        return (f"B-5x5 has more weights per layer and fewer non-linearities; after "
                f"{plural(st['epochs'], 'epoch')} (last-epoch training error {te('B', 'B-5x5')}) "
                f"the difference the paper measured after full training on ImageNet may not "
                f"have opened up yet at 32 pixels, where a 5x5 filter covers much of a small map.")
    if key == "jitter":
        text = ("at 32 pixels the range [32, 48] is a small change of scale next to the pad-4 "
                "random crops the fixed-S model already sees, and its single-scale test rescales "
                "32-pixel images up to Q = 40, which adds no detail")
        if (mean_te("D-S32-48") or 0) > (mean_te("D") or 0):
            text += (f"; in {plural(st['epochs'], 'epoch')} the stronger augmentation also "
                     f"costs fit (last-epoch training error {te('D', 'D-S32-48')})")
        return text + "."
    if key == "multi-scale":
        return ("rescaling a 32-pixel image to Q = 27 throws detail away and to Q = 37 invents "
                "it by interpolation, and a model trained at one fixed S never saw other scales.")
    if key == "dense+crop":
        maps = s.get("dense_score_maps") or {}
        sizes = ", ".join(f"Q = {q}: {m[0]} x {m[1]}" for q, m in maps.items())
        return (f"at 32 pixels the dense class score map is tiny ({sizes}): dense evaluation is "
                f"one window (plus its flip) per scale, while at 224 pixels the paper's map is "
                f"7 x 7 or larger. The two methods then see nearly the same pixels and make "
                f"correlated errors, so their average has little to add. Testing the claim "
                f"needs larger images (CIFAR rescaled to 64 pixels: four times the compute "
                f"per image; not affordable within this study's budget).")
    if key == "fusion":
        return ("the members share data, recipe and augmentation, so their errors are "
                "correlated, and averaging in weaker members (Table 6 names each fusion's best "
                "member) can pull the best one down.")
    return ""


def render(report):
    L = []
    w = L.append
    w("# The VGG paper's tables, reproduced small (tinyvgg)")
    w("")
    w("Everything below was measured by `experiments/paper_tables.py` (each section names the "
      "command and machine; the script was `benchmarks/paper_tables.py` before issue #14, "
      "as older recorded commands say); nothing is copied from the paper except the claims "
      "being tested. "
      "`python experiments/paper_tables.py --no-study` re-renders this file and its figures "
      "from `paper_tables.json`.")
    w("")
    study = report.get("study")
    if study:
        render_study(study, w)
    else:
        w("*The CIFAR-10 study (Tables 3-6) has not been measured for this file yet: "
          "`python experiments/paper_tables.py` runs it (146 minutes measured on a 2-core CPU).*")
        w("")
    demo = report.get("imagenet_demo")
    if demo:
        render_demo(demo, w)
    return "\n".join(L) + "\n"


def sharing(s):
    """How the runs shared the machine, in words."""
    jobs = s.get("jobs", 1)
    if jobs > 1:
        return f"{jobs} runs at a time, each in its own process on one thread"
    return f"one run at a time on the {s.get('device', 'cpu').upper()}, all its cores"


def findings_table(s):
    """The claims at a glance: a Markdown table, one row per claim (quoted verbatim by the
    README; tests/test_paper_tables.py checks the quote)."""
    rows = ["| # | the paper's claim | here | numbers (top-1 validation error) |",
            "|---|---|---|---|"]
    for i, c in enumerate(s["claims"], 1):
        rows.append(f"| {i} | {c['claim']} | {c.get('short', c['verdict'])} | {c.get('headline', '')} |")
    return "\n".join(rows)


def finding_line(c):
    """One claim in one line, as the lessons quote it."""
    return f"{c['claim']}: {c.get('short', c['verdict'])} ({c.get('headline', '')})"


def convergence_line(s):
    """Whether the validation curves had flattened, in one sentence (quoted verbatim by
    the README after the findings table; tests/test_paper_tables.py checks the quote)."""
    rows = fit_rows(s)
    falling = not_converged(s) or []
    budget = plural(s["settings"]["epochs"], "epoch")
    where = "the report's \"Trained enough to compare?\""
    if not falling:
        return (f"All {len(rows)} validation curves had flattened by the end of their {budget}: "
                f"none fell by more than {STILL_FALLING:g} points in the last one ({where}).")
    return (f"{len(rows) - len(falling)} of the {len(rows)} validation curves had flattened by "
            f"the end of their {budget}; {len(falling)} ({', '.join(falling)}) still fell by more "
            f"than {STILL_FALLING:g} points in the last one ({where}), so the verdicts compare "
            f"equal budgets of nearly, not fully, converged networks.")


def render_study(s, w):
    st = s["settings"]
    runs = s["runs"]
    gr = groups(runs)
    n, nmc = s["n_val"], s.get("n_multi_crop", s["n_val"])
    w("## Setting")
    w("")
    # A study that reused its runs only computed the tables now: its load says nothing
    # about the training times (the run note says when and how they were measured).
    label = "Tables computed with" if s.get("run_note") else "Measured with"
    when = s["date"] if s.get("run_note") else \
        f"{s['date']}; {load_note(s.get('load_average'), s.get('load_average_end'))}"
    w(f"- **{label}:** `{s['command']}` on {s['machine']} ({when}); "
      + ("a QUICK pipeline check (tiny data, 1 epoch): NOT a result." if s.get("quick")
         else "a real run of the full study."))
    if s.get("run_note"):
        w(f"- **How it ran:** {s['run_note']}")
    ntr = "all" if st["n_train"] is None else st["n_train"]
    w(f"- **Data:** {s['data_description']}: {ntr} training images except a fixed validation "
      f"split of {n} images (stratified, split seed {st['split_seed']}; the same images for "
      f"every model and seed). All errors below are on this validation split.")
    hidden = st["hidden"] if st["hidden"] is not None else int(4096 * st["width"])
    w(f"- **Models:** the configurations of Table 1 at width {st['width']:g} (channels "
      f"{max(1, round(64 * st['width']))}-{max(1, round(128 * st['width']))}-"
      f"{max(1, round(256 * st['width']))}-{max(1, round(512 * st['width']))}-"
      f"{max(1, round(512 * st['width']))}), fully connected layers of {hidden} units, "
      f"{'BatchNorm after every convolution' if st['batch_norm'] else 'no BatchNorm'}, plus "
      f"B-5x5 (section 4.1: configuration B with each pair of 3x3 convolutions replaced by one "
      f"5x5). Deviation from the paper: BatchNorm lets every depth train from scratch (the "
      f"paper initialised its deeper nets from net A instead).")
    recipe, lr = st.get("recipe", "default"), st.get("lr")
    if recipe == "default" and lr is None:
        how = (f"`train`'s default recipe:** every model {plural(st['epochs'], 'epoch')}, batch "
               f"{st['batch_size']}, one cycle to learning rate 0.1 (warm-up over 15 % of the "
               f"steps, cosine to zero), SGD with Nesterov momentum 0.9, weight decay 5e-4 on "
               f"weights only, no dropout, random pad-4 crops and flips (`python -m tinyvgg "
               f"train`'s defaults; the paper's recipe is `--recipe paper`).")
    else:
        how = (f"`train --recipe {recipe}`{'' if lr is None else f' with learning rate {lr:g}'}:** "
               f"every model {plural(st['epochs'], 'epoch')}, batch {st['batch_size']} (the "
               f"exact commands are at the end).")
    seeded = [m for m in gr.values() if len(m) > 1]
    w(f"- **Equal budget, {how} "
      + (f"{', '.join(m[0] for m in seeded)} are trained with {len(seeded[0])} seeds each, the "
         f"others with one." if seeded else "One seed per model."))
    w("- **Training scale S at 32 pixels** (the paper: S = 256, 384, [256, 512] with 224 "
      "crops): *S = 32*: CIFAR's pad-4-and-crop at the native scale; *S in [32, 48]*: every "
      "image rescaled to a random S (scale jittering), random 32 x 32 crops.")
    w("- **Test scales Q** (`tinyvgg.evaluate_protocols.test_scales`): single scale Q = S (Q = "
      "40 for [32, 48]); multi-scale {S - 5, S, S + 5} for fixed S (the paper's offset 32 at "
      "crop 224, scaled to crop 32) and {32, 40, 48} for [32, 48]. Dense and multi-crop use "
      f"the multi-scale set (as the paper's Table 5); multi-crop runs on {nmc} of the {n} "
      f"validation images (a stratified sample; 50 windows per scale cost the most).")
    e = float(np.mean([row["protocols"]["single"]["top1_error"] for row in runs.values()])) / 100
    w(f"- **Noise:** with {n} validation images the standard error of one error rate near "
      f"{100 * e:.0f} % is about {100 * math.sqrt(e * (1 - e) / n):.1f} points. Differences are "
      f"seed-averaged (each model's per-image correctness averaged over its seeds) and judged "
      f"with the paired standard error over the same images (± below); a difference counts "
      f"for or against a claim only beyond 2 standard errors (claim 1, that LRN does not "
      f"help, is contradicted only if LRN helps beyond 2 standard errors). The seed spread is "
      f"shown beside each seed-averaged error.")
    t = s["time"]
    w(f"- **Time:** {minutes(t.get('span_s'))} from the first run's start to the end of the "
      f"last run's evaluation ({sharing(s)}; {minutes(t['train_sum_s'])} of training summed "
      f"over the runs).")
    w("")
    w("## The claims at a glance")
    w("")
    w(findings_table(s))
    w("")
    falling = not_converged(s)
    if falling:
        w(f"**Read with care:** {len(falling)} of {len(s['runs'])} networks here were still "
          f"learning when their budget ran out ([Trained enough to "
          f"compare?](#trained-enough-to-compare) below), so these verdicts compare equal "
          f"short budgets, not converged networks.")
        w("")
    w("Details, numbers and the evidence for each verdict: "
      "[Do the paper's findings hold here?](#do-the-papers-findings-hold-here) below.")
    w("")
    render_depth(s, w)
    w("## Table 3: performance at a single test scale")
    w("")
    w("| ConvNet config. | seed | train (S) | test (Q) | top-1 val. error (%) | top-5 val. error (%) | "
      "last-epoch train error (%) | parameters | training time |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r, row in runs.items():
        p = row["protocols"]["single"]
        tt = minutes(row["train_time_s"]) + (" (reused)" if row.get("reused") else "")
        w(f"| {r} | {row.get('seed', '')} | {row['train_scale_label']} | {q_label(p['scales'])} | "
          f"{fmt(p['top1_error'])} | {fmt(p['top5_error'])} | {fmt(train_error(row))} | "
          f"{row['params']:,} | {tt} |")
    w("")
    w("Last-epoch train error: on the augmented training batches, averaged over the last "
      "epoch. Training time: the training epochs only (without the per-epoch validation pass), "
      f"as `metrics.json` records it ({sharing(s)}). Top-5 error means "
      "little with 10 classes; read the top-1 column.")
    w("")
    w("## Table 4: performance at multiple test scales")
    w("")
    w("| ConvNet config. | seed | train (S) | test (Q) | top-1 val. error (%) | top-5 val. error (%) |")
    w("|---|---|---|---|---|---|")
    for r, row in runs.items():
        p = row["protocols"]["multi-scale"]
        w(f"| {r} | {row.get('seed', '')} | {row['train_scale_label']} | {q_label(p['scales'])} | "
          f"{fmt(p['top1_error'])} | {fmt(p['top5_error'])} |")
    w("")
    w("Each Q: the image rescaled to Q (padded with the mean colour to 32 x 32 when Q < 32), "
      "its central 32 x 32 crop and the crop's mirror image; posteriors averaged over the "
      "three scales.")
    w("")
    w("## Table 5: dense versus multi-crop evaluation")
    w("")
    w(f"On the {nmc} validation images multi-crop evaluates (dense is also given on all {n}); "
      f"one seed of D (multi-crop is the costliest protocol), so claim 7 is judged on single "
      f"runs, not seed averages.")
    w("")
    w("| ConvNet config. | train (S) | evaluation method | test (Q) | images | top-1 val. error (%) | "
      "top-5 val. error (%) | evaluation time |")
    w("|---|---|---|---|---|---|---|---|")
    for r in TABLE5_RUNS:
        row = runs[r]
        for p, label in (("dense", "dense"), ("dense@mc", "dense"),
                         ("multi-crop", "multi-crop (5x5 grid x 2 flips per Q)"),
                         ("dense+multi-crop", "multi-crop & dense")):
            x = row["protocols"][p]
            w(f"| {r} | {row['train_scale_label']} | {label} | {q_label(x['scales'])} | {x['n']} | "
              f"{fmt(x['top1_error'])} | {fmt(x['top5_error'])} | {minutes(x.get('time_s'))} |")
    w("")
    maps = s.get("dense_score_maps") or {}
    if maps:
        w("Dense: the fully convolutional network on the whole rescaled image and its mirror "
          "image, the class score map averaged, then soft-maxed. The score map of a 32 x 32 "
          "image at each Q (measured): " + ", ".join(f"Q = {q}: {m[0]} x {m[1]}"
                                                     for q, m in maps.items())
          + ". Five 2 x 2 pools floor odd sides, so below 64 pixels the map is one position, "
          "whose receptive field is anchored at the top-left of the rescaled image (padded to "
          "32 when Q < 32), where multi-scale takes the central crop.")
        w("")
    w("## Table 6: fusion (posteriors averaged over models)")
    w("")
    w("| combined ConvNet models | evaluation | images | top-1 val. error (%) | top-5 val. error (%) | "
      "best member (top-1 %) | best member - fusion (points) |")
    w("|---|---|---|---|---|---|---|")
    for f in s["fusion"]:
        w(f"| {f['name']} | {f['protocol']} | {f.get('n', n)} | {fmt(f['top1_error'])} | "
          f"{fmt(f['top5_error'])} | {f['best_member']} ({fmt(f['best_member_top1_error'])}) | "
          f"{f['gain_over_best']:+.1f} ± {f['gain_se']:.1f} |")
    w("")
    w("## Do the paper's findings hold here?")
    w("")
    w("Differences in top-1 error points, worse minus better as the paper predicts them (a "
      "positive number agrees with the paper), seed-averaged, ± one paired standard error.")
    w("")
    for i, c in enumerate(s["claims"], 1):
        w(f"{i}. **{c['claim']}**: {c['verdict']}. {c['numbers']}.")
        key = c.get("key") or (CLAIM_KEYS[i - 1] if i <= len(CLAIM_KEYS) else None)
        if not _all_supported(c["verdict"]) and key:
            w(f"   *Why it may not show here:* {likely_reason(key, s)}")
    w("")
    render_fit(s, w)
    w("## Exact commands")
    w("")
    w("The study:")
    w("")
    w("```")
    w(s["command"])
    w("```")
    w("")
    w("Each training run, as `python -m tinyvgg train` (what the study runs in a worker "
      "process through `tinyvgg.train.train(TrainConfig(...))`):")
    w("")
    w("```")
    for r, cmd in s["train_commands"].items():
        w(cmd)
    w("```")
    w("")
    w("Evaluating a run with any protocol (`--split val` rebuilds the same held-out split "
      "from the checkpoint's training settings), for example (multi-crop here runs on all "
      f"{s['n_val']} validation images, Table 5 on {s.get('n_multi_crop', s['n_val'])} of them):")
    w("")
    w("```")
    for cmd in s["eval_commands"]:
        w(cmd)
    w("```")
    w("")


def depth_rows(s):
    """[(config, layers, [runs], mean error, [seed errors], mean last-epoch train error)]
    for the configurations that have a depth, from Table 3's single-scale numbers."""
    runs = s["runs"]
    rows = []
    for first, members in groups(runs).items():
        cfg = runs[first]["config"]
        if cfg not in DEPTH or runs[first]["train_scale"] is not None:
            continue
        errs = [runs[r]["protocols"]["single"]["top1_error"] for r in members]
        tes = [train_error(runs[r]) for r in members if train_error(runs[r]) is not None]
        rows.append((cfg, DEPTH[cfg], members, float(np.mean(errs)), errs,
                     float(np.mean(tes)) if tes else None))
    return rows


def render_depth(s, w):
    w("## Depth: error against the number of weight layers")
    w("")
    w(f"![validation error against depth]({FIGURES['depth']}) ![training curves]({FIGURES['curves']})")
    w("")
    w("| ConvNet config. | weight layers | seeds | top-1 val. error (%), seed mean | per seed | "
      "last-epoch train error (%) |")
    w("|---|---|---|---|---|---|")
    for cfg, depth, members, mean, errs, te in depth_rows(s):
        w(f"| {cfg} | {depth} | {len(members)} | {mean:.1f} | "
          f"{', '.join(f'{e:.1f}' for e in errs)} | {fmt(te)} |")
    w("")
    w("Single-scale test (Q = 32). A-LRN adds LRN to A; C adds three 1x1 layers to B where D "
      "adds three 3x3; B-5x5 is B with each pair of 3x3 layers replaced by one 5x5.")
    w("")


def fit_rows(s):
    """[(run, last-epoch change of validation error (points, None after one epoch),
    last-epoch training error, single-scale validation error)]."""
    rows = []
    for r, row in s["runs"].items():
        h = [x for x in row.get("history") or [] if x.get("val_acc") is not None]
        if h:
            change = 100 * (h[-2]["val_acc"] - h[-1]["val_acc"]) if len(h) >= 2 else None
            rows.append((r, change, train_error(row), row["protocols"]["single"]["top1_error"]))
    return rows


def not_converged(s):
    """Runs whose validation error still fell by more than STILL_FALLING points in the last
    epoch (the issue's test: a curve that has flattened); None when every curve has
    flattened. A training error at or above the validation error is reported next to it
    but not counted: the training error is measured on augmented batches (pad-4 crops,
    flips and, for D-S32-48, scale jittering), which are harder than the validation
    images, so it can stay above the validation error in a network that has stopped
    learning."""
    falling = [r for r, d, _, _ in fit_rows(s) if d is not None and d < -STILL_FALLING]
    return falling or None


def render_fit(s, w):
    """Is every model trained enough to compare? The last epochs of each validation curve."""
    rows = fit_rows(s)
    if not rows:
        return
    w("### Trained enough to compare?")
    w("")
    w("Validation error of the last epoch minus the one before (points; negative: still "
      "falling), and last-epoch training error next to the validation error:")
    w("")
    w("| run | last-epoch change of val. error | last-epoch train error (%) | val. error (%) |")
    w("|---|---|---|---|")
    for r, d, te, ve in rows:
        w(f"| {r} | {'n/a' if d is None else f'{d:+.1f}'} | {fmt(te)} | {fmt(ve)} |")
    w("")
    falling = not_converged(s) or []
    under = [r for r, _, te, ve in rows if te is not None and te >= ve]
    if falling:
        w(f"**Not converged.** The validation error of {len(falling)} of {len(rows)} runs "
          f"({', '.join(falling)}) still fell by more than {STILL_FALLING:g} points in the last "
          f"epoch: they could still learn, so the verdicts above compare networks at the end of "
          f"an equal budget of {plural(s['settings']['epochs'], 'epoch')}, not at convergence. "
          f"A longer budget (`--epochs`) is what the depth and 1x1 claims need next.")
    else:
        w(f"Every run's validation error changed by less than {STILL_FALLING:g} points in the "
          f"last epoch: the validation curves have flattened, which is this study's test of "
          f"\"converged enough to compare\".")
    if under:
        w("")
        w(f"{len(under)} of {len(rows)} runs ({', '.join(under)}) end with a training error at "
          f"or above their validation error. Training error is counted on augmented batches "
          f"(random pad-4 crops and flips, plus scale jittering for D-S32-48) while the "
          f"weights still change within the epoch, so it is not a sign of more to learn on "
          f"its own; {'all other runs fit their' if len(under) < len(rows) else 'no run fits its'} "
          f"training batches better than the validation images.")
    w("")


def draw_figures(study, folder):
    """The two figures of the report in ``folder``: validation error against depth (each
    seed a dot, the seed mean a line) and every run's training curves. Returns the paths."""
    from pathlib import Path

    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder = Path(folder)
    paths = []
    rows = depth_rows(study)
    fig, ax = plt.subplots(figsize=(6, 4))
    chain = [r for r in rows if r[0] in DEPTH_CHAIN]
    ax.plot([r[1] for r in chain], [r[3] for r in chain], "-o", color="C0",
            label="A, B, D, E (seed mean)")
    for cfg, depth, members, mean, errs, _ in rows:
        colour = "C0" if cfg in DEPTH_CHAIN else "C3"
        ax.scatter([depth] * len(errs), errs, s=14, color=colour, alpha=0.6)
        ax.annotate(cfg, (depth, mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter([], [], s=14, color="C3", label="A-LRN, B-5x5, C (one seed)")
    ax.set_xlabel("weight layers")
    ax.set_ylabel("top-1 validation error (%), Q = 32")
    ax.set_title(f"CIFAR-10, width {study['settings']['width']:g}, "
                 f"{plural(study['settings']['epochs'], 'epoch')}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(folder / FIGURES["depth"])
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    palette = plt.get_cmap("tab20").colors
    for i, (r, row) in enumerate(study["runs"].items()):
        h = row.get("history") or []
        ep_ = [x["epoch"] for x in h]
        colour = palette[(2 * i) % 20 + (2 * i) // 20]
        axes[0].plot(ep_, [100 * (1 - x["val_acc"]) if x.get("val_acc") is not None else np.nan
                           for x in h], marker="o", ms=3, color=colour, label=r)
        axes[1].plot(ep_, [100 * (1 - x["train_acc"]) if x.get("train_acc") is not None else np.nan
                           for x in h], marker="o", ms=3, color=colour)
    axes[0].set_title("validation error (flip TTA)")
    axes[1].set_title("training error (augmented batches)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 error (%)")
    axes[0].legend(fontsize=7, ncol=2)
    paths.append(folder / FIGURES["curves"])
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths

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
