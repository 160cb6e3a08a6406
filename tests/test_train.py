"""Training end to end: overfitting, exact resume, divergence, the run folder, the CLI."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinyvgg import backend, checkpoint
from tinyvgg.cli import main
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.optim import SGD
from tinyvgg.train import TrainConfig, TrainingDiverged, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_narrow_vgg_overfits_64_images():
    backend.seed(0)
    model = vgg("vgg11", num_classes=10, input_size=32, width=1 / 16, hidden=64, dropout=0.0,
                batch_norm=True, init="glorot")
    r = np.random.default_rng(0)
    x = r.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = r.integers(0, 10, 64)
    opt = SGD(model, lr=0.05, momentum=0.9, weight_decay=0.0)
    loss = SoftmaxCrossEntropy()
    for _ in range(60):
        loss.forward(model.forward(x, train=True), y)
        model.backward(loss.backward())
        opt.step()
    acc = (model.forward(x, train=False).argmax(axis=1) == y).mean()
    assert acc == 1.0, f"training accuracy {acc}"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """4 classes x 16 RGB PNGs of 32x32 whose colour says the class."""
    root = tmp_path_factory.mktemp("tiny") / "train"
    r = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (200, 200, 40)]
    for k, c in enumerate(colours):
        d = root / f"class{k}"
        d.mkdir(parents=True)
        for i in range(16):
            img = np.clip(np.array(c) + r.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def tiny_config(folder, out, **kw):
    base = dict(model="vgg11", dataset="folder", data_dir=str(folder), epochs=2, batch_size=16,
                lr=0.02, width=1 / 16, hidden=16, batch_norm=True, dropout=0.5, schedule="cosine",
                val_size=0.25, seed=3, out=str(out), progress=False, eval_batch_size=32)
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    return checkpoint.load(path).model.state_dict()


def test_run_folder_has_history_curves_checkpoint_and_metrics(tiny_folder, tmp_path, capsys):
    metrics = train(tiny_config(tiny_folder, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ["config.json", "history.json", "history.csv", "curves.png", "checkpoint.npz", "metrics.json"]:
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "time_s"} <= set(history[0])
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    out = capsys.readouterr().out
    assert f"test accuracy: {metrics['test_accuracy']:.4f}" in out


def test_resume_after_an_epoch_ends_with_the_same_weights(tiny_folder, tmp_path):
    # The plateau schedule does not depend on the total number of epochs, so a run
    # of 1 epoch extended to 3 must take exactly the steps of a 3-epoch run.
    train(tiny_config(tiny_folder, tmp_path / "full", epochs=3, schedule="plateau"))
    train(tiny_config(tiny_folder, tmp_path / "part", epochs=1, schedule="plateau"))
    train(tiny_config(tiny_folder, tmp_path / "part", epochs=3, schedule="plateau"), resume=tmp_path / "part")
    a, b = weights(tmp_path / "full" / "checkpoint.npz"), weights(tmp_path / "part" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class InterruptAt:
    """A hook that sends this process SIGINT (Ctrl-C) after a given step."""

    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, step, loss):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(tiny_folder, tmp_path, capsys):
    train(tiny_config(tiny_folder, tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tiny_folder, tmp_path / "cut"), hooks=[InterruptAt(5)])  # mid epoch 2
    assert "interrupted: checkpoint saved" in capsys.readouterr().out
    meta = checkpoint.load(tmp_path / "cut" / "checkpoint.npz").meta
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 2)
    train(tiny_config(tiny_folder, tmp_path / "cut"), resume=tmp_path / "cut")
    a, b = weights(tmp_path / "full" / "checkpoint.npz"), weights(tmp_path / "cut" / "checkpoint.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# The run is made to diverge: NumPy warns about the overflow on its way to the NaN.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_nan_loss_stops_at_once_with_step_and_learning_rate(tiny_folder, tmp_path):
    cfg = tiny_config(tiny_folder, tmp_path / "nan", lr=1e12, batch_norm=False, schedule="constant",
                      weight_decay=0.0)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg)
    msg = str(e.value)
    assert "at step" in msg and "learning rate 1e+12" in msg and "too high" in msg
    assert "BatchNorm" in msg


def test_cli_train_evaluate_predict_summary_gradcheck(tiny_folder, tmp_path, capsys):
    run = tmp_path / "cli"
    rc = main(["train", "--dataset", "folder", "--data-dir", str(tiny_folder), "--epochs", "1",
               "--batch-size", "16", "--width", "0.0625", "--hidden", "16", "--batch-norm",
               "--out", str(run), "--no-progress", "--val-size", "0.25"])
    assert rc == 0
    assert "test accuracy:" in capsys.readouterr().out
    ck = str(run / "checkpoint.npz")
    assert main(["evaluate", ck, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["top1"] <= 1.0 and result["top5"] >= result["top1"]
    image = next((tiny_folder / "class0").iterdir())
    assert main(["predict", ck, str(image)]) == 0
    out = capsys.readouterr().out
    # Four classes: the top-5 list holds all four, ranked, and no fifth.
    assert "1. class" in out and "4. class" in out and "5." not in out
    assert main(["summary", "vgg16"]) == 0
    assert "138,357,544" in capsys.readouterr().out
    assert main(["gradcheck", "vgg11", "--width", "0.0625", "--coords", "4"]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_cli_train_and_doctor_in_float64(tiny_folder, tmp_path, capsys):
    # --dtype float64 stopped at the first step: the data pipeline made float32 batches
    # for float64 layers (TypeError). Now the batches come in the model's dtype, and the
    # whole chain (train, evaluate, predict, doctor) runs in float64.
    run = tmp_path / "f64"
    rc = main(["train", "--dataset", "folder", "--data-dir", str(tiny_folder), "--epochs", "1",
               "--batch-size", "16", "--width", "0.0625", "--hidden", "16", "--batch-norm",
               "--dtype", "float64", "--limit", "32", "--out", str(run), "--no-progress"])
    assert rc == 0
    assert "test accuracy:" in capsys.readouterr().out
    ck = checkpoint.load(run / "checkpoint.npz")
    assert ck.model.dtype == np.float64
    assert all(p.dtype == np.float64 for p in ck.model.parameters())
    assert main(["evaluate", str(run / "checkpoint.npz"), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["top1"] <= 1.0
    image = next((tiny_folder / "class0").iterdir())
    assert main(["predict", str(run / "checkpoint.npz"), str(image)]) == 0
    assert "1. class" in capsys.readouterr().out

    rc = main(["doctor", "--dataset", "folder", "--data-dir", str(tiny_folder), "--width", "0.0625",
               "--hidden", "16", "--batch-size", "8", "--steps", "3", "--dtype", "float64",
               "--out", str(tmp_path / "doctor64")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Diagnoses" in out and "TypeError" not in out
    # A command the doctor suggests keeps the dtype the run was made with.
    from tinyvgg.cli import _rebuild_argv, build_parser

    args = build_parser().parse_args(["doctor", "--dtype", "float64", "--steps", "3"])
    assert "--dtype float64" in _rebuild_argv(args, ["--lr", "0.1"])


def test_batches_come_in_the_model_dtype(tiny_folder):
    from tinyvgg.data import DataLoader, EvalTransform, TrainTransform, load_dataset

    ds = load_dataset("folder", str(tiny_folder), split="train")
    for dtype in (np.float32, np.float64):
        for tf in (TrainTransform(32, [120.0] * 3, [60.0] * 3, padding=4, dtype=dtype),
                   EvalTransform(32, [120.0] * 3, [60.0] * 3, dtype=dtype)):
            x, y = next(iter(DataLoader(ds, 8, tf, dtype=dtype, prefetch=0)))
            assert x.dtype == dtype and x.shape == (8, 3, 32, 32) and y.dtype == np.int64
    # Normalisation is computed in float64, not rounded through float32 first.
    imgs = ds.images[:2]
    x64 = EvalTransform(32, [120.0] * 3, [60.0] * 3, dtype=np.float64)(imgs)
    exact = (imgs.astype(np.float64) - 120.0) / 60.0
    np.testing.assert_array_equal(x64, exact.transpose(0, 3, 1, 2))
    # A float32 transform feeding a float64 loader is converted; other dtypes are refused.
    x, _ = next(iter(DataLoader(ds, 4, EvalTransform(32, None), dtype=np.float64, prefetch=0)))
    assert x.dtype == np.float64
    with pytest.raises(ValueError, match="float16"):
        EvalTransform(32, None, dtype=np.float16)
    with pytest.raises(ValueError, match="float16"):
        DataLoader(ds, 4, dtype=np.float16)


def test_cli_reports_missing_data_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYVGG_DATA", str(tmp_path / "none"))
    rc = main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "missing"), "--epochs", "1",
               "--no-progress", "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "missing" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "tinyvgg", "summary", "vgg11", "--width", "0.25",
                          "--input-size", "32", "--hidden", "64", "--num-classes", "10"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "features.0" in out.stdout
