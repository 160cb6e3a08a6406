"""The training recipes: the default, the paper's, the command line's choice between
them, old configs keeping their recipe, and flip test-time augmentation."""

import numpy as np
import pytest

from tinyvgg import backend
from tinyvgg.cli import _config_from_args, build_parser
from tinyvgg.data import DataLoader, Dataset, EvalTransform
from tinyvgg.evaluate import evaluate, predict_proba
from tinyvgg.models import vgg
from tinyvgg.optim import OneCycleLR
from tinyvgg.train import PAPER_RECIPE, TrainConfig


def config_of(*argv):
    return _config_from_args(build_parser().parse_args(["train", *argv]))


def test_default_recipe_fits_the_budget():
    cfg = config_of("--batch-norm", "--epochs", "15")
    assert (cfg.recipe, cfg.schedule, cfg.batch_size, cfg.lr) == ("default", "onecycle", 128, 0.1)
    assert cfg.nesterov and cfg.label_smoothing == 0.0 and cfg.dropout == 0.0
    assert not cfg.decay_bias_and_norm and cfg.tta_flip
    assert config_of("--no-batch-norm").lr == 0.01  # a plain deep VGG keeps the paper's rate
    assert cfg == TrainConfig(batch_norm=True, epochs=15)  # the command line and the API agree


def test_paper_recipe_is_one_option_away_and_explicit_options_win():
    cfg = config_of("--recipe", "paper", "--batch-norm")
    for key, value in PAPER_RECIPE.items():
        assert getattr(cfg, key) == value, key
    assert (cfg.batch_size, cfg.lr, cfg.schedule, cfg.dropout, cfg.nesterov) == (256, 0.01, "plateau", 0.5, False)
    assert config_of("--no-tta-flip").tta_flip is False
    cfg = config_of("--recipe", "paper", "--lr", "0.02", "--dropout", "0.2", "--nesterov", "--tta-flip")
    assert (cfg.lr, cfg.dropout, cfg.nesterov, cfg.tta_flip, cfg.schedule) == (0.02, 0.2, True, True, "plateau")
    assert config_of("--decay-bias-and-norm").decay_bias_and_norm
    assert not config_of("--recipe", "paper", "--no-nesterov").nesterov


def test_unknown_recipe_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of default, paper"):
        TrainConfig.from_recipe("fast")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--recipe", "fast"])


def test_a_config_saved_before_recipes_keeps_its_recipe():
    """An old run's train_config has no label_smoothing etc.: it resumes as it trained."""
    old = TrainConfig.from_recipe("paper", batch_size=64).to_dict()
    for key in ("label_smoothing", "decay_bias_and_norm", "tta_flip", "recipe", "pct_start", "sampling"):
        del old[key]
    cfg = TrainConfig.from_dict(old)
    assert cfg.label_smoothing == 0.0 and cfg.decay_bias_and_norm and not cfg.tta_flip
    assert cfg.schedule == "plateau" and cfg.lr == 0.01 and not cfg.nesterov and cfg.sampling == "shuffle"
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()  # a new config round-trips


def test_trainer_builds_the_recipe(tmp_path):
    from tinyvgg.train import Trainer
    from tests.test_doctor import make_data

    cfg = TrainConfig(model="vgg11", dataset="folder", epochs=2, batch_size=16, width=1 / 16, hidden=16,
                      batch_norm=True, out=str(tmp_path / "run"), progress=False)
    t = Trainer(cfg, data=make_data()).setup()
    assert t.loss_fn.label_smoothing == 0.0
    assert Trainer(TrainConfig(**{**cfg.to_dict(), "label_smoothing": 0.1}), data=make_data()).setup() \
        .loss_fn.label_smoothing == 0.1
    assert t.optimizer.nesterov and not t.optimizer.decay_bias_and_norm
    assert isinstance(t.schedule, OneCycleLR) and t.schedule.total_steps == 2 * len(t.train_loader)


def test_flip_tta_averages_the_posteriors_of_image_and_mirror():
    backend.seed(0)
    model = vgg("vgg11", num_classes=3, input_size=32, width=1 / 16, hidden=16, batch_norm=True)
    for name, p, _ in model.named_parameters():  # a random init scores near 1/K: spread the logits
        p[...] = np.random.default_rng(len(name)).standard_normal(p.shape).astype(p.dtype) * 0.3
    r = np.random.default_rng(0)
    images = r.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = r.integers(0, 3, 10)
    tf = EvalTransform(32, [120.0] * 3, [60.0] * 3)
    loader = DataLoader(Dataset(images, labels, ["a", "b", "c"], "random"), 4, tf, shuffle=False)
    x = tf(list(images))
    p = 0.5 * (predict_proba(model, x) + predict_proba(model, x[:, :, :, ::-1].copy()))
    res = evaluate(model, loader, flip=True, return_predictions=True)
    np.testing.assert_array_equal(res["predictions"], p.argmax(axis=1))
    assert res["top1"] == pytest.approx(np.mean(p.argmax(axis=1) == labels))
    assert res["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(10), labels])), rel=1e-5)
    plain = evaluate(model, loader)
    assert plain["loss"] != pytest.approx(res["loss"])  # the mirror image changed something


def _random_png_folder(root, seed, classes=2, per_class=8):
    """``root/c{k}/{i}.png``: random 32x32 RGB images, ``per_class`` in each of ``classes`` folders."""
    from PIL import Image
    r = np.random.default_rng(seed)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(r.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"c{k}" / f"{i}.png")


def test_resume_with_a_new_length_says_the_schedule_is_redrawn(tmp_path, capsys):
    from tinyvgg.cli import main

    _random_png_folder(tmp_path / "data", seed=0)
    run = str(tmp_path / "run")
    common = ["--no-progress", "--out", run]
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
                 "--batch-size", "4", "--width", "0.0625", "--hidden", "16", "--batch-norm", "--val-size", "4",
                 *common]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", run, "--epochs", "2", *common]) == 0
    err = capsys.readouterr().err
    assert "the onecycle schedule is redrawn over 2 epochs" in err and "planned for 1" in err


def test_demo_command_runs_its_settings_on_a_few_images(tmp_path, monkeypatch, capsys):
    """``make demo``'s command, end to end, on 600 Fashion-MNIST images for one epoch."""
    from pathlib import Path

    from tinyvgg import cli
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    monkeypatch.setattr(cli, "DEMO", dict(cli.DEMO, limit=600, val_size=100, progress=False, width=1 / 16))
    assert cli.main(["demo", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "recipe: default (batch 128, onecycle to lr 0.1, Nesterov momentum 0.9" in out
    assert "flip TTA on" in out and "test accuracy:" in out
    assert (tmp_path / "demo" / "metrics.json").exists()


def test_doctor_probe_keeps_the_one_cycle_warm_up(tmp_path, capsys):
    """The doctor probes at a constant rate; under the default one cycle it first warms up
    as the real run does (a cold start at the peak rate killed ReLUs no real run kills)."""
    from tinyvgg.cli import main

    _random_png_folder(tmp_path / "data", seed=1)
    common = ["doctor", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--width", "0.0625",
              "--hidden", "16", "--batch-norm", "--batch-size", "4", "--val-size", "4", "--steps", "2",
              "--out", str(tmp_path / "doc")]
    assert main(common) == 0
    assert "constant lr 0.1 after 0.15 epochs of warm-up" in capsys.readouterr().out
    assert main(common + ["--schedule", "cosine"]) == 0  # other schedules: constant, no warm-up added
    assert "constant lr 0.1, dropout" in capsys.readouterr().out
