"""Issue #15 (labels and evaluation data, the doctor's sample): class names, not
positions; whole evaluation folders; settings checked before the first step; one
stratified sampling function for every subset."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyvgg import checkpoint
from tinyvgg import data as tvdata
from tinyvgg import evaluate_protocols as ep
from tinyvgg.cli import build_parser, main
from tinyvgg.data import Dataset, load_image_folder, train_val_split
from tinyvgg.doctor import run_doctor
from tinyvgg.models import vgg
from tinyvgg.train import TrainConfig, prepare_data

COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "fox": (40, 40, 220), "owl": (200, 200, 40)}


def write_classes(root, per_class, seed=0, size=32):
    """``root/<name>/NNN.png`` for ``per_class = {name: count}``; the colour says the class."""
    r = np.random.default_rng(seed)
    for name, n in per_class.items():
        d = Path(root) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = np.clip(np.array(COLOURS[name]) + r.normal(0, 30, (size, size, 3)), 0, 255)
            Image.fromarray(im.astype(np.uint8)).save(d / f"{i:03d}.png")
    return Path(root)


def cfg_for(data_dir, tmp_path, **kw):
    base = dict(model="vgg11", dataset="folder", data_dir=str(data_dir), epochs=1, batch_size=8,
                width=1 / 16, hidden=16, input_size=32, val_size=0.25, seed=0, progress=False,
                out=str(tmp_path / "run"), eval_batch_size=32, log_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def save_checkpoint(path, data_dir, classes, **kw):
    model = vgg("vgg11", num_classes=len(classes), input_size=32, width=1 / 16, hidden=16)
    cfg = cfg_for(data_dir, Path(path).parent, **kw)
    from tinyvgg.optim import SGD
    checkpoint.save(path, model, SGD(model, 0.01), epoch=1, step_in_epoch=0, global_step=1, history=[],
                    schedule={}, train_config=cfg.to_dict(), classes=list(classes),
                    mean=[128.0] * 3, std=[64.0] * 3, input_size=32, reason="epoch")
    return str(path)


@pytest.fixture
def seen_by_evaluate(monkeypatch):
    """Run ``evaluate`` in-process and capture the dataset it scores."""
    seen = {}

    def fake(models, dataset, protocol, **kw):
        seen["ds"] = dataset
        n = len(dataset)
        return {"top1": 1.0, "top5": 1.0, "top1_error": 0.0, "top5_error": 0.0, "n": n,
                "protocol": protocol, "scales": [32], "time_s": 0.0,
                "predictions": np.asarray(dataset.labels), "labels": np.asarray(dataset.labels)}

    monkeypatch.setattr(ep, "evaluate_protocol", fake)
    return seen


# -- one stratified sampling function ---------------------------------------------------

def test_stratified_sample_keeps_the_class_proportions_and_is_seeded():
    labels = np.repeat([0, 1, 2, 3], [50, 30, 15, 5])
    idx = tvdata.stratified_sample(labels, 20, seed=1)
    assert len(idx) == 20 and list(idx) == sorted(set(idx))
    assert np.bincount(labels[idx]).tolist() == [10, 6, 3, 1]
    np.testing.assert_array_equal(idx, tvdata.stratified_sample(labels, 20, seed=1))
    assert list(idx) != list(tvdata.stratified_sample(labels, 20, seed=2))
    # fewer places than shares: every class still gets one when n >= K
    assert sorted(set(labels[tvdata.stratified_sample(labels, 4, seed=0)])) == [0, 1, 2, 3]
    assert list(tvdata.stratified_sample(labels, 500)) == list(range(100))
    with pytest.raises(ValueError, match="non-negative integer"):
        tvdata.stratified_sample(labels, -1)


def test_validation_hold_out_is_stratified():
    ds = Dataset(np.zeros((40, 2, 2, 1), np.uint8), np.repeat([0, 1, 2, 3], 10), list("abcd"), "x")
    tr, va = train_val_split(ds, 8, seed=5)
    assert np.bincount(va.labels).tolist() == [2, 2, 2, 2]
    assert np.bincount(tr.labels).tolist() == [8, 8, 8, 8]


def test_limit_is_a_stratified_sample_of_class_folders(tmp_path):
    data = write_classes(tmp_path / "data", {"cat": 16, "dog": 16, "fox": 16, "owl": 16})
    d = prepare_data(cfg_for(data, tmp_path, limit=20, val_size=4))
    assert np.bincount(d["train"].labels).tolist() == [4, 4, 4, 4]
    assert np.bincount(d["val"].labels).tolist() == [1, 1, 1, 1]


def test_evaluate_limit_is_a_stratified_sample(tmp_path, seen_by_evaluate, capsys):
    data = write_classes(tmp_path / "test", {"cat": 10, "dog": 10, "fox": 10})
    ck = save_checkpoint(tmp_path / "ck.npz", tmp_path / "train", ["cat", "dog", "fox"])
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(data), "--limit", "6",
                 "--json"]) == 0
    assert np.bincount(seen_by_evaluate["ds"].labels).tolist() == [2, 2, 2]
    assert "a seeded sample of 6 of its 30 images" in json.loads(capsys.readouterr().out)["images"]


# -- item 1: labels by class name ---------------------------------------------------------

def test_final_test_folder_without_a_class_keeps_labels_by_name(tmp_path):
    root = tmp_path / "data"
    write_classes(root / "train", {"cat": 8, "dog": 8, "fox": 8})
    write_classes(root / "test", {"cat": 3, "fox": 3})
    d = prepare_data(cfg_for(root, tmp_path))
    assert d["classes"] == ["cat", "dog", "fox"] and d["test"].classes == ["cat", "dog", "fox"]
    fox = [p for p in d["test"].paths if "/fox/" in p]
    labels = dict(zip(d["test"].paths, d["test"].labels))
    assert len(fox) == 3 and all(labels[p] == 2 for p in fox)


def test_final_test_folder_with_an_unknown_class_is_an_error(tmp_path):
    root = tmp_path / "data"
    write_classes(root / "train", {"cat": 8, "dog": 8})
    write_classes(root / "test", {"cat": 2, "owl": 2})
    with pytest.raises(ValueError, match="'owl'"):
        prepare_data(cfg_for(root, tmp_path))


def test_evaluate_maps_labels_to_the_checkpoint_classes_by_name(tmp_path, seen_by_evaluate,
                                                                 capsys):
    test = write_classes(tmp_path / "test", {"cat": 3, "fox": 4})
    ck = save_checkpoint(tmp_path / "ck.npz", tmp_path / "train", ["cat", "dog", "fox"])
    plots = tmp_path / "plots"
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(test), "--json",
                 "--plots", str(plots)]) == 0
    ds = seen_by_evaluate["ds"]
    assert ds.classes == ["cat", "dog", "fox"]
    assert np.bincount(ds.labels, minlength=3).tolist() == [3, 0, 4]   # fox is 2, not 1
    assert (plots / "confusion_matrix.png").is_file()
    # a class the model does not know: exit 2, naming it
    write_classes(test, {"owl": 2})
    capsys.readouterr()
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(test)]) == 2
    err = capsys.readouterr().err
    assert "'owl'" in err and str(test) in err


def test_align_classes():
    ds = Dataset(np.zeros((3, 2, 2, 1), np.uint8), [0, 1, 1], ["cat", "fox"], "x")
    out = tvdata.align_classes(ds, ["cat", "dog", "fox"])
    assert out.labels.tolist() == [0, 2, 2] and out.classes == ["cat", "dog", "fox"]
    assert tvdata.align_classes(out, ["cat", "dog", "fox"]) is out
    with pytest.raises(ValueError, match="'fox'"):
        tvdata.align_classes(ds, ["cat", "dog"], where="somewhere")


# -- item 2: a folder given to evaluate is evaluated whole ------------------------------------

def test_evaluate_scores_every_image_of_a_folder_without_splits(tmp_path, seen_by_evaluate,
                                                                capsys):
    train = write_classes(tmp_path / "train", {"cat": 8, "dog": 8})
    test = write_classes(tmp_path / "elsewhere", {"cat": 10, "dog": 10}, seed=1)
    ck = save_checkpoint(tmp_path / "ck.npz", train, ["cat", "dog"])
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(test), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 20 and out["split"] == "all" and str(test) in out["images"]
    # --split val: the training run's held-out part of that folder (0.25 of 20)
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(test), "--json",
                 "--split", "val"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 5 and out["split"] == "val" and "held out" in out["images"]
    # the training folder itself (no test split): its held-out images, and the text says so
    assert main(["evaluate", ck]) == 0
    text = capsys.readouterr().out
    assert "evaluated:   4 images" in text and "trained on this folder" in text


def test_evaluate_split_has_help_and_choices(capsys):
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions[0].choices["evaluate"]._actions
               if a.dest == "split")
    assert sub.choices == ["test", "val", "train", "all"] and "held out" in sub.help
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["evaluate", "ck.npz", "--split", "tset"])
    assert e.value.code == 2


# -- item 3: settings checked against the data before the first step ----------------------------

def test_empty_validation_split_fails_before_training(tmp_path, capsys):
    data = write_classes(tmp_path / "data", {"cat": 2, "dog": 2})
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data-dir", str(data), "--width", "0.0625",
               "--hidden", "16", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--val-size 0.1 holds out 0 of the 4 images" in err
    assert not out.exists()  # not a step was taken, nothing written


@pytest.mark.parametrize("kw, words", [
    (dict(val_size=8), "--val-size 8 holds out 8 of the 8 images, leaving 0"),
    (dict(val_size=6, batch_norm=True), "leaving 2"),  # fine: no error
    (dict(val_size=7, batch_norm=True), "BatchNorm needs batches of 2"),
    (dict(val_size=2, limit=2), "--limit 2 of 8"),
    (dict(val_size=0.0), "--val-size must be a fraction"),
    (dict(val_size=1.5), "--val-size must be a fraction"),
    (dict(batch_size=0), "--batch-size must be a whole number of at least 1"),
    (dict(batch_size=1, batch_norm=True), "--batch-size 1 with --batch-norm"),
    (dict(eval_batch_size=0), "--eval-batch-size"),
    (dict(input_size=48), "--input-size must be a multiple of 32"),
    (dict(scale=24), "--scale 24 is smaller than the 32 x 32 crop"),
    (dict(scale=(40, 36)), "--scale must be S or S_MIN,S_MAX"),
    (dict(crop_padding=-1), "--crop-padding"),
    (dict(limit=0), "--limit must be a positive number"),
    (dict(limit="5"), "--limit must be a positive number"),
    (dict(batch_size="64"), "--batch-size must be a whole number of at least 1"),
    (dict(val_size="0.1"), "--val-size must be a fraction"),
    (dict(val_size=float("nan")), "--val-size must be a fraction"),
])
def test_bad_settings_are_named_before_the_first_step(tmp_path, kw, words):
    data = write_classes(tmp_path / "data", {"cat": 4, "dog": 4})
    cfg = cfg_for(data, tmp_path, **kw)
    if words == "leaving 2":
        d = prepare_data(cfg)
        assert len(d["train"]) == 2
        return
    with pytest.raises(ValueError) as e:
        prepare_data(cfg)
    assert words in str(e.value)


def test_existing_run_folder_is_untouched_by_a_bad_setting(tmp_path, capsys):
    data = write_classes(tmp_path / "data", {"cat": 2, "dog": 2})
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("earlier run")
    assert main(["train", "--dataset", "folder", "--data-dir", str(data), "--out", str(out),
                 "--no-progress"]) == 2  # --val-size 0.1 of 4 images: none
    assert (out / "config.json").read_text() == "earlier run"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_empty_or_unreadable_class_folder_is_an_error(tmp_path):
    data = write_classes(tmp_path / "data", {"cat": 2, "dog": 2})
    (data / "emu").mkdir()
    (data / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"1 of the 3 class folders hold no .*: emu"):
        load_image_folder(data, cache=False)
    (data / "emu" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"class folder\(s\) emu could be read"):
        load_image_folder(data, cache=False)


# -- item 11: the doctor's short run trains on a class-balanced sample ----------------------------

def test_doctor_short_run_on_class_folders_is_balanced_and_healthy(tmp_path, monkeypatch, capsys):
    """Class folders load class by class; a prefix of 48 of the 144 training images
    would be 36 cats and 12 dogs, and the doctor would call the run overfitting."""
    monkeypatch.setattr("tinyvgg.plots.plot_history", lambda history, path: path)
    data = write_classes(tmp_path / "data", {"cat": 48, "dog": 48, "fox": 48, "owl": 48})
    cfg = cfg_for(data, tmp_path, batch_size=16, lr=0.02, batch_norm=True, dropout=0.0,
                  init="glorot", schedule="constant")
    doc = run_doctor(cfg, steps=3, verbose=False, write_files=False, eval_images=64)
    assert doc.kinds() == set(), doc.report(markdown=False)
    train = doc.trainer.data["train"]
    assert len(train) == 48 and np.bincount(train.labels).tolist() == [12, 12, 12, 12]
    assert "trained on 48 images of 4 classes: a seeded sample of 48 of the 144 training " \
           "images" in doc.summary()


# -- runs saved before stratified sampling, and resumed runs -------------------------------------

def test_old_checkpoints_rebuild_their_shuffled_hold_out(tmp_path, seen_by_evaluate):
    train = write_classes(tmp_path / "train", {"cat": 10, "dog": 10})
    ck = save_checkpoint(tmp_path / "ck.npz", train, ["cat", "dog"], limit=12)
    state = checkpoint.load(ck)
    del state.meta["train_config"]["sampling"]          # as saved before the change
    checkpoint.save(ck, state.model, None, **state.meta)
    assert main(["evaluate", ck, "--split", "val"]) == 0
    full = load_image_folder(train, size=32)
    _, old = train_val_split(full, 0.25, 0, stratify=False, limit=12)
    assert seen_by_evaluate["ds"].paths == old.paths
    # what a resumed run rebuilds its config with (resume_config goes through from_dict)
    assert TrainConfig.from_dict(checkpoint.load(ck).meta["train_config"]).sampling == "shuffle"


def test_resume_labels_by_the_checkpoint_classes(tmp_path):
    from tinyvgg.train import train
    data = write_classes(tmp_path / "data", {"cat": 4, "dog": 4})
    ck = save_checkpoint(tmp_path / "ck.npz", data, ["cat", "dog"])
    write_classes(data, {"fox": 4})                      # a class added after training
    with pytest.raises(ValueError, match="'fox'"):
        train(cfg_for(data, tmp_path), resume=ck)
