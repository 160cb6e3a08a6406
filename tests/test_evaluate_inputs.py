"""Tests of what ``evaluate`` feeds the models: the default test scale and load size come
from how each checkpoint was trained (never from the evaluation images), ensembles must
share their input size (and, for held-out images, their split), and a checkpoint without
class names is matched to a class folder only when the numbers of classes agree.

Tiny models (width 1/16, hidden 16) and folders of a few PNGs: each test takes a second
or two.
"""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

import tinyvgg.evaluate_protocols as ep
from tinyvgg import checkpoint
from tinyvgg.cli import main
from tinyvgg.train import TrainConfig
from tests.test_evaluate_protocols import MEAN, STD, tiny, write_folder


def save_checkpoint(path, data_dir, num_classes=3, seed=0, classes=True, **cfg):
    """A tiny checkpoint as the trainer writes it; ``cfg`` overrides the training config
    (dataset folder ``data_dir``, no --input-size: a 32-pixel network, val_size 0.25,
    seed 0)."""
    input_size = cfg.get("input_size") or 32
    model = tiny(num_classes=num_classes, input_size=input_size, seed=seed)
    tc = TrainConfig(**{**dict(model="vgg11", dataset="folder", data_dir=str(data_dir),
                               width=1 / 16, hidden=16, val_size=0.25, seed=0), **cfg})
    names = [f"class{k}" for k in range(num_classes)] if classes else None
    checkpoint.save(path, model, None, epoch=1, step_in_epoch=0, global_step=1, history=[],
                    schedule={}, train_config=tc.to_dict(), classes=names, mean=MEAN, std=STD,
                    input_size=input_size, reason="epoch")
    return str(path)


def evaluate_json(capsys, *argv):
    assert main(["evaluate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- 1. the default test scale and load size come from the checkpoint -----------------------

def test_default_scale_is_the_trained_side_not_the_images_side(tmp_path):
    # trained on a class folder of 32-pixel images without --input-size: s = 32
    em = ep.as_eval_model(save_checkpoint(tmp_path / "ck.npz", tmp_path))
    big = np.zeros((2, 64, 64, 3), np.uint8)
    assert ep.default_scales(em, "single", native_size=64) == [32]
    assert ep.default_scales(em, "multi-scale", native_size=64) == [27, 32, 37]
    res = ep.evaluate_protocol(em, (big, [0, 1]), "single", progress=False)
    assert res["scales"] == [32]
    # one 32-pixel image among them changes nothing
    mixed = [big[0], big[1], np.zeros((32, 32, 3), np.uint8)]
    assert ep.evaluate_protocol(em, (mixed, [0, 1, 2]), "single", progress=False)["scales"] == [32]
    # images of a side that pads to 32 are taken as they are, as training took its own
    assert ep.default_scales(em, "single", native_size=28) == [28]
    # --scales still overrides
    assert ep.evaluate_protocol(em, (big, [0, 1]), "single", scales=[64],
                                progress=False)["scales"] == [64]
    assert em.train_sides == (1, 32)  # any side up to 32 pads to the 32-pixel network


def test_train_sides_from_the_training_config(tmp_path):
    def sides(**cfg):
        return ep.as_eval_model(save_checkpoint(tmp_path / "ck.npz", tmp_path, **cfg)).train_sides

    assert sides(input_size=32) == (32, 32)
    assert sides(dataset="fashion-mnist") == (28, 28)
    assert sides(dataset="fashion-mnist", input_size=32) == (28, 28)
    assert sides(dataset="cifar10") == (32, 32)
    assert sides(dataset="cifar10", input_size=64) == (64, 64)
    # a Fashion-MNIST model takes 28-pixel images whatever the images evaluated
    em = ep.as_eval_model(save_checkpoint(tmp_path / "f.npz", tmp_path, dataset="fashion-mnist"))
    assert ep.default_scales(em, "single", native_size=32) == [28]
    # a bare VGG has no training record: the images' native side, as before
    assert ep.as_eval_model(tiny()).train_sides is None
    assert ep.default_scales(ep.as_eval_model(tiny()), "single", native_size=40) == [40]


def test_cli_evaluate_a_32_pixel_model_on_64_pixel_images(tmp_path, capsys):
    train = write_folder(tmp_path / "train32", size=32)
    ck = save_checkpoint(tmp_path / "ck.npz", train)
    big = write_folder(tmp_path / "big", size=64)
    out = evaluate_json(capsys, ck, "--data-dir", str(big), "--split", "all")
    assert out["scales"] == [32] and out["n"] == 12
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(big / "class0" / "small.png")
    out = evaluate_json(capsys, ck, "--data-dir", str(big), "--split", "all")
    assert out["scales"] == [32] and out["n"] == 13
    # the same score as the images rescaled to 32 beforehand
    at_32 = evaluate_json(capsys, ck, "--data-dir", str(big), "--split", "all", "--scales", "32")
    assert out["top1"] == pytest.approx(at_32["top1"])
    assert evaluate_json(capsys, ck, "--data-dir", str(big), "--split", "all",
                         "--scales", "64")["scales"] == [64]


def test_a_cifar10_model_loads_a_folder_at_its_trained_side(tmp_path):
    em = ep.as_eval_model(save_checkpoint(tmp_path / "ck.npz", tmp_path, dataset="cifar10"))
    big = write_folder(tmp_path / "big", size=64)
    ds, _, _ = ep.load_eval_dataset("folder", str(big), "all", [em],
                                    em.meta["train_config"])
    assert ds.images.shape[1:] == (32, 32, 3)


# -- 2. an ensemble shares its input size, and its split for held-out images ----------------

def test_an_ensemble_of_different_input_sizes_is_an_error(tmp_path, capsys):
    data = write_folder(tmp_path / "data", size=32)
    a = save_checkpoint(tmp_path / "a.npz", data)
    b = save_checkpoint(tmp_path / "b.npz", data, input_size=64)
    for order in ([a, b], [b, a]):
        ems = [ep.as_eval_model(p, name=p) for p in order]
        with pytest.raises(ValueError, match="different input sizes") as e:
            ep.load_eval_dataset("folder", str(data), "all", ems, ems[0].meta["train_config"])
        assert f"{a} at 32" in str(e.value) and f"{b} at 64" in str(e.value)
        assert "one at a time" in str(e.value)
    assert main(["evaluate", a, b, "--data-dir", str(data), "--split", "all"]) == 2
    assert "different input sizes" in capsys.readouterr().err


@pytest.mark.parametrize("other, named", [
    (dict(split_seed=1), "split seed 0 vs 1"),
    (dict(val_size=0.5), "val_size 0.25 vs 0.5"),
    (dict(limit=8), "limit None vs 8"),
    (dict(sampling="shuffle"), "sampling stratified vs shuffle"),
    (dict(data_dir="elsewhere"), "data folder"),
])
def test_an_ensemble_on_held_out_images_needs_one_split(tmp_path, other, named):
    data = write_folder(tmp_path / "data", size=32)
    a = save_checkpoint(tmp_path / "a.npz", data)
    other = dict(other)
    b_data = tmp_path / other.pop("data_dir") if "data_dir" in other else data
    b = save_checkpoint(tmp_path / "b.npz", b_data, seed=1, **other)
    ems = [ep.as_eval_model(p, name=p) for p in (a, b)]
    tc = ems[0].meta["train_config"]
    for split in ("val", None):  # None: the training folder itself, so its held-out images
        with pytest.raises(ValueError, match="held out different validation images") as e:
            ep.load_eval_dataset("folder", str(data), split, ems, tc)
        assert named in str(e.value) and a in str(e.value) and b in str(e.value)
    # images neither trained on are fine
    ds, used, _ = ep.load_eval_dataset("folder", str(data), "all", ems, tc)
    assert used == "all" and len(ds) == 12


def test_an_ensemble_with_one_split_keeps_working(tmp_path):
    data = write_folder(tmp_path / "data", size=32)
    a = save_checkpoint(tmp_path / "a.npz", data)
    b = save_checkpoint(tmp_path / "b.npz", data, seed=1)  # other weights, the same split
    ems = [ep.as_eval_model(p, name=p) for p in (a, b)]
    ds, used, _ = ep.load_eval_dataset("folder", str(data), "val", ems, ems[0].meta["train_config"])
    alone, _, _ = ep.load_eval_dataset("folder", str(data), "val", ems[:1],
                                       ems[0].meta["train_config"])
    assert used == "val" and len(ds) == 3 and ds.paths == alone.paths


# -- 3. a checkpoint without class names on a class folder ---------------------------------

def save_converted(path, num_classes):
    """Like weights converted from torchvision: no class names, no training config."""
    checkpoint.save(path, tiny(num_classes=num_classes), None, input_size=32, mean=MEAN, std=STD)
    return str(path)


def test_unnamed_classes_of_another_number_are_an_error(tmp_path, capsys):
    data = write_folder(tmp_path / "data", classes=3, size=32)
    ck = save_converted(tmp_path / "ten.npz", 10)
    em = ep.as_eval_model(ck, name=ck)
    with pytest.raises(ValueError, match="no class names and 10 outputs") as e:
        ep.load_eval_dataset("folder", str(data), None, [em])
    assert f"{data} has 3 classes" in str(e.value)
    assert main(["evaluate", ck, "--dataset", "folder", "--data-dir", str(data)]) == 2
    assert "10 outputs" in capsys.readouterr().err


def test_unnamed_classes_of_the_same_number_are_matched_by_position_with_a_warning(tmp_path,
                                                                                 capsys):
    data = write_folder(tmp_path / "data", classes=3, size=32)
    ck = save_converted(tmp_path / "three.npz", 3)
    with pytest.warns(UserWarning, match="no class names") as caught:
        out = evaluate_json(capsys, ck, "--dataset", "folder", "--data-dir", str(data))
    assert "sorted folder names: class0 -> 0, class1 -> 1, class2 -> 2" in str(caught[0].message)
    assert out["n"] == 12
    # a checkpoint with class names is matched by name, without a warning
    named = save_checkpoint(tmp_path / "named.npz", data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_json(capsys, named, "--data-dir", str(data), "--split", "all")["n"] == 12
