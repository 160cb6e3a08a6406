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
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-reuse", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "min left" in r.stdout and "[12/12]" in r.stdout  # progress and time left
    md = (out / "paper_tables.md").read_text()
    for heading in ("Depth: error against", "Table 3", "Table 4", "Table 5", "Table 6",
                    "Do the paper's findings hold", "Trained enough to compare", "Exact commands",
                    "QUICK"):
        assert heading in md, heading
    for fig in rp.FIGURES.values():
        assert (out / fig).stat().st_size > 1000 and f"]({fig})" in md
    report = json.loads((out / "paper_tables.json").read_text())
    study = report["study"]
    assert set(study["runs"]) == set(pt.RUNS)
    for name, run in study["runs"].items():
        for p in ("single", "multi-scale", "dense"):
            assert 0 <= run["protocols"][p]["top1_error"] <= 100
        assert (out / name / "checkpoint.npz").is_file()
        assert (out / name / "posteriors.npz").is_file()  # cached: a resumed study reuses it
        assert len(run["history"]) == 1 and run["seed"] == pt.RUNS[name][3]
    assert study["runs"]["D-S32-48"]["protocols"]["multi-scale"]["scales"] == [32, 40, 48]
    assert study["runs"]["D"]["protocols"]["dense+multi-crop"]["n"] == study["n_multi_crop"]
    assert study["dense_score_maps"] == {"27": [1, 1], "32": [1, 1], "37": [1, 1]}
    assert [c["key"] for c in study["claims"]] == pt.CLAIM_KEYS and len(study["fusion"]) >= 5
    # written under --out (not the committed results), with the command that made it
    assert str(out) in study["command"] and study["quick"] is True
    assert study["run_note"] is None and study["jobs"] == 2

    # Resumed: finished runs are kept, an interrupted one (its checkpoint, no metrics.json)
    # continues from its checkpoint, cached evaluations are read back.
    (out / "B" / "metrics.json").unlink()
    r2 = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--jobs", "1",
                         "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=240)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stdout.count("reusing the finished run") == len(pt.RUNS) - 1
    assert "B: continuing the interrupted run" in r2.stdout
    assert r2.stdout.count("reusing its evaluation") >= len(pt.RUNS) - 1
    again = json.loads((out / "paper_tables.json").read_text())["study"]
    assert "11 of 12 runs were trained" in again["run_note"]
    assert "load average when they started ranged" in again["run_note"]  # recorded per run
    for r in pt.RUNS:
        if r != "B":
            assert again["runs"][r]["protocols"] == study["runs"][r]["protocols"]

    # a likely reason is rendered under exactly the claims that are not supported
    for c in study["claims"]:
        c["verdict"] = "supported"
    study["claims"][1]["verdict"] = "contradicted; not monotone"
    text = rp.render(report)
    assert text.count("*Why it may not show here:*") == 1
    claims_block = text.split("## Do the paper's findings hold here?")[1].split("\n2. ")[1]
    assert claims_block.split("\n3. ")[0].count("*Why it may not show here:*") == 1


def test_runs_and_groups(pt):
    assert pt.group("A") == ["A", "A-seed2"] and pt.group("E-seed2") == ["E", "E-seed2"]
    assert pt.group("D-S32-48") == ["D-S32-48"] and pt.group("B-5x5") == ["B-5x5"]
    for cfg in pt.DEPTH_CHAIN:  # the depth claim: at least two seeds each
        assert len(pt.group(cfg)) >= 2
    assert set(pt.COST) == {m for m, *_ in pt.RUNS.values()}
    full, q = pt.Settings(), pt.Settings.quick()
    assert full.width >= 0.25 and full.n_train is None and full.n_val == 5000
    assert full.recipe == "default" and full.lr is None and full.hidden is None
    assert q.width == 1 / 16 and q.epochs == 1


def test_paired_standard_error_and_verdicts(pt):
    labels = np.array([0, 1, 0, 1])
    a = np.eye(2)[[1, 1, 1, 1]]  # right on 2 of 4
    b = np.eye(2)[[0, 1, 0, 1]]  # right on 4 of 4
    # err(a) - err(b) = 50 points
    d, se = pt.paired_correct(pt.correct(a, labels), pt.correct(b, labels))
    assert d == pytest.approx(50.0)
    assert se == pytest.approx(100 * np.std([1, 0, 1, 0], ddof=1) / 2)
    assert pt.verdict(5.0, 1.0) == "supported"
    assert pt.verdict(-5.0, 1.0) == "contradicted"
    assert pt.verdict(1.0, 1.0).startswith("not resolved")


def test_evidence_averages_seeds_before_pairing(pt):
    labels = np.array([0, 0, 0, 0])
    right, wrong = np.eye(2)[[0, 0, 0, 0]], np.eye(2)[[1, 1, 1, 1]]
    half = np.eye(2)[[0, 0, 1, 1]]
    posts = {("A", "single"): right, ("A-seed2", "single"): wrong,   # A: 50 % error on average
             ("E", "single"): half, ("E-seed2", "single"): half,     # E: 50 %
             ("D", "multi-crop"): right[:2], ("D", "single"): half}
    ev = pt.Evidence(posts, labels, mc_idx=[1, 3])
    assert ev.err(["A", "A-seed2"]) == pytest.approx(50.0)
    assert ev.seed_errs(["A", "A-seed2"]) == [0.0, 100.0]
    d, se = ev.diff(["A", "A-seed2"], ["E", "E-seed2"])
    assert d == pytest.approx(0.0)
    # per-image seed averages: A is 0.5 right everywhere, E 1, 1, 0, 0 -> differences +-0.5
    assert se == pytest.approx(100 * np.std([0.5, 0.5, -0.5, -0.5], ddof=1) / 2)
    assert list(ev.labels_of("multi-crop")) == [0, 0] and ev.err("D", "multi-crop") == 0.0
    assert pt.seeds_note(ev, ["A", "A-seed2"]) == "A 50.0 % (seeds 0.0, 100.0)"


def test_train_command_matches_the_config(pt, tmp_path):
    st = pt.Settings.quick()
    for run in ("D-S32-48", "E-seed2"):
        cfg = pt.train_config(run, st, "folder", tmp_path, tmp_path / "runs", "cpu", False)
        cmd = pt.train_command(cfg, st)
        assert f"--model {pt.RUNS[run][0]}" in cmd and f"--limit {cfg.limit}" in cmd
        assert f"--seed {pt.RUNS[run][3]} --split-seed {st.split_seed}" in cmd
        from tinyvgg.cli import _config_from_args, build_parser
        args = build_parser().parse_args(cmd.split()[3:])
        again = _config_from_args(args)
        want, got = cfg.to_dict(), again.to_dict()
        for key in ("out", "progress", "log_every", "data_dir"):
            want.pop(key), got.pop(key)
        assert got == want
    assert "--scale 32,48" in pt.train_command(
        pt.train_config("D-S32-48", st, "folder", tmp_path, tmp_path, "cpu", False), st)


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


def _study_with_train_errors(errors, epochs=5):
    runs = {r: {"final_train_accuracy": 1 - e / 100} for r, e in errors.items()}
    return {"runs": runs, "settings": {"epochs": epochs},
            "dense_score_maps": {"27": [1, 1], "32": [1, 1], "37": [1, 1]}}


def test_likely_reason_follows_the_measured_training_errors(pt, rp):
    def study(train, val, epochs=5):
        runs = {r: {"final_train_accuracy": 1 - t / 100,
                    "protocols": {"single": {"top1_error": val[r]}}} for r, t in train.items()}
        return {"runs": runs, "settings": {"epochs": epochs},
                "dense_score_maps": {"27": [1, 1], "32": [1, 1], "37": [1, 1]}}

    train = {"A": 24.0, "B": 23.0, "D": 23.5, "E": 25.0}
    same = rp.likely_reason("depth", study(train, {"A": 23.0, "B": 21.8, "D": 22.1, "E": 23.7}))
    assert "rank exactly as these training errors" in same and "E 25.0 %" in same
    other = rp.likely_reason("depth", study(train, {"A": 21.0, "B": 21.8, "D": 22.1, "E": 23.7}))
    assert "do not rank" in other
    empty = study({}, {})
    assert "Q = 32: 1 x 1" in rp.likely_reason("dense+crop", empty)
    for key in pt.CLAIM_KEYS:
        assert rp.likely_reason(key, study({}, {}, epochs=1)).endswith(".")
    assert "1 epoch " in rp.likely_reason("5x5", study({}, {}, epochs=1))
    jitter = {"D": 23.0, "D-S32-48": 28.0}
    assert "costs fit" in rp.likely_reason("jitter", study(jitter, {"D": 22.0, "D-S32-48": 24.0}))
    jitter = {"D": 23.0, "D-S32-48": 20.0}
    assert "costs fit" not in rp.likely_reason("jitter", study(jitter, {"D": 22.0, "D-S32-48": 24.0}))


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


LESSON_CLAIMS = ("jitter", "multi-scale", "dense+crop", "fusion")  # what lesson 14 teaches


def test_the_readme_and_lesson_14_quote_the_committed_verdicts(rp):
    """The README's table of findings and lesson 14's are the committed study's, verbatim."""
    study = json.loads((EXPERIMENTS / "results" / "paper_tables.json").read_text())["study"]
    assert not study.get("quick")
    readme = (REPO / "README.md").read_text()
    assert rp.findings_table(study) in readme
    assert rp.convergence_line(study) in readme
    # the budget and time the README and lesson 14 state are the committed run's
    epochs, minutes = study["settings"]["epochs"], study["time"]["this_invocation_s"] / 60
    assert f"{epochs} epochs each of `train`'s default recipe, {minutes:.1f} minutes" in readme
    lesson = " ".join((REPO / "lessons" / "14_scales_and_test_protocols.py").read_text().split())
    assert f"trained {epochs} epochs each" in lesson
    quoted = [c for c in study["claims"] if c["key"] in LESSON_CLAIMS]
    assert len(quoted) == len(LESSON_CLAIMS)
    for c in quoted:
        assert " ".join(rp.finding_line(c).split()) in lesson, c["key"]


def test_a_saved_run_matches_its_config_whatever_the_spelling_of_the_data_folder(pt, tmp_path,
                                                                                monkeypatch):
    st = pt.Settings.quick()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = pt.train_config("B", st, "folder", tmp_path / "data", tmp_path / "runs", "cpu", False)
    saved = dict(cfg.to_dict(), data_dir="data", out="elsewhere", progress=True)
    assert pt._same_config(saved, cfg)
    assert not pt._same_config(dict(saved, data_dir="other"), cfg)
    assert not pt._same_config(dict(saved, epochs=cfg.epochs + 1), cfg)
    assert not pt._same_config(dict(saved, seed=cfg.seed + 1), cfg)


def test_bad_input_exits_2_and_never_overwrites_results(experiment, tmp_path, capsys):
    import paper_tables

    def status(*argv):
        try:
            return paper_tables.run(list(argv))
        except SystemExit as e:  # argparse's own errors
            return e.code

    bad = tmp_path / "damaged"
    bad.mkdir()
    (bad / "paper_tables.json").write_text('{"stu')
    assert status("--no-study", "--results", str(bad)) == 2
    assert (bad / "paper_tables.json").read_text() == '{"stu'  # kept as it was
    assert "not valid JSON" in capsys.readouterr().err
    assert status("--no-study", "--results", str(tmp_path / "empty")) == 2
    assert "there is none" in capsys.readouterr().err
    assert status("--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                  "--results", str(tmp_path / "r")) == 2
    assert "not found" in capsys.readouterr().err
    assert status("--epochs", "0") == 2 and status("--jobs", "0") == 2


def test_the_setting_describes_the_recipe_the_study_used(rp):
    report = json.loads((EXPERIMENTS / "results" / "paper_tables.json").read_text())
    study = report["study"]
    assert "`train`'s default recipe:** every model" in rp.render(report)
    study["settings"].update(recipe="paper", lr=0.05)
    text = rp.render(report)
    assert "`train --recipe paper` with learning rate 0.05:**" in text
    assert "one cycle to learning rate 0.1" not in text


def test_converged_means_every_validation_curve_has_flattened(rp):
    """The issue's test: a run counts as still learning when its validation error fell by more
    than STILL_FALLING points in the last epoch; a training error above the validation error
    (augmented batches) is reported but does not count."""
    def study(last_val_accs, train_errors):
        runs = {r: {"history": [{"val_acc": a0}, {"val_acc": a1}],
                    "final_train_accuracy": 1 - train_errors[r] / 100,
                    "protocols": {"single": {"top1_error": 100 * (1 - a1)}}}
                for r, (a0, a1) in last_val_accs.items()}
        return {"runs": runs, "settings": {"epochs": 10}}

    flat = study({"A": (0.800, 0.803), "B": (0.810, 0.808)}, {"A": 21.0, "B": 17.0})
    assert rp.not_converged(flat) is None
    lines = []
    rp.render_fit(flat, lines.append)
    text = "\n".join(lines)
    assert "have flattened" in text and "Not converged" not in text
    assert "1 of 2 runs (A) end with a training error at or above" in text
    rising = study({"A": (0.790, 0.800), "B": (0.810, 0.812)}, {"A": 15.0, "B": 17.0})
    assert rp.not_converged(rising) == ["A"]
    lines = []
    rp.render_fit(rising, lines.append)
    assert "**Not converged.** The validation error of 1 of 2 runs (A) still fell" in "\n".join(lines)
    assert "still learning" in rp.likely_reason("depth", rising)
    assert "have flattened" in rp.likely_reason("depth", flat)
    # the README's one-line summary says the same
    assert rp.convergence_line(flat).startswith("All 2 validation curves had flattened by the "
                                                "end of their 10 epochs: none fell")
    assert rp.convergence_line(rising).startswith("1 of the 2 validation curves had flattened "
                                                  "by the end of their 10 epochs; 1 (A) still fell")
