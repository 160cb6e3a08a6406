"""``TrainConfig.split_seed`` / ``--split-seed``: the seed of the validation hold-out
and the --limit sample, apart from ``seed`` (initialisation, batch order, ...).
Runs that differ only in ``seed`` and share a ``split_seed`` hold out the same
images; ``split_seed=None`` is the split of ``seed``, as before the option existed;
``evaluate --split val`` rebuilds the hold-out from the saved split seed."""

from types import SimpleNamespace

import numpy as np
import pytest

from tinyvgg import evaluate_protocols as ep
from tinyvgg.cli import _config_from_args, _rebuild_argv, build_parser, main
from tinyvgg.data import load_image_folder, train_val_split
from tinyvgg.train import TrainConfig, prepare_data
from tests.test_labels_and_sampling import (  # noqa: F401  (seen_by_evaluate: a fixture)
    cfg_for, save_checkpoint, seen_by_evaluate, write_classes)

PER_CLASS = {"cat": 12, "dog": 12, "fox": 12, "owl": 12}   # 48 images of 32 x 32
VAL = 8                                                      # 2 per class held out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One small class folder (no train/test sub-folders) shared by the module's tests."""
    return write_classes(tmp_path_factory.mktemp("split_seed") / "data", PER_CLASS)


def split_of(data, tmp_path, **kw):
    d = prepare_data(cfg_for(data, tmp_path, val_size=VAL, **kw))
    return d["train"], d["val"]


def assert_same(a, b):
    """Same images, in the same order, with the same labels and paths."""
    assert a.paths == b.paths
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


# -- 1. one split seed, one hold-out, whatever the seed ------------------------------------

def test_different_seeds_with_one_split_seed_share_the_validation_and_training_sets(folder, tmp_path):
    tr1, va1 = split_of(folder, tmp_path, seed=1, split_seed=7)
    tr2, va2 = split_of(folder, tmp_path, seed=2, split_seed=7)
    assert len(va1) == VAL and len(tr1) == 48 - VAL
    assert_same(va1, va2)
    assert_same(tr1, tr2)
    assert not set(va1.paths) & set(tr1.paths)
    # the split is still stratified: 2 of each class's 12 held out
    assert np.bincount(va1.labels).tolist() == [2, 2, 2, 2]
    # ... and it is the split seed that decides it: the same two seeds without a
    # split seed draw different hold-outs, and another split seed draws another one
    _, va1_own = split_of(folder, tmp_path, seed=1)
    _, va2_own = split_of(folder, tmp_path, seed=2)
    assert va1_own.paths != va2_own.paths
    _, va_other = split_of(folder, tmp_path, seed=1, split_seed=8)
    assert va_other.paths != va1.paths


def test_split_seed_also_draws_the_limit_sample(folder, tmp_path):
    tr1, va1 = split_of(folder, tmp_path, seed=1, split_seed=5, limit=24)
    tr2, va2 = split_of(folder, tmp_path, seed=3, split_seed=5, limit=24)
    assert len(tr1) + len(va1) == 24
    assert_same(tr1, tr2)
    assert_same(va1, va2)
    tr3, va3 = split_of(folder, tmp_path, seed=1, split_seed=6, limit=24)
    assert set(tr3.paths) | set(va3.paths) != set(tr1.paths) | set(va1.paths)


# -- 2. no split seed: the split of ``seed`` (as before the option) -------------------------------

@pytest.mark.parametrize("sampling", ["stratified", "shuffle"])
def test_no_split_seed_is_the_split_of_seed(folder, tmp_path, sampling):
    assert TrainConfig().split_seed is None
    full = load_image_folder(folder, size=32)
    for seed in (0, 3):
        tr, va = split_of(folder, tmp_path, seed=seed, sampling=sampling)
        old_tr, old_va = train_val_split(full, VAL, seed, sampling != "shuffle")
        assert_same(va, old_va)
        assert_same(tr, old_tr)
        tr_s, va_s = split_of(folder, tmp_path, seed=9, split_seed=seed, sampling=sampling)
        assert_same(va, va_s)
        assert_same(tr, tr_s)


def test_split_seed_survives_the_saved_config():
    cfg = TrainConfig(seed=1, split_seed=4)
    assert cfg.to_dict()["split_seed"] == 4
    assert TrainConfig.from_dict(cfg.to_dict()).split_seed == 4
    old = TrainConfig(seed=1).to_dict()
    del old["split_seed"]                                    # a config saved before the option
    assert TrainConfig.from_dict(old).split_seed is None


# -- 3. a bad split seed is named before anything is trained --------------------------------------

@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", float("nan"), float("inf")])
def test_bad_split_seed_is_a_value_error_naming_the_option(folder, tmp_path, bad):
    with pytest.raises(ValueError, match="--split-seed must be a whole number of at least 0"):
        prepare_data(cfg_for(folder, tmp_path, val_size=VAL, split_seed=bad))


def test_split_seed_zero_is_allowed(folder, tmp_path):
    _, va0 = split_of(folder, tmp_path, seed=5, split_seed=0)
    _, va_seed0 = split_of(folder, tmp_path, seed=0)
    assert_same(va0, va_seed0)


def test_cli_train_with_a_negative_split_seed_fails_before_the_first_step(folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--val-size", str(VAL),
               "--width", "0.0625", "--hidden", "16", "--epochs", "1", "--split-seed", "-1",
               "--out", str(out), "--no-progress"])
    assert rc == 2
    assert "--split-seed must be a whole number of at least 0, got -1" in capsys.readouterr().err
    assert not out.exists()


# -- 4. the command line ------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["train", "doctor"])
def test_cli_parses_split_seed_into_the_config(command):
    parser = build_parser()
    cfg = _config_from_args(parser.parse_args([command, "--seed", "5", "--split-seed", "3"]))
    assert (cfg.seed, cfg.split_seed) == (5, 3)
    default = _config_from_args(parser.parse_args([command, "--seed", "5"]))
    assert default.split_seed is None and default.seed == 5
    paper = _config_from_args(parser.parse_args([command, "--recipe", "paper", "--split-seed", "2"]))
    assert paper.split_seed == 2


def test_cli_split_seed_has_help_and_must_be_an_integer(capsys):
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    action = next(a for a in train._actions if a.dest == "split_seed")
    assert action.default is None and "--split-seed" in action.option_strings
    assert "validation" in action.help
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["train", "--split-seed", "x"])
    assert e.value.code == 2


def test_doctor_fix_command_line_keeps_the_split_seed():
    args = build_parser().parse_args(["doctor", "--dataset", "cifar10", "--split-seed", "3"])
    assert "--split-seed 3" in _rebuild_argv(args, ["--lr", "0.01"])
    args = build_parser().parse_args(["doctor", "--dataset", "cifar10"])
    assert "--split-seed" not in _rebuild_argv(args, ["--lr", "0.01"])


# -- 5. evaluate --split val rebuilds the hold-out of the split seed -------------------------------

def _eval_val(folder, train_config):
    model = SimpleNamespace(train_scale=None, input_size=32)
    ds, split, desc = ep.load_eval_dataset("folder", str(folder), "val", [model], train_config=train_config)
    assert split == "val"
    return ds, desc


def test_load_eval_dataset_val_is_the_split_seeds_hold_out(folder, tmp_path):
    cfg = cfg_for(folder, tmp_path, val_size=VAL, seed=1, split_seed=7)
    _, va = split_of(folder, tmp_path, seed=1, split_seed=7)
    ds, desc = _eval_val(folder, cfg.to_dict())
    assert_same(ds, va)
    assert "seed 7" in desc
    # not the hold-out of ``seed``
    _, va_seed = split_of(folder, tmp_path, seed=1)
    assert ds.paths != va_seed.paths
    # a config saved before the option (or with split_seed None) falls back to seed
    old = cfg.to_dict()
    del old["split_seed"]
    assert_same(_eval_val(folder, old)[0], va_seed)
    none = {**cfg.to_dict(), "split_seed": None}
    assert_same(_eval_val(folder, none)[0], va_seed)


def test_cli_evaluate_split_val_uses_the_checkpoints_split_seed(folder, tmp_path, seen_by_evaluate):
    ck = save_checkpoint(tmp_path / "ck.npz", folder, list(PER_CLASS), val_size=VAL, seed=2,
                         split_seed=7)
    assert main(["evaluate", ck, "--split", "val"]) == 0
    _, va = split_of(folder, tmp_path, seed=1, split_seed=7)
    assert seen_by_evaluate["ds"].paths == va.paths
    np.testing.assert_array_equal(seen_by_evaluate["ds"].labels, va.labels)
