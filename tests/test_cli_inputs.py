"""Bad command-line input: a message naming what is wrong and what to do, exit status 2,
never a bare traceback or a silent wrong answer (each case below was found by trying
the command line as a new user would)."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from tinyvgg.cli import main
from tinyvgg.train import TrainConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 classes x 6 RGB PNGs of 32 x 32."""
    root = tmp_path_factory.mktemp("cli_inputs") / "train"
    r = np.random.default_rng(0)
    for k in range(2):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(6):
            img = r.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"class{k}" / f"{i}.png")
    return root


def train(folder, out, *extra):
    return main(["train", "--dataset", "folder", "--data-dir", str(folder), "--width", "0.0625",
                 "--hidden", "8", "--epochs", "1", "--batch-size", "4", "--no-progress",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
    (["--epochs", "-3", "--schedule", "constant"], "--epochs must be a whole number of at least 1"),
    (["--log-every", "0"], "--log-every must be a whole number of at least 1"),
    (["--hidden", "0"], "--hidden must be a whole number of units of at least 1"),
    (["--dropout", "1.0"], "--dropout must be a probability in [0, 1)"),
    (["--model", "vgg11_bn", "--no-batch-norm"], "--model vgg11_bn has BatchNorm and --no-batch-norm"),
])
def test_train_options_that_make_no_sense_exit_2_before_training(folder, tmp_path, capsys, extra,
                                                                 message):
    out = tmp_path / "run"
    assert train(folder, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "checkpoint.npz").exists()


def test_a_bn_model_name_is_a_batch_norm_config():
    """``--model vgg11_bn`` builds BatchNorm layers, so the settings that depend on BatchNorm
    (the default lr 0.1, the batch-of-1 check) must see it: the config says batch_norm."""
    cfg = TrainConfig(model="vgg11_bn")
    assert cfg.batch_norm and cfg.lr == 0.1
    assert TrainConfig(model="vgg11").lr == 0.01 and not TrainConfig(model="vgg11").batch_norm
    assert TrainConfig(model="D-bn").batch_norm


def test_out_that_is_a_file_and_paths_through_a_file_exit_2(folder, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert train(folder, afile) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert train(folder, afile / "sub") == 2          # an OSError from mkdir: a message, not a traceback
    err = capsys.readouterr().err
    assert "check the paths given" in err and "Traceback" not in err
    assert train(afile, tmp_path / "r") == 2           # --data-dir names a file
    assert "not a directory" in capsys.readouterr().err
    assert afile.read_text() == "not a folder"         # nothing written over it


def test_a_single_class_folder_is_refused(tmp_path, capsys):
    one = tmp_path / "one"
    (one / "cats").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(one / "cats" / f"{i}.png")
    assert train(one, tmp_path / "r", "--val-size", "1") == 2
    assert "a classifier needs at least 2" in capsys.readouterr().err


def test_predict_top_must_be_positive(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "ck.npz"), str(tmp_path / "x.png"), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err


def test_convert_refuses_an_output_of_the_same_format(tmp_path, capsys):
    """a.npz -> b.npz would write a PyTorch archive under a tinyvgg name."""
    src = tmp_path / "a.npz"
    src.write_bytes(b"")
    assert main(["convert", str(src), str(tmp_path / "b.npz")]) == 2
    assert "ending in .pth or .pt" in capsys.readouterr().err
    assert not (tmp_path / "b.npz").exists()
    assert main(["convert", str(tmp_path / "w.pth"), str(tmp_path / "w.pth2")]) == 2
    assert "ending in .npz" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_device_gpu_without_cupy_is_a_message(folder, tmp_path, capsys):
    assert train(folder, tmp_path / "r", "--device", "gpu") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:")


def test_resume_names_the_options_it_ignores_and_refuses_fewer_epochs(folder, tmp_path, capsys):
    """--resume continues a run with its own settings: options that ask for others are
    named in a note (they used to be dropped without a word), and --epochs below the
    epochs already trained is an error that leaves the run as it was."""
    out = tmp_path / "run"
    assert train(folder, out, "--epochs", "2") == 0
    config = (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert "already trained 2 epochs" in capsys.readouterr().err
    assert (out / "config.json").read_text() == config
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress", "--width", "0.5",
                 "--lr", "0.5", "--model", "vgg16"]) == 0
    err = capsys.readouterr().err
    assert "ignored: " in err
    for flag in ("--width 0.5 (kept: 0.0625)", "--lr 0.5", "--model vgg16 (kept: vgg11)"):
        assert flag in err
    assert "--hidden" not in err and "--epochs" not in err


def test_init_from_names_the_architecture_options_it_overrides(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(folder, out) == 0
    capsys.readouterr()
    assert train(folder, tmp_path / "tuned", "--init-from", str(out / "checkpoint.npz"),
                 "--width", "0.5", "--model", "vgg13") == 0
    err = capsys.readouterr().err
    assert "--init-from" in err and "--width 0.5 (kept: 0.0625)" in err and "--model vgg13" in err


def test_a_changed_folder_is_named_when_a_run_is_resumed(folder, tmp_path, capsys):
    """The validation images are drawn from the folder by a seed: images added after
    training draw other ones, some of which the run trained on. Resuming says so."""
    import shutil

    from tinyvgg.data import load_dataset

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    fp = load_dataset("folder", str(data)).fingerprint()
    assert load_dataset("folder", str(moved)).fingerprint() == fp   # where it lives does not count
    out = tmp_path / "run"
    assert train(data, out) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "has changed" not in capsys.readouterr().err
    shutil.copy(data / "class0" / "0.png", data / "class0" / "new.png")
    assert load_dataset("folder", str(data)).fingerprint() != fp
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "has changed since the run was trained (12 training images then, 13 now" in err
