"""Weights from elsewhere (issue #15): torchvision-layout state dicts without BatchNorm's
``num_batches_tracked``, the preprocessing of fine-tuned networks, ``.pth`` files holding
pickled objects, and training from converted weights (``--init-from``).

Most tests run without PyTorch: a stand-in for ``torch.load`` hands the converter NumPy
state dicts (or PyTorch's errors). Those marked ``needs torch`` check against PyTorch itself.
"""

import argparse
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from tests.test_checkpoint import HAS_TORCH, SMALL, torch_twin, trained_small
from tinyvgg import checkpoint, interop
from tinyvgg.cli import main
from tinyvgg.models import vgg
from tinyvgg.train import TrainConfig, Trainer, init_from_config

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch)")
IMAGENET_MEAN_255 = [v * 255 for v in interop.IMAGENET_MEAN]
IMAGENET_STD_255 = [v * 255 for v in interop.IMAGENET_STD]


class FakeTorch:
    """Stands in for PyTorch: ``load`` returns (or raises) what the test stored for the path."""

    __version__ = "stand-in"

    def __init__(self):
        self.contents = {}

    def load(self, path, map_location=None, weights_only=None):
        obj = self.contents[str(path)]
        if isinstance(obj, Exception):
            raise obj
        return obj


@pytest.fixture
def pth(monkeypatch, tmp_path):
    """``pth(name, obj)``: a .pth path whose torch.load gives ``obj`` (no PyTorch needed)."""
    torch = FakeTorch()
    monkeypatch.setattr(interop, "_import_torch", lambda what: torch)

    def put(name, obj):
        path = tmp_path / name
        path.write_bytes(b"stand-in for a PyTorch file")
        torch.contents[str(path)] = obj
        return path
    return put


def without_batch_counts(sd):
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def logits(model, seed=3):
    x = np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return model.forward(x)


# -- 5. BatchNorm state dicts without num_batches_tracked ---------------------------------

def test_load_state_dict_accepts_missing_num_batches_tracked():
    src = trained_small("vgg11_bn")
    sd = without_batch_counts(src.state_dict())
    dst = vgg("vgg11_bn", **SMALL)
    missing, unexpected = dst.load_state_dict(sd, strict=True)
    assert missing == [] and unexpected == []  # as PyTorch: not reported missing
    assert all(v == 0 for k, v in dst.state_dict().items() if k.endswith("num_batches_tracked"))
    np.testing.assert_array_equal(logits(dst), logits(src))


def test_load_state_dict_still_refuses_other_missing_buffers():
    sd = without_batch_counts(trained_small("vgg11_bn").state_dict())
    del sd["features.1.running_var"]
    with pytest.raises(KeyError, match="features.1.running_var"):
        vgg("vgg11_bn", **SMALL).load_state_dict(sd)


def test_convert_accepts_batchnorm_files_without_num_batches_tracked(pth, tmp_path):
    src = trained_small("vgg11_bn")
    out = interop.convert(pth("old_bn.pth", without_batch_counts(src.state_dict())), tmp_path / "o.npz")
    np.testing.assert_array_equal(logits(checkpoint.load(out).model), logits(src))


def test_convert_strips_dataparallel_and_compile_prefixes(pth, tmp_path):
    src = trained_small("vgg11_bn")
    wrapped = {f"_orig_mod.module.{k}": v for k, v in src.state_dict().items()}  # compile(DataParallel)
    out = interop.convert(pth("wrapped.pth", wrapped), tmp_path / "w.npz")
    np.testing.assert_array_equal(logits(checkpoint.load(out).model), logits(src))


@needs_torch
def test_torch_bn_file_without_num_batches_tracked_gives_pytorchs_logits(tmp_path):  # pragma: no cover
    import torch

    src = trained_small("vgg11_bn")
    twin = torch_twin(src)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in src.state_dict().items()})
    twin.eval()
    sd = {k: v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old_bn.pth")
    assert main(["convert", str(tmp_path / "old_bn.pth"), str(tmp_path / "o.npz")]) == 0
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(checkpoint.load(tmp_path / "o.npz").model.forward(x), ref, rtol=1e-4, atol=1e-5)


@needs_torch
def test_torch_bfloat16_file_converts(tmp_path):  # pragma: no cover
    import torch

    src = trained_small("vgg11")
    sd = {k: torch.from_numpy(np.array(v)).to(torch.bfloat16) for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "bf16.pth")
    assert main(["convert", str(tmp_path / "bf16.pth"), str(tmp_path / "o.npz")]) == 0
    got = checkpoint.load(tmp_path / "o.npz").state_dict
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v.float().numpy())


# -- 6. the preprocessing of fine-tuned (non-1000-class) networks ---------------------------

def test_convert_records_imagenet_preprocessing_for_any_class_count(pth, tmp_path):
    two = vgg("vgg11", num_classes=2, input_size=32, width=1 / 16, hidden=16)
    ck = checkpoint.load(interop.convert(pth("ft.pth", two.state_dict()), tmp_path / "ft.npz"))
    np.testing.assert_allclose(ck.meta["mean"], IMAGENET_MEAN_255)
    np.testing.assert_allclose(ck.meta["std"], IMAGENET_STD_255)
    assert ck.meta["input_size"] == 32 and ck.meta["resize"] == 37  # 256/224 of the input side
    assert ck.meta.get("classes") is None  # not ImageNet's names for 2 classes


def test_convert_mean_std_resize_options(pth, tmp_path, capsys):
    src = pth("ft.pth", vgg("vgg11", num_classes=2, input_size=32, width=1 / 16, hidden=16).state_dict())
    assert main(["convert", str(src), str(tmp_path / "a.npz"), "--mean", "0.5,0.5,0.5", "--std", "0.25",
                 "--resize", "40"]) == 0
    meta = checkpoint.load(tmp_path / "a.npz").meta
    assert meta["mean"] == [127.5] * 3 and meta["std"] == [63.75] * 3 and meta["resize"] == 40
    capsys.readouterr()
    for bad, option in ((["--mean", "0.5,0.5"], "--mean"), (["--std", "0,1,1"], "--std"),
                        (["--resize", "20"], "--resize")):
        assert main(["convert", str(src), str(tmp_path / "b.npz")] + bad) == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err
        assert not (tmp_path / "b.npz").exists()
    # The other direction has no preprocessing to record: the options are refused, not ignored.
    with pytest.raises(ValueError, match="--mean"):
        interop.convert(tmp_path / "a.npz", tmp_path / "a.pth", mean=[0.5])


def test_predict_and_evaluate_warn_when_a_checkpoint_has_no_normalisation(tmp_path, capsys):
    model = vgg("vgg11", num_classes=2, input_size=32, width=1 / 16, hidden=16)
    bare = checkpoint.save(tmp_path / "bare.npz", model)
    normalised = checkpoint.save(tmp_path / "norm.npz", model, mean=[120.0] * 3, std=[60.0] * 3)
    for k in range(2):
        (tmp_path / "data" / f"c{k}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 100 * k + i, np.uint8)).save(tmp_path / "data" / f"c{k}" / f"{i}.png")
    image = str(tmp_path / "data" / "c0" / "0.png")
    assert main(["predict", str(bare), image]) == 0
    assert "no input normalisation" in capsys.readouterr().err
    assert main(["predict", str(normalised), image]) == 0
    assert "normalisation" not in capsys.readouterr().err
    evaluate = ["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--split", "train", "--json"]
    assert main(["evaluate", str(bare)] + evaluate) == 0
    assert "no input normalisation" in capsys.readouterr().err
    assert main(["evaluate", str(normalised)] + evaluate) == 0
    assert "normalisation" not in capsys.readouterr().err


@needs_torch
def test_torch_finetuned_two_class_vgg_predicts_as_pytorch(tmp_path, capsys):  # pragma: no cover
    """The issue's case: a 2-class torchvision-layout VGG-11 trained with ImageNet
    normalisation; predict must give PyTorch's probabilities, not class 0 with p = 1."""
    import torch

    ours = vgg("vgg11", num_classes=2, input_size=224, width=1 / 16, hidden=16)
    torch.manual_seed(0)
    twin = torch_twin(ours).eval()
    with torch.no_grad():
        for i in (0, 3, 6):
            twin.classifier[i].weight.mul_(8)  # distinct, confident outputs
    torch.save(twin.state_dict(), tmp_path / "ft.pth")
    assert main(["convert", str(tmp_path / "ft.pth"), str(tmp_path / "ft.npz")]) == 0
    r = np.random.default_rng(0)
    images = []
    for i in range(2):
        # 320 x 256: the shorter side is already 256, so both crop the same 224 x 224 window.
        arr = np.clip(r.normal(120 + 40 * i, 50, (256, 320, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
        images.append(arr)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "ft.npz")] + [str(tmp_path / f"im{i}.png") for i in range(2)]) == 0
    out = capsys.readouterr().out
    got = {}
    for block in out.split(".png:")[1:]:
        rows = [ln.split() for ln in block.strip().splitlines()[:2]]
        got[len(got)] = {int(name): float(p) for _, name, p in rows}
    for i, arr in enumerate(images):
        crop = arr[16:240, 48:272].astype(np.float32) / 255
        x = (crop - np.array(interop.IMAGENET_MEAN, np.float32)) / np.array(interop.IMAGENET_STD, np.float32)
        with torch.no_grad():
            ref = torch.softmax(twin(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())), 1)[0].numpy()
        for k in (0, 1):
            assert abs(got[i][k] - ref[k]) <= 2e-4, (i, k, got[i], ref)


# -- 7. .pth files holding pickled objects ---------------------------------------------------

WEIGHTS_ONLY_ERROR = pickle.UnpicklingError(
    "Weights only load failed. This file can still be loaded, to do so you have two options ...\n"
    "\tWeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not an allowed "
    "global by default. Please use `torch.serialization.add_safe_globals([argparse.Namespace])` ...")


def test_convert_of_pickled_objects_is_one_clear_error(pth, tmp_path, capsys):
    src = pth("with_args.pth", WEIGHTS_ONLY_ERROR)
    assert main(["convert", str(src), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for words in ("Python objects beyond tensors", "argparse.Namespace", "state_dict()", "--allow-pickle"):
        assert words in err
    assert not (tmp_path / "o.npz").exists()


def test_convert_of_a_corrupt_file_names_it(pth, tmp_path, capsys):
    src = pth("bad.pth", RuntimeError("PytorchStreamReader failed reading zip archive"))
    assert main(["convert", str(src), str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "not a readable PyTorch file" in err and "Traceback" not in err


def test_convert_finds_the_weights_inside_saved_objects(pth, tmp_path):
    src = trained_small("vgg11")
    sd = src.state_dict()

    class Module:  # what a whole pickled nn.Module offers
        def state_dict(self):
            return sd
    for name, obj in (("ckpt.pth", {"model_state_dict": sd, "epoch": 3, "args": argparse.Namespace(lr=1)}),
                      ("module.pth", Module()), ("wrapped.pth", {"model": Module(), "step": 9})):
        out = interop.convert(pth(name, obj), tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(logits(checkpoint.load(out).model), logits(src))
    with pytest.raises(ValueError, match="keys \\['epoch', 'optimizer'\\].*state_dict"):
        interop.convert(pth("other.pth", {"epoch": 3, "optimizer": {}}), tmp_path / "x.npz")


@needs_torch
def test_torch_pickled_namespace_and_whole_module(tmp_path, capsys):  # pragma: no cover
    import torch

    src = trained_small("vgg11_bn")
    twin = torch_twin(src)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in src.state_dict().items()})
    torch.save({"state_dict": twin.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pth")
    torch.save(twin, tmp_path / "module.pth")
    for name in ("ns", "module"):
        assert main(["convert", str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--allow-pickle" in err, err
        assert not (tmp_path / f"{name}.npz").exists()
        assert main(["convert", str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}.npz"),
                     "--allow-pickle"]) == 0
        np.testing.assert_array_equal(logits(checkpoint.load(tmp_path / f"{name}.npz").model), logits(src))


# -- 8. training from converted weights -------------------------------------------------------

@pytest.fixture
def tiny_data(tmp_path):
    """2 classes x 6 RGB PNGs of 32 x 32."""
    r = np.random.default_rng(0)
    for k, c in enumerate([(220, 40, 40), (40, 40, 220)]):
        d = tmp_path / "data" / f"c{k}"
        d.mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(c) + r.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.png")
    return tmp_path / "data"


def converted(path, num_classes=5, **kw):
    """A checkpoint as ``convert`` writes it: weights and preprocessing, no training state."""
    model = vgg("vgg11", num_classes=num_classes, input_size=32, width=1 / 16, hidden=16, **kw)
    return checkpoint.save(path, model, mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4], input_size=32,
                           resize=37, converted_from="torchvision", source="ft.pth")


def test_resume_from_converted_weights_points_to_init_from(tmp_path, capsys):
    conv = converted(tmp_path / "conv.npz")
    before = (tmp_path / "conv.npz").read_bytes()
    assert main(["train", "--resume", str(conv), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no run to continue" in err and f"--init-from {conv}" in err and "Traceback" not in err
    assert (tmp_path / "conv.npz").read_bytes() == before


def _train_args(data, out):
    return ["train", "--dataset", "folder", "--data-dir", str(data), "--epochs", "1", "--batch-size", "4",
            "--val-size", "0.25", "--no-progress", "--out", str(out)]


def test_init_from_fine_tunes_converted_weights_end_to_end(tiny_data, tmp_path, capsys):
    conv = converted(tmp_path / "conv.npz")
    run = tmp_path / "run"
    assert main(_train_args(tiny_data, run) + ["--init-from", str(conv), "--model", "vgg16"]) == 0
    assert "classifier.6 replaced: 5 -> 2 classes" in capsys.readouterr().out
    ck = checkpoint.load(run / "checkpoint.npz")
    assert ck.config["name"] == "vgg11" and ck.config["num_classes"] == 2  # the checkpoint's architecture
    assert ck.config["width"] == 1 / 16 and ck.config["hidden"] == 16
    np.testing.assert_allclose(ck.meta["mean"], [123.7, 116.3, 103.5], rtol=1e-6)  # its normalisation
    assert json.loads((run / "config.json").read_text())["init_from"] == str(conv)
    # The run resumes as any other.
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert checkpoint.load(run / "checkpoint.npz").meta["epoch"] == 2


@pytest.mark.parametrize("num_classes", [5, 2])
def test_init_from_copies_every_weight_but_a_replaced_last_layer(tiny_data, tmp_path, num_classes):
    conv = converted(tmp_path / "conv.npz", num_classes=num_classes)
    source = checkpoint.load(conv).state_dict
    cfg = TrainConfig(dataset="folder", data_dir=str(tiny_data), init_from=str(conv), out=str(tmp_path / "r"),
                      progress=False, val_size=0.25, batch_size=4)
    trainer = Trainer(init_from_config(cfg)).setup()
    got = trainer.model.state_dict()
    for k, v in source.items():
        if k.startswith("classifier.6.") and num_classes != 2:
            assert got[k].shape[0] == 2
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_init_from_errors_name_the_option(tiny_data, tmp_path, capsys):
    conv = converted(tmp_path / "conv.npz")
    grey = converted(tmp_path / "grey.npz", in_channels=1)
    cases = [(["--init-from", str(conv), "--input-size", "64"], "--input-size"),
             (["--init-from", str(conv), "--resume", str(tmp_path / "run")], "--init-from"),
             (["--init-from", str(grey)], "--init-from"),
             (["--init-from", str(tmp_path / "missing.npz")], "missing.npz")]
    for extra, named in cases:
        assert main(_train_args(tiny_data, tmp_path / "run") + extra) == 2, extra
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err

