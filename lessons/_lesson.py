"""The little bit of machinery every lesson shares.

- ``import _lesson`` puts the repository root on ``sys.path``, so ``import
  tinyvgg`` works without installing anything.
- ``step(title)`` starts a step: in a terminal it first waits for Enter (not
  before the first step); with ``--no-pause``, or when stdin is not a
  terminal (a pipe, a test), it runs straight through.
- ``say(text)`` prints a paragraph of explanation (dedented, wrapped).
- ``out_dir()`` is ``lessons/out/``, created on demand, for the pictures.
- ``pyplot()`` is matplotlib's pyplot on the Agg backend (files, no windows).
- ``done()`` closes the lesson.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

LESSONS = Path(__file__).resolve().parent
REPO = LESSONS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

np.set_printoptions(precision=3, suppress=True, linewidth=100)

PAUSE = "--no-pause" not in sys.argv[1:] and sys.stdin is not None and sys.stdin.isatty()
_state = {"steps": 0, "start": time.perf_counter()}


def step(title):
    """Begin the next step (pausing first when run interactively)."""
    _state["steps"] += 1
    if PAUSE and _state["steps"] > 1:
        try:
            input("\n  [Enter] to continue, Ctrl-C to stop ... ")
        except EOFError:
            pass
    bar = "=" * 78
    print(f"\n{bar}\nStep {_state['steps']}. {title}\n{bar}")


def say(text):
    """Print a paragraph of explanation."""
    text = textwrap.dedent(text).strip("\n")
    for para in text.split("\n\n"):
        print(textwrap.fill(" ".join(para.split()), width=78))
        print()


def out_dir():
    """``lessons/out/``, created if needed."""
    d = LESSONS / "out"
    d.mkdir(parents=True, exist_ok=True)
    return d


def pyplot():
    """matplotlib.pyplot on the Agg backend (pictures go to files)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, name):
    """Save a figure to ``lessons/out/name`` and say where it went."""
    path = out_dir() / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    print(f"  picture saved: {path.relative_to(REPO)}")
    return path


def done():
    secs = time.perf_counter() - _state["start"]
    print(f"\nDone: every claim above was checked by an assert ({_state['steps']} steps, {secs:.1f} s).")
