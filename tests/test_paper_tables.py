"""experiments/paper_tables.py: the whole study pipeline in --quick mode (< 2 min), and its
pieces: the study (experiments/paper_study.py: rules, statistics, the synthetic fallback
dataset) and the report (experiments/paper_report.py: rendering)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SCRIPT = EXPERIMENTS / "paper_tables.py"
MODULES = ("paper_study", "paper_report", "paper_tables")


@pytest.fixture(scope="module")
def experiment():
    """(the study module, the report module), imported as the script imports them."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import paper_report
        import paper_study
        import paper_tables  # noqa: F401  (the command imports both without a cycle)
        yield paper_study, paper_report
    finally:
        sys.path.remove(str(EXPERIMENTS))
        for m in MODULES:
            sys.modules.pop(m, None)


@pytest.fixture(scope="module")
def pt(experiment):
    return experiment[0]


@pytest.fixture(scope="module")
def rp(experiment):
    return experiment[1]


def test_quick_runs_the_whole_pipeline(pt, rp, tmp_path):
    out = tmp_path / "quick"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--longer", "2", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
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
    # --longer: A and E again with 2 epochs, compared on the study's validation images
    longer = report["longer"]
    assert longer["epochs"] == 2 and set(longer["runs"]) == {"A", "E"}
    for name in ("A", "E"):
        assert longer["runs"][name]["epochs"] == 2 and 0 <= longer["runs"][name]["top1_error"] <= 100
        assert (out / "longer-2ep" / name / "checkpoint.npz").is_file()
    assert "study_e_minus_a" in longer and "--epochs 2" in longer["train_commands"]["E"]
    assert "A and E trained 2 epochs" in md
    # every claim is tagged; a likely reason is rendered under exactly the unsupported ones
    assert [c["key"] for c in study["claims"]] == pt.CLAIM_KEYS
    for c in study["claims"]:
        c["verdict"] = "supported"
    study["claims"][1]["verdict"] = "contradicted; not monotone"
    text = rp.render(report)
    assert text.count("*Likely reason:*") == 1
    claims_block = text.split("## Do the paper's findings hold here?")[1].split("\n2. ")[1]
    assert claims_block.split("\n3. ")[0].count("*Likely reason:*") == 1


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


@pytest.mark.parametrize("verdict, ok", [
    ("supported (no significant gain from LRN)", True),
    ("contradicted (LRN helped here, beyond 2 SE)", False),
    ("supported; monotone", True),
    ("supported; not monotone", False),
    ("C vs D: supported; B vs C: not resolved (within 2 SE; wrong sign)", False),
    ("D: supported, D-S32-48: supported", True),
    ("D at S = 32, 40, [32, 48] (multi-scale): supported; all 8 models (dense): supported", True),
    ("better for 8 of 8 models, significantly for 8, significantly worse for 0", True),
    ("better for 6 of 8 models, significantly for 2, significantly worse for 0", False),
])
def test_a_compound_verdict_counts_as_supported_only_when_every_part_is(rp, verdict, ok):
    assert rp._all_supported(verdict) is ok


def test_load_note_says_whether_other_jobs_shared_the_cpu(rp):
    assert "nothing else ran" in rp.load_note([0.1, 0.2, 0.3], [2.0, 1.5, 1.0])
    assert "may be upper bounds" in rp.load_note([5.5, 6.0, 7.0])
    assert rp.load_note(None) == "load average unknown"


def test_likely_reason_follows_the_measured_training_errors(pt, rp):
    st = dict(epochs=8, n_train=12000, width=0.125)
    slower = rp.likely_reason("depth", st, {"A": 30.0, "B": 32.0, "D": 35.0, "E": 40.0})
    assert "converge more slowly" in slower and "E 40 %" in slower
    fits = rp.likely_reason("depth", st, {"A": 30.0, "B": 28.0, "D": 25.0, "E": 20.0})
    assert "as well or better" in fits and "converge more slowly" not in fits
    for key in pt.CLAIM_KEYS:
        assert rp.likely_reason(key, st, {}).endswith(".")


def test_depth_trend_names_the_direction(rp):
    assert "towards the paper" in rp.depth_trend(15.0, 1.5, 5.0, 1.5)
    assert "now better" in rp.depth_trend(15.0, 1.5, -5.0, 1.5)
    assert "away from the paper" in rp.depth_trend(5.0, 1.5, 15.0, 1.5)
    assert rp.depth_trend(15.0, 1.5, 14.0, 1.5) == "the gap barely changes"


def _photo_folder(root, n_classes):
    """Class folders of one random JPEG each, ImageNet-sized; class 1 is grayscale."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n_classes):
        d = root / f"n{i:08d}"
        d.mkdir(parents=True)
        if i == 1:
            img = Image.fromarray(rng.integers(0, 256, (500, 333), dtype=np.uint8), "L")
        else:
            img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8), "RGB")
        img.save(d / f"n{i:08d}_photo.JPEG")
    return root


def test_imagenet_labels_place_the_sample_classes(pt, tmp_path):
    root = tmp_path / "sample"
    for i in range(100):
        (root / f"n{i:08d}").mkdir(parents=True)
    labels = pt.imagenet_labels(root)
    assert labels["n00000000"] == 0 and labels["n00000001"] == 10 and labels["n00000099"] == 990
    assert pt.imagenet_labels(_photo_folder(tmp_path / "few", 3)) is None


def test_imagenet_demo_shapes_with_random_weights(pt, rp, tmp_path):
    d = pt.imagenet_demo(_photo_folder(tmp_path / "photos", 3), n_images=2, width=1 / 16,
                         log=lambda m: None)
    rows = {r["mode"]: r for r in d["images"]}
    assert set(rows) == {"RGB", "L"} and d["errors"] is None and d["checkpoint"] is None
    rgb, gray = rows["RGB"], rows["L"]
    # shorter side to Q, aspect kept; the map is (H / 32 - 6) x (W / 32 - 6), rounded down
    assert [x["input"] for x in rgb["dense"]] == [[1, 3, 256, 341], [1, 3, 384, 512]]
    assert [x["score_map"] for x in rgb["dense"]] == [[1, 1000, 2, 4], [1, 1000, 6, 10]]
    assert gray["dense"][0]["input"] == [1, 3, 384, 256] and gray["dense"][0]["score_map"] == \
        [1, 1000, 6, 2]
    assert rgb["multi_crop"]["positions"] == 25 and rgb["posterior_shape"] == [1, 1000]
    assert "random weights" in rp.render({"imagenet_demo": dict(d, command="c", machine="m",
                                                               date="d", load_average=None)})


def test_imagenet_demo_with_a_checkpoint_reports_each_methods_error(pt, rp, tmp_path):
    from tinyvgg import checkpoint
    from tinyvgg.models import vgg
    model = vgg("vgg16", num_classes=1000, input_size=224, width=1 / 16, hidden=32)
    ck = checkpoint.save(tmp_path / "vgg16.npz", model, mean=[120.0, 115.0, 100.0],
                         std=[60.0, 60.0, 60.0], input_size=224)
    folder = _photo_folder(tmp_path / "photos", 100)
    d = pt.imagenet_demo(folder, n_images=2, log=lambda m: None, checkpoint=ck)
    assert d["checkpoint"] == str(ck) and d["width"] == pytest.approx(1 / 16)
    assert d["std"] == [60.0, 60.0, 60.0]
    for r in d["images"]:
        assert r["label"] == 10 * int(r["file"][1:9])
        assert set(r["top5"]) == set(pt.IMAGENET_METHODS)
    for m in pt.IMAGENET_METHODS:
        top1 = 100 * np.mean([r["top5"][m][0] != r["label"] for r in d["images"]])
        assert d["errors"][m]["top1_error"] == pytest.approx(top1)
        assert 0 <= d["errors"][m]["top5_error"] <= d["errors"][m]["top1_error"]
    text = rp.render({"imagenet_demo": dict(d, command="c", machine="m", date="d",
                                            load_average=None)})
    assert "| dense+multi-crop |" in text and "random weights" not in text

    small = checkpoint.save(tmp_path / "small.npz", vgg("vgg11", num_classes=10, width=1 / 16,
                                                        hidden=16))
    with pytest.raises(SystemExit, match="1000 classes"):
        pt.imagenet_demo(folder, n_images=1, log=lambda m: None, checkpoint=small)


def test_the_committed_report_is_the_rendering_of_the_committed_json(rp):
    """experiments/results/paper_tables.md is render(paper_tables.json): the report module
    alone reproduces it, without training or evaluating anything."""
    results = EXPERIMENTS / "results"
    report = json.loads((results / "paper_tables.json").read_text())
    assert rp.render(report) == (results / "paper_tables.md").read_text()
