"""The training doctor: each diagnosis is triggered by a run built to have that
problem and stays silent on a healthy run; the statistics, files and commands.

Everything runs on tiny synthetic data (coloured 32x32 images whose colour is the
class) and VGGs of width 1/16, so the whole file stays well under a minute.
"""

import json
import math

import numpy as np
import pytest

from tinyvgg import backend
from tinyvgg.cli import main
from tinyvgg.data import Dataset, EvalTransform, TrainTransform, compute_mean_std
from tinyvgg.doctor import KINDS, Doctor, Thresholds, run_doctor
from tinyvgg.doctor.record import sample_indices
from tinyvgg.layers import ReLU
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.optim import SGD
from tinyvgg.train import TrainConfig, Trainer, TrainingDiverged

COLOURS = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220), (200, 200, 40)])


def colour_images(n, seed, k=4):
    r = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = np.clip(COLOURS[y][:, None, None, :] + r.normal(0, 30, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, y


def make_data(n_train=96, n_val=64, shuffle_val_labels=False):
    """A prepared data dict, as tinyvgg.train.prepare_data returns."""
    classes = [f"c{i}" for i in range(4)]
    xt, yt = colour_images(n_train, 1)
    xv, yv = colour_images(n_val, 2)
    if shuffle_val_labels:
        yv = (yv + 1 + np.arange(n_val) % 3) % 4  # every validation label is wrong
    train = Dataset(xt, yt, classes, "colours")
    val = Dataset(xv, yv, classes, "colours")
    mean, std = compute_mean_std(train)
    return {"train": train, "val": val, "test": val,
            "train_transform": TrainTransform(32, mean, std, padding=2),
            "eval_transform": EvalTransform(32, mean, std), "mean": mean, "std": std,
            "classes": classes, "input_size": 32, "test_split": "validation", "channels": 3}


def config(tmp_path, **kw):
    base = dict(model="vgg11", dataset="folder", epochs=2, batch_size=16, lr=0.02, width=1 / 16,
                hidden=64, batch_norm=True, dropout=0.0, init="glorot", schedule="constant",
                weight_decay=5e-4, seed=0, out=str(tmp_path / "run"), progress=False,
                eval_batch_size=64, log_every=1000)
    base.update(kw)
    # The paper's SGD (no Nesterov, no label smoothing): the step counts below were measured with it.
    return TrainConfig.from_recipe("paper", **base)


@pytest.fixture(autouse=True)
def _no_curves(monkeypatch):
    """The trainer redraws curves.png after every epoch; matplotlib would take most
    of this file's time, and these tests are about the doctor."""
    monkeypatch.setattr("tinyvgg.plots.plot_history", lambda history, path: path)


def quick_thresholds(**kw):
    base = dict(chance_after=12, window=6)
    base.update(kw)
    return Thresholds(**base)


def quiet_doctor(every, **kw):
    """A doctor that prints nothing, writes no files and evaluates 32 images."""
    return Doctor(every=every, thresholds=quick_thresholds(**kw), eval_images=32, verbose=False,
                  write_files=False)


class FakeTrainer:
    """Just what the hooks read: a model, an optimiser, the step and the class count."""

    def __init__(self, model, opt, num_classes):
        self.model, self.optimizer, self.num_classes = model, opt, num_classes
        self.global_step, self.is_main, self.out = 0, True, None


def manual_loop(doc, model, opt, steps, x, y, losses=None, check=None):
    """Train like Trainer.train_epoch does and call the hooks; ``losses`` replaces
    the loss the hooks are told about (to build a run with a given loss curve)."""
    t = FakeTrainer(model, opt, int(y.max()) + 1)
    fn = SoftmaxCrossEntropy()
    doc.train_begin(t)
    for s in range(steps):
        if check is not None:
            check(s)
        loss = fn.forward(model.forward(x, train=True), y)
        model.backward(fn.backward())
        doc.after_backward(t, t.global_step)
        opt.step()
        t.global_step += 1
        doc.after_step(t, t.global_step, losses[s] if losses is not None else loss)
    return t


# -- silent on a healthy run -------------------------------------------------------

def test_healthy_run_is_silent_and_records_everything(tmp_path):
    cfg = config(tmp_path, epochs=2, dropout=0.5)
    doc = quiet_doctor(3)
    Trainer(cfg, hooks=[doc], data=make_data()).setup().run()
    assert doc.kinds() == set(), doc.report(markdown=False)
    # dropout is on while training, off in evaluation: two evaluations agree exactly
    assert doc.epochs[-1]["eval_nondeterminism"] == 0.0
    # Recorded on steps 0, 3, 6, 9 of the 12 steps, every tracked layer present.
    assert [r["step"] for r in doc.records] == [0, 3, 6, 9]
    rec = doc.records[-1]["layers"]
    assert {"act_mean", "act_std", "dead", "zero", "grad_out_norm"} <= set(rec["features.2"])  # ReLU
    assert {"grad_norm", "weight_norm", "update_ratio", "act_std"} <= set(rec["features.0"])  # conv
    assert all(math.isfinite(v) for d in rec.values() for v in d.values())
    assert 1e-6 < rec["features.0"]["update_ratio"] < 1.0
    # The history carries the statistics (the files are checked with the commands below).
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history[0]["doctor"]["steps"] == [0, 3]
    assert history[1]["doctor"]["layers"]["features.0"]["update_ratio"][0] > 0
    assert history[1]["doctor"]["diagnoses"] == []
    assert "No problem found" in doc.report()
    assert doc.suggested_fix() == ([], "")


def test_doctor_does_not_change_the_run(tmp_path):
    """Same weights after training with and without the doctor (it restores what
    its own evaluations touch and never draws random numbers on training steps)."""
    cfg = config(tmp_path, epochs=1, dropout=0.5)
    plain = Trainer(cfg, data=make_data(n_train=48)).setup()
    plain.run()
    cfg2 = config(tmp_path, epochs=1, dropout=0.5, out=str(tmp_path / "run2"))
    doc = Doctor(every=1, verbose=False, write_files=False)
    watched = Trainer(cfg2, hooks=[doc], data=make_data(n_train=48)).setup()
    watched.run()
    a, b = plain.model.state_dict(), watched.model.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_no_wrappers_on_non_recording_steps():
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, init="glorot")
    opt = SGD(model, 0.01)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.arange(4)
    doc = Doctor(every=4, verbose=False, write_files=False)
    seen = []

    def check(s):
        # The doctor watches through a model hook, only on recording steps, and never
        # replaces a layer's methods.
        seen.append((s, bool(model._hooks)))
        assert not any("forward" in l.__dict__ or "backward" in l.__dict__ for l in model.layers)

    manual_loop(doc, model, opt, 9, x, y, check=check)
    assert [s for s, w in seen if w] == [0, 4, 8]
    assert [r["step"] for r in doc.records] == [0, 4, 8]
    assert not model._hooks
    assert not any("forward" in l.__dict__ or "backward" in l.__dict__ for l in model.layers)
    dead = doc.records[0]["layers"]["features.1"]["dead"]
    assert 0.0 <= dead <= 1.0


def test_doctor_evaluates_a_sample_spread_over_the_classes():
    """Class folders load class by class: the first images would all share one label."""
    x, _ = colour_images(40, 0)
    ds = Dataset(x, np.repeat(np.arange(4), 10), [f"c{i}" for i in range(4)], "sorted")
    idx = sample_indices(ds, 8)
    assert len(idx) == 8 and len(set(ds.labels[idx])) >= 3
    assert list(sample_indices(ds, 64)) == list(range(40))


# -- each problem, built on purpose ----------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to NaN: the point
def test_learning_rate_10_diverges_with_step_and_layer(tmp_path, capsys):
    cfg = config(tmp_path, lr=10.0, batch_norm=False, epochs=1)
    doc = run_doctor(cfg, every=1, data=make_data(), thresholds=quick_thresholds(), verbose=False)
    assert "diverged" in doc.kinds()
    d = doc.diagnoses["diverged"]
    assert isinstance(d.step, int) and d.layer is not None
    assert "update_too_large" in doc.kinds()
    assert doc.suggested_fix()[0] == ["--lr", "1"]
    report = (tmp_path / "run" / "doctor_report.md").read_text()
    assert "diverged" in report and d.layer in report
    assert "WARNING" not in capsys.readouterr().out  # verbose=False: nothing printed


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_train_hook_reports_divergence_before_the_error(tmp_path):
    cfg = config(tmp_path, lr=10.0, batch_norm=False, epochs=1)
    doc = Doctor(every=1, verbose=False, write_files=False)
    with pytest.raises(TrainingDiverged):
        Trainer(cfg, hooks=[doc], data=make_data()).setup().run()
    assert "diverged" in doc.kinds()  # the trainer's diverged hook ran before the error
    assert doc.diagnoses["diverged"].step == 4 == len(doc.losses)


def test_zero_initialised_layer_gives_dead_relus(tmp_path):
    cfg = config(tmp_path, batch_norm=False, epochs=1)
    doc = quiet_doctor(2)
    trainer = Trainer(cfg, hooks=[doc], data=make_data()).setup()
    conv = dict(trainer.model.named_layers())["features.3"]
    conv.params["weight"][...] = 0
    conv.params["bias"][...] = 0
    trainer.run()
    assert "dead_relus" in doc.kinds()
    d = doc.diagnoses["dead_relus"]
    assert d.layer == "features.3"
    assert "features.4 100%" in d.saw
    assert doc.records[-1]["layers"]["features.4"]["dead"] == 1.0


def test_deep_narrow_paper_init_vanishes_and_sits_at_chance(tmp_path):
    cfg = config(tmp_path, model="vgg16", init="paper", batch_norm=False, epochs=1, lr=0.01,
                 dropout=0.5, batch_size=4)
    doc = run_doctor(cfg, steps=12, every=4, data=make_data(n_train=96, n_val=32),
                     thresholds=quick_thresholds(chance_after=8, window=4), verbose=False,
                     write_files=False, eval_images=32)
    assert len(doc.losses) == 12  # one epoch on the first 12 * 4 training images
    kinds = doc.kinds()
    assert "vanishing_gradients" in kinds and "chance_loss" in kinds, doc.report(markdown=False)
    assert "diverged" not in kinds and "overfitting" not in kinds
    assert doc.suggested_fix()[0] == ["--batch-norm"]
    assert doc.alternative_fix() == ["--init", "glorot"]


def test_evaluation_with_dropout_on_is_an_evaluation_bug(tmp_path):
    cfg = config(tmp_path, dropout=0.5, batch_norm=False, epochs=1)
    doc = quiet_doctor(4)
    trainer = Trainer(cfg, hooks=[doc], data=make_data()).setup()
    model = trainer.model
    cls_forward = type(model).forward
    model.forward = lambda x, train=False: cls_forward(model, x, train=True)  # the bug
    trainer.run()
    assert "evaluation_bug" in doc.kinds()
    assert "dropout" in doc.diagnoses["evaluation_bug"].saw


def test_train_far_above_validation_is_overfitting(tmp_path):
    cfg = config(tmp_path, epochs=2)
    doc = quiet_doctor(6)
    Trainer(cfg, hooks=[doc], data=make_data(shuffle_val_labels=True)).setup().run()
    assert "overfitting" in doc.kinds()
    ev = doc.epochs[-1]
    assert ev["train_acc_eval"] - ev["val_acc_eval"] > 0.2
    assert "evaluation_bug" not in doc.kinds()


def test_tiny_learning_rate_updates_too_small(tmp_path):
    cfg = config(tmp_path, lr=1e-6, weight_decay=0.0, epochs=1)
    doc = quiet_doctor(2)
    Trainer(cfg, hooks=[doc], data=make_data()).setup().run()
    assert "update_too_small" in doc.kinds()
    assert "update_too_large" not in doc.kinds()


def test_rising_loss_is_reported():
    """Drive the hooks with a loss curve that goes down, then up."""
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, init="glorot",
                batch_norm=True)
    opt = SGD(model, 0.01)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = np.array([0, 1])
    th = quick_thresholds(window=3, chance_after=100)
    curve = list(np.linspace(1.4, 0.4, 6)) + list(np.linspace(0.4, 2.0, 6))
    doc = Doctor(every=3, thresholds=th, verbose=False, write_files=False)
    manual_loop(doc, model, opt, 12, x, y, losses=curve)
    assert "loss_rising" in doc.kinds()
    assert doc.diagnoses["loss_rising"].step == 9
    # the same loop with a falling loss stays silent about it
    doc2 = Doctor(every=3, thresholds=th, verbose=False, write_files=False)
    manual_loop(doc2, model, opt, 12, x, y, losses=list(np.linspace(1.4, 0.2, 12)))
    doc2.finish()
    assert "loss_rising" not in doc2.kinds()


def test_warns_once_per_kind(capsys):
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=16, init="glorot")
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.arange(8) % 4
    relu = dict(model.named_layers())["features.1"]
    assert isinstance(relu, ReLU)
    conv = dict(model.named_layers())["features.0"]
    conv.params["weight"][...] = 0
    doc = Doctor(every=1, thresholds=quick_thresholds(), verbose=True, write_files=False)
    manual_loop(doc, model, SGD(model, 0.01), 4, x, y)
    out = capsys.readouterr().out
    assert out.count("[dead_relus]") == 1
    assert set(doc.warned) <= set(KINDS)


# -- the commands ------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image
    root = tmp_path / "images"
    x, y = colour_images(48, 3)
    for i, (im, k) in enumerate(zip(x, y)):
        d = root / f"class{k}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:03d}.png")
    return root


def test_doctor_command_prints_table_diagnoses_and_fix(image_folder, tmp_path, capsys):
    out = tmp_path / "doc"
    rc = main(["doctor", "--model", "vgg11", "--width", "0.0625", "--hidden", "16", "--no-batch-norm",
               "--init", "paper", "--dataset", "folder", "--data-dir", str(image_folder),
               "--batch-size", "8", "--steps", "4", "--every", "1", "--val-size", "16",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "per-layer statistics at step 3" in text
    assert "features.0" in text and "classifier.6" in text
    assert "The doctor suggests: --batch-norm" in text
    assert "--no-batch-norm" not in text.split("The doctor suggests:")[1].splitlines()[1]
    assert "or, without that change: --init glorot" in text
    for name in ("doctor_report.md", "doctor.json", "doctor_layers.png"):
        assert (out / name).is_file(), name


def test_train_with_doctor_flag(image_folder, tmp_path):
    out = tmp_path / "train"
    rc = main(["train", "--model", "vgg11", "--width", "0.0625", "--hidden", "16", "--batch-norm",
               "--dataset", "folder", "--data-dir", str(image_folder), "--batch-size", "8",
               "--epochs", "1", "--val-size", "16", "--out", str(out), "--no-progress",
               "--doctor", "--doctor-every", "2"])
    assert rc == 0
    history = json.loads((out / "history.json").read_text())
    assert history[0]["doctor"]["steps"] == [0, 2]
    saved = json.loads((out / "doctor.json").read_text())
    assert [r["step"] for r in saved["records"]] == [0, 2]
    assert (out / "doctor_report.md").is_file()
    # --doctor is a saved setting: the command line adds the doctor to a resumed run too
    # (the trainer itself never imports the doctor).
    rc = main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"])
    assert rc == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and "doctor" in history[1]
    assert history[1]["doctor"]["steps"][0] > 2


def test_doctor_setting_without_the_hook_is_an_error_not_ignored(tmp_path):
    """The trainer never imports the doctor; a config asking for it must get it."""
    from tinyvgg.train import Trainer
    with pytest.raises(ValueError, match=r"doctor=True\) needs the doctor's hook"):
        Trainer(config(tmp_path, doctor=True), data=make_data())
    Trainer(config(tmp_path, doctor=True), hooks=[Doctor(every=5, verbose=False, write_files=False)],
            data=make_data())
