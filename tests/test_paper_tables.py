"""benchmarks/paper_tables.py: the whole study pipeline in --quick mode (< 2 min), and its
pieces (rules, statistics, the synthetic fallback dataset)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "paper_tables.py"


@pytest.fixture(scope="module")
def pt():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_tables"] = mod  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("paper_tables", None)


def test_quick_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "quick"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (out / "paper_tables.md").read_text()
    for heading in ("Table 3", "Table 4", "Table 5", "Table 6", "Do the paper's findings hold",
                    "Exact commands", "QUICK"):
        assert heading in md, heading
    report = json.loads((out / "paper_tables.json").read_text())
    study = report["study"]
    assert set(study["runs"]) == {"A", "A-LRN", "B", "C", "D", "E", "D-S40", "D-S32-48"}
    for name, run in study["runs"].items():
        for p in ("single", "multi-scale", "dense"):
            assert 0 <= run["protocols"][p]["top1_error"] <= 100
        assert (out / name / "checkpoint.npz").is_file()
    assert study["runs"]["D-S32-48"]["protocols"]["multi-scale"]["scales"] == [32, 40, 48]
    assert study["runs"]["D"]["protocols"]["dense+multi-crop"]["top1_error"] >= 0
    assert len(study["claims"]) == 7 and len(study["fusion"]) >= 4
    # written under --out (not the committed results), with the command that made it
    assert str(out) in study["command"] and study["quick"] is True


def test_settings_scale_with_the_budget(pt):
    full = pt.Settings.for_budget(90)
    assert (full.n_train, full.n_val, full.epochs) == (12000, 2000, 8)
    small = pt.Settings.for_budget(20)
    assert small.n_train == 2700 and small.n_val == 1000 and small.epochs == full.epochs
    q = pt.Settings.quick()
    assert q.width == 1 / 16 and q.epochs == 1


def test_paired_standard_error_and_verdicts(pt):
    labels = np.array([0, 1, 0, 1])
    a = np.eye(2)[[1, 1, 1, 1]]  # right on 2 of 4
    b = np.eye(2)[[0, 1, 0, 1]]  # right on 4 of 4
    d, se = pt.paired(a, b, labels)  # err(a) - err(b) = 50 points
    assert d == pytest.approx(50.0)
    assert se == pytest.approx(100 * np.std([1, 0, 1, 0], ddof=1) / 2)
    assert pt.verdict(5.0, 1.0) == "supported"
    assert pt.verdict(-5.0, 1.0) == "contradicted"
    assert pt.verdict(1.0, 1.0).startswith("not resolved")


def test_train_command_matches_the_config(pt, tmp_path):
    st = pt.Settings.quick()
    cfg = pt.train_config("D-S32-48", st, "folder", tmp_path, tmp_path / "runs", "cpu", False)
    cmd = pt.train_command(cfg)
    assert "--model vgg16" in cmd and "--scale 32,48" in cmd and f"--limit {cfg.limit}" in cmd
    from tinyvgg.cli import _config_from_args, build_parser
    args = build_parser().parse_args(cmd.split()[3:])
    again = _config_from_args(args)
    for key in ("model", "width", "hidden", "epochs", "lr", "limit", "scale", "seed", "batch_norm"):
        assert getattr(again, key) == getattr(cfg, key) or list(getattr(again, key)) == \
            list(getattr(cfg, key)), key
    assert int(again.val_size) == cfg.val_size


def test_synthetic_quick_dataset_when_shared_data_is_missing(pt, tmp_path, monkeypatch):
    monkeypatch.setattr(pt, "DEFAULT_DATA", tmp_path / "missing")
    root, desc = pt.quick_dataset(tmp_path / "data", per_class=3)
    assert "synthetic" in desc
    from tinyvgg.data import load_dataset
    ds = load_dataset("folder", root, cache=False)
    assert len(ds) == 30 and len(ds.classes) == 10 and ds.images.shape[1:] == (32, 32, 3)
