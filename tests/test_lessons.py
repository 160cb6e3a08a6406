"""Every lesson runs to the end: its claims are asserts, so a lesson whose claim
stops holding for the code fails here.

Each lesson runs as a student would run it (``python lessons/NN_topic.py`` from
the repository root), non-interactively: ``--no-pause``, stdin not a terminal,
the Agg matplotlib backend, and a time limit.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted((REPO / "lessons").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 120  # each lesson is meant to take under 60 s on a 2-core CPU; slack for busy machines


def test_there_are_at_least_twelve_lessons():
    assert len(LESSONS) >= 12, [p.name for p in LESSONS]
    numbers = [int(p.name[:2]) for p in LESSONS]
    assert numbers == list(range(1, len(LESSONS) + 1)), "lessons are numbered 01, 02, ... without gaps"


def test_readme_lists_every_lesson():
    readme = (REPO / "lessons" / "README.md").read_text()
    missing = [p.name for p in LESSONS if p.name not in readme]
    assert not missing, f"lessons/README.md does not mention {missing}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(lesson):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    # One BLAS thread per lesson: on a small machine that is busy with other work
    # (a test run, a CI box), multi-threaded BLAS spin-waits for cores it cannot
    # get and a 20-second lesson takes minutes. A caller's explicit setting wins.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.pop("TINYVGG_DEVICE", None)  # lessons start on the CPU; lesson 12 tries the GPU itself
    try:
        proc = subprocess.run([sys.executable, str(lesson.relative_to(REPO)), "--no-pause"],
                              cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        out = (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]
        pytest.fail(f"{lesson.name} did not finish within {TIMEOUT_S} s; last output:\n{out}")
    assert proc.returncode == 0, (
        f"{lesson.name} exited with {proc.returncode}\n--- stdout (end) ---\n{proc.stdout[-3000:]}"
        f"\n--- stderr (end) ---\n{proc.stderr[-5000:]}")
    assert "Done:" in proc.stdout, f"{lesson.name} did not reach its end:\n{proc.stdout[-2000:]}"
