"""The doctor's report: the per-layer table, the summary, the Markdown/plain report,
the JSON record and the per-layer picture, written with the package's atomic
writes (:mod:`tinyvgg.fileio`) and plotting module (:mod:`tinyvgg.plots`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_text
from ..plots import _plt, _save
from .checks import _finite, _fmt
from .record import kind_of

__all__ = ["table", "summary", "report", "to_dict", "save", "plot_layer_stats"]


def table(doctor, record=None):
    """The per-layer statistics of one recording of ``doctor`` (default the last) as text."""
    rec = record or (doctor.records[-1] if doctor.records else None)
    if rec is None:
        return "(no statistics recorded: the run ended before the first recording step)"
    head = (f"{'layer':<14}{'type':<7}{'act mean':>10}{'act std':>10}{'dead':>6}"
            f"{'|grad W|':>10}{'|dL/dy|':>10}{'|W|':>10}{'upd/|W|':>10}")
    lines = [f"per-layer statistics at step {rec['step']} (loss {rec['loss']:.4f}, lr {rec['lr']:g})",
             head, "-" * len(head)]
    kinds = dict((n, kind_of(l)) for n, l in doctor._tracked)
    for name in kinds:
        d = rec["layers"].get(name, {})
        dead = d.get("dead")
        lines.append(f"{name:<14}{kinds[name]:<7}{_fmt(d.get('act_mean'), '10.2e')}"
                     f"{_fmt(d.get('act_std'), '10.2e')}"
                     f"{(format(dead, '6.0%') if _finite(dead) else '     -')}"
                     f"{_fmt(d.get('grad_norm'), '10.2e'):>10}{_fmt(d.get('grad_out_norm'), '10.2e'):>10}"
                     f"{_fmt(d.get('weight_norm'), '10.2e'):>10}{_fmt(d.get('update_ratio'), '10.2e'):>10}")
    return "\n".join(lines)

def summary(doctor):
    """A few lines: the configuration, the loss at the start and the end, and the
    accuracies of every epoch."""
    c = doctor.config
    lines = []
    if c:
        lines.append(f"model {c.get('model')} width {c.get('width')} "
                     f"{'with' if c.get('batch_norm') else 'without'} BatchNorm, init {c.get('init')}, "
                     f"dropout {c.get('dropout')}, lr {c.get('lr')}, batch {c.get('batch_size')}, "
                     f"dataset {c.get('dataset')}" + (f" (limit {c.get('limit')})" if c.get('limit') else ""))
    dc = doctor.data_counts
    if dc:
        lines.append(f"trained on {dc['train_images']} images of {dc['train_classes']} classes"
                     + (f" (of the model's {dc['num_classes']})"
                        if dc.get("num_classes") not in (None, dc["train_classes"]) else "")
                     + (f": {doctor.data_note}" if doctor.data_note else "")
                     + (f"; validated on {dc['val_images']} images"
                        if dc.get("val_images") is not None else ""))
    if doctor.losses:
        vals = [l for _, l in doctor.losses]
        w = min(len(vals), doctor.th.window)
        lnk = doctor.observed().lnk()
        lines.append(f"{len(vals)} steps; mean loss of the first {w} steps {np.mean(vals[:w]):.4f}, "
                     f"of the last {w} steps {np.mean(vals[-w:]):.4f}"
                     + (f" (chance: ln {doctor.num_classes} = {lnk:.4f})" if lnk else ""))
    for ev in doctor.epochs:
        lines.append(f"epoch {ev.get('epoch')}: reported train acc {_fmt(ev.get('train_acc_reported'), '.3f')}"
                     f" (training mode, during the epoch), val acc {_fmt(ev.get('val_acc_reported'), '.3f')}; "
                     f"doctor (evaluation mode): train {_fmt(ev.get('train_acc_eval'), '.3f')}, "
                     f"val {_fmt(ev.get('val_acc_eval'), '.3f')}")
    return "\n".join(lines)

def report(doctor, markdown=True):
    """The diagnoses, the suggested fix and the per-layer tables (first and last
    recordings), as Markdown (``doctor_report.md``) or plain text."""
    lines = []
    h1, h2, code = ("# ", "## ", "```") if markdown else ("", "", "")
    lines.append(f"{h1}Training doctor report")
    lines.append("")
    lines += [f"{x}  " if markdown else x for x in summary(doctor).splitlines()]
    lines.append("")
    lines.append(f"{h2}Diagnoses")
    if not doctor.diagnoses:
        lines.append("No problem found: the checks stayed silent.")
    for d in doctor.ordered():
        lines.append("")
        if markdown:
            lines.append(f"### {d.kind}: {d.title}"
                         + (f" (first seen at step {d.step})" if d.step is not None else "")
                         + (" (no longer seen at the end)" if d.resolved else ""))
            lines.append(f"**What I saw:** {d.saw}")
            lines.append("")
            lines.append("**Likely causes, most likely first:**")
            lines += [f"{i}. {x}" for i, x in enumerate(d.causes, 1)]
            lines.append("")
            lines.append("**What to try:**")
            lines += [f"- {x}" for x in d.fixes]
        else:
            lines.append(d.text())
    args, why = doctor.suggested_fix()
    alt = doctor.alternative_fix()
    if args:
        q = "`" if markdown else ""
        lines += ["", f"{h2}Suggested fix", f"{q}{' '.join(args)}{q}  (because of {why})"]
        if alt:
            lines.append(f"or: {q}{' '.join(alt)}{q}")
    if doctor.records:
        lines += ["", f"{h2}Per-layer statistics",
                  "act: output of the layer; dead: units zero for the whole batch; |grad W|: "
                  "weight-gradient norm; |dL/dy|: norm of the gradient reaching the layer's output; "
                  "upd/|W|: ||dW||/||W|| of the SGD step."]
        for rec in ([doctor.records[0]] if len(doctor.records) > 1 else []) + [doctor.records[-1]]:
            lines.append("")
            lines += ([code] if markdown else []) + [table(doctor, rec)] + ([code] if markdown else [])
    if doctor.files.get("plot"):
        name = Path(doctor.files["plot"]).name
        lines += ["", f"![per-layer statistics over time]({name})" if markdown
                  else f"per-layer plot: {doctor.files['plot']}"]
    return "\n".join(lines)

def to_dict(doctor):
    """Everything the doctor saw and concluded, as a JSON-ready dict (doctor.json)."""
    return {"every": doctor.every, "thresholds": asdict(doctor.th), "config": doctor.config,
            "num_classes": doctor.num_classes, "data": dict(doctor.data_counts, note=doctor.data_note),
            "diagnoses": [d.to_dict() for d in doctor.ordered()],
            "suggested_fix": doctor.suggested_fix()[0], "alternative_fix": doctor.alternative_fix(),
            "layers": [{"name": n, "type": kind_of(l)} for n, l in doctor._tracked],
            "records": doctor.records, "epochs": doctor.epochs,
            "losses": {"step": [t for t, _ in doctor.losses], "loss": [l for _, l in doctor.losses]}}

def save(doctor, folder):
    """Write ``doctor.json``, ``doctor_layers.png`` and ``doctor_report.md`` into
    ``folder``; returns {"json", "plot", "report"} paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if doctor.records:
        try:
            doctor.files["plot"] = str(plot_layer_stats(doctor, folder / "doctor_layers.png"))
        except Exception as e:  # a broken plot must not hide the diagnoses
            doctor.files["plot_error"] = f"{type(e).__name__}: {e}"
    doctor.files["json"] = str(folder / "doctor.json")
    atomic_write_text(folder / "doctor.json", json.dumps(_jsonable(to_dict(doctor)), indent=1))
    doctor.files["report"] = str(folder / "doctor_report.md")
    atomic_write_text(folder / "doctor_report.md", report(doctor, markdown=True) + "\n")
    return dict(doctor.files)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        v = float(o)
        return v if math.isfinite(v) else str(v)
    if isinstance(o, np.integer):
        return int(o)
    return o


_PLOT_STATS = (("act_std", "activation std (log10)", True),
               ("dead", "dead ReLU units (fraction)", False),
               ("grad_out_norm", "gradient reaching the output, ||dL/dy|| (log10)", True),
               ("grad_norm", "weight-gradient norm (log10)", True),
               ("update_ratio", "update / weight ratio (log10; ~-3 healthy)", True))


def plot_layer_stats(doctor, path):
    """One PNG: the loss per step on top, below it one heat map per statistic with
    a row per layer (input at the top) and a column per recording step. Grey
    cells: the statistic does not apply to the layer (or was not finite)."""
    plt = _plt()
    recs = doctor.records
    names = [n for n, _ in doctor._tracked]
    steps = [r["step"] for r in recs]
    rows = max(len(names), 1)
    fig = plt.figure(figsize=(17, 3.2 + 0.2 * rows))
    gs = fig.add_gridspec(2, len(_PLOT_STATS), height_ratios=[2.0, max(2.0, 0.2 * rows)],
                          left=0.07, right=0.99, bottom=0.1, top=0.93, hspace=0.35, wspace=0.08)
    ax = fig.add_subplot(gs[0, :])
    if doctor.losses:
        t, l = zip(*doctor.losses)
        ax.plot(t, l, lw=0.8, label="training loss per step")
        lnk = doctor.observed().lnk()
        if lnk:
            ax.axhline(lnk, color="red", ls="--", lw=0.8, label=f"chance: ln {doctor.num_classes}")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.suptitle("training doctor: per-layer statistics over time (rows: layers, input at the top; "
                 "grey: does not apply)", fontsize=10)
    first = None
    xt = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 5)).round().astype(int))) if steps else []
    for k, (key, title, log) in enumerate(_PLOT_STATS):
        ax = fig.add_subplot(gs[1, k], sharey=first)
        first = first or ax
        m = np.full((rows, len(recs)), np.nan)
        for j, r in enumerate(recs):
            for i, n in enumerate(names):
                v = r["layers"].get(n, {}).get(key)
                if v is not None and math.isfinite(v) and (v > 0 or not log):
                    m[i, j] = math.log10(v) if log else v
        kw = {"vmin": 0, "vmax": 1} if not log else {}
        cmap = "viridis"
        if key == "update_ratio":
            kw, cmap = {"vmin": -6, "vmax": 0}, "coolwarm"
        cmap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
        im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", interpolation="nearest", cmap=cmap, **kw)
        if k == 0:
            ax.set_yticks(range(len(names)), names, fontsize=6)
        else:
            ax.tick_params(labelleft=False)
        ax.set_xticks(xt, [str(steps[i]) for i in xt], fontsize=6)
        ax.set_title(title, fontsize=8)
        fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.04, pad=0.06 + 0.3 / rows)
    return _save(fig, path)
