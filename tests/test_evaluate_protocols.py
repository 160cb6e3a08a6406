"""Tests of tinyvgg.evaluate_protocols: test scales, crop grids, every protocol on a tiny
model, the preprocessing (same as training), ensembles and the evaluate command.

Tiny models: width 1/16, hidden 16, input 32, a handful of synthetic images.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyvgg.evaluate_protocols as ep
from tinyvgg import backend, checkpoint
from tinyvgg.data import EvalTransform, to_float_nchw
from tinyvgg.evaluate import predict_proba
from tinyvgg.models import vgg
from tinyvgg.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = dict(width=1 / 16, hidden=16, input_size=32, num_classes=5)


def tiny(name="A", dtype=np.float32, seed=0, **kw):
    backend.seed(seed)
    return vgg(name, dtype=dtype, init="he", **{**TINY, **kw})


def images(n=4, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


MEAN, STD = [120.0, 110.0, 100.0], [60.0, 55.0, 50.0]


# -- test scales ---------------------------------------------------------------

def test_test_scales_reproduce_the_paper_at_224():
    assert ep.test_scales(256) == [224, 256, 288]
    assert ep.test_scales(384) == [352, 384, 416]
    assert ep.test_scales((256, 512)) == [256, 384, 512]
    assert ep.test_scales(256, multi=False) == [256]
    assert ep.test_scales((256, 512), multi=False) == [384]
    assert ep.paper_offset(224) == 32


def test_test_scales_at_32_pixels():
    assert ep.paper_offset(32) == 5
    assert ep.test_scales(32, input_size=32) == [27, 32, 37]
    assert ep.test_scales(40, input_size=32) == [35, 40, 45]
    assert ep.test_scales((32, 48), input_size=32) == [32, 40, 48]
    assert ep.test_scales([32, 32], input_size=32) == [27, 32, 37]  # a degenerate range is fixed S
    with pytest.raises(ValueError):
        ep.test_scales(32, jittered=True)
    # A model trained without rescaling: S is the native side (Fashion-MNIST 28).
    em = ep.as_eval_model(tiny(), train_scale=None)
    assert ep.model_test_scales(em, native_size=28) == [23, 28, 33]
    assert ep.model_test_scales(em, multi=False, native_size=28) == [28]
    assert ep.default_scales(em, "single", 32) == [32]
    assert ep.default_scales(em, "dense", 32) == [27, 32, 37]
    em = ep.as_eval_model(tiny(), train_scale=[32, 48])
    assert ep.default_scales(em, "single") == [40]
    assert ep.default_scales(em, "multi-crop") == [32, 40, 48]


# -- crop grids ------------------------------------------------------------------

def test_grid_crops_positions():
    pos = ep.grid_crops(np.zeros((256, 341, 3)), 224, grid=5)
    assert len(pos) == 25
    assert pos[0] == (0, 0) and pos[4] == (0, 341 - 224) and pos[-1] == (32, 117)
    assert sorted({t for t, _ in pos}) == [0, 8, 16, 24, 32]
    assert sorted({l for _, l in pos}) == [0, 29, 59, 88, 117]
    # row-major: the left coordinate varies fastest
    assert [p[1] for p in pos[:5]] == [0, 29, 59, 88, 117] and {p[0] for p in pos[:5]} == {0}
    assert ep.grid_crops((37, 37), 32) [:5] == [(0, 0), (0, 1), (0, 3), (0, 4), (0, 5)]
    assert ep.grid_crops((32, 32), 32) == [(0, 0)] * 25
    assert ep.grid_crops((40, 50), 32, grid=1) == [(4, 9)]
    with pytest.raises(ValueError):
        ep.grid_crops((30, 40), 32)


class Spy:
    """A stand-in network that records its inputs and returns zero logits."""

    def __init__(self, k=3):
        self.seen = []
        self.config = {"num_classes": k, "dtype": "float64"}
        self.input_size = 32

    def forward(self, x, train=False):
        self.seen.append(np.array(x))
        return np.zeros((len(x), self.config["num_classes"]))


def coordinate_image(h, w):
    """Channel 0 holds the row, channel 1 the column, channel 2 is zero."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)


def test_multi_crop_feeds_the_grid_crops_and_their_flips():
    spy = Spy()
    em = ep.EvalModel(model=spy, input_size=32, channels=3)
    im = coordinate_image(37, 40)
    p = ep.multi_crop_posteriors(em, [im], Q=37, grid=5, flip=True, batch_size=8)
    assert p.shape == (1, 3) and np.allclose(p, 1 / 3)
    crops = np.concatenate(spy.seen)
    assert crops.shape[1:] == (3, 32, 32)
    plain = {(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in crops if c[1, 0, 1] > c[1, 0, 0]}
    flipped = [c for c in crops if c[1, 0, 1] < c[1, 0, 0]]
    assert plain == set(ep.grid_crops((37, 40), 32))
    for c in crops:  # every crop is a contiguous 32x32 window of the image
        top, left = int(c[0, 0, 0]), int(min(c[1, 0, 0], c[1, 0, -1]))
        window = np.asarray(im[top:top + 32, left:left + 32], np.float64).transpose(2, 0, 1)
        assert np.array_equal(c, window) or np.array_equal(c, window[..., ::-1])
    # flips are the mirrored crops: the column decreases left to right
    assert {(int(c[0, 0, 0]), int(c[1, 0, -1])) for c in flipped} == plain
    assert len(flipped) == len(plain)


def test_single_and_dense_feed_the_intended_windows():
    spy = Spy()
    em = ep.EvalModel(model=spy, input_size=32, channels=3)
    im = coordinate_image(40, 50)
    ep.single_scale_posteriors(em, [im], Q=40)
    (x,) = spy.seen
    assert x[0, 0, 0, 0] == 4 and x[0, 1, 0, 0] == 9  # the central crop of 40x50
    # rescaling: Q = 20 halves the image, then pads it centred to 32 (zeros: no mean)
    spy.seen.clear()
    ep.single_scale_posteriors(em, [coordinate_image(40, 40)], Q=20)
    (x,) = spy.seen
    assert x.shape == (1, 3, 32, 32)
    assert np.all(x[0, :, :6] == 0) and np.all(x[0, :, 26:] == 0)
    assert x[0, 0, 6:26, 6:26].max() > 30  # the halved 40-pixel ramp


# -- protocols on a real tiny network ------------------------------------------------

def test_dense_equals_single_scale_at_the_training_size():
    m = tiny("B", dtype=np.float64)
    em = ep.as_eval_model(m, mean=MEAN, std=STD)
    x = images(3)
    single = ep.single_scale_posteriors(em, x, Q=32)
    dense = ep.dense_posteriors(em, x, Q=32, flip=False)
    assert single.shape == dense.shape == (3, 5)
    np.testing.assert_allclose(dense, single, rtol=0, atol=1e-12)
    np.testing.assert_allclose(single.sum(axis=1), 1.0)
    # with the flip: the average of the image's and the mirrored image's posteriors
    mirrored = ep.single_scale_posteriors(em, x[:, :, ::-1], Q=32)
    np.testing.assert_allclose(ep.dense_posteriors(em, x, Q=32, flip=True),
                               0.5 * (single + mirrored), atol=1e-12)
    np.testing.assert_allclose(ep.single_scale_posteriors(em, x, Q=32, flip=True),
                               0.5 * (single + mirrored), atol=1e-12)


def test_dense_on_non_square_images_is_the_softmax_of_the_averaged_score_map():
    m = tiny(dtype=np.float64)
    em = ep.as_eval_model(m, mean=MEAN, std=STD)
    ims = [images(1, 40, 72)[0], images(1, 64, 64, seed=1)[0], images(1, 40, 72, seed=2)[0]]
    post, shapes = ep.dense_posteriors(em, ims, Q=64, flip=False, return_maps=True)
    assert post.shape == (3, 5)
    # 40x72 -> 64x115: a 2x3 map (115 // 32 - 1 + 1 = 3); 64x64 stays: 2x2
    assert sorted(s[2:] for s in shapes) == [(2, 2), (2, 3)]
    # by hand for the 64x64 image (Q = 64 leaves it as it is)
    fc = m.to_fully_convolutional()
    x = to_float_nchw(ims[1][None], MEAN, STD).astype(np.float64)
    scores = fc.forward(x).mean(axis=(2, 3))
    e = np.exp(scores - scores.max())
    np.testing.assert_allclose(post[1], (e / e.sum())[0], atol=1e-12)


def test_single_scale_matches_the_training_eval_transform():
    m = tiny()
    # scale None (CIFAR pad-and-crop; 28x28 padded to 32 as Fashion-MNIST)
    for h in (32, 28):
        x = images(4, h, h)
        em = ep.as_eval_model(m, mean=MEAN, std=STD)
        ref = predict_proba(m, EvalTransform(32, MEAN, STD)(x))
        got = ep.protocol_posteriors(em, x, "single")
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # fixed and jittered training scales: rescale to Q, centre crop
    x = images(3, 48, 60)
    for scale in (40, (32, 48)):
        em = ep.as_eval_model(m, mean=MEAN, std=STD, train_scale=scale)
        ref = predict_proba(m, EvalTransform(32, MEAN, STD, scale=scale)(x))
        np.testing.assert_allclose(ep.protocol_posteriors(em, x, "single"), ref, rtol=1e-5,
                                   atol=1e-6)


def test_grayscale_images_are_repeated_over_the_channels():
    m = tiny(dtype=np.float64)
    gray = images(3, 28, 28, c=1)
    rgb = np.repeat(gray, 3, axis=-1)
    em_gray = ep.as_eval_model(m, mean=[100.0], std=[50.0])
    em_rgb = ep.as_eval_model(m, mean=[100.0] * 3, std=[50.0] * 3)
    for protocol in ("single", "dense"):
        np.testing.assert_allclose(ep.protocol_posteriors(em_gray, gray, protocol),
                                   ep.protocol_posteriors(em_rgb, rgb, protocol), atol=1e-12)
    # a 3-value mean with grayscale images: repeated before normalising
    np.testing.assert_allclose(ep.protocol_posteriors(em_rgb, gray, "single"),
                               ep.protocol_posteriors(em_rgb, rgb, "single"), atol=1e-12)


def test_multi_crop_is_the_average_over_all_crops_and_flips():
    m = tiny(dtype=np.float64)
    em = ep.as_eval_model(m, mean=MEAN, std=STD)
    x = images(2, 35, 37)
    got = ep.multi_crop_posteriors(em, x, Q=35, grid=5, flip=True, batch_size=3)
    full = to_float_nchw(x, MEAN, STD).astype(np.float64)
    ps = []
    for t, l in ep.grid_crops((35, 37), 32, 5):
        c = full[:, :, t:t + 32, l:l + 32]
        ps += [predict_proba(m, c), predict_proba(m, c[..., ::-1].copy())]
    assert len(ps) == 50
    np.testing.assert_allclose(got, np.mean(ps, axis=0), atol=1e-12)


def test_multi_scale_and_combined_protocols():
    m = tiny(dtype=np.float64)
    em = ep.as_eval_model(m, mean=MEAN, std=STD)
    x = images(3)
    ms = ep.protocol_posteriors(em, x, "multi-scale")
    by_hand = np.mean([ep.single_scale_posteriors(em, x, q) for q in (27, 32, 37)], axis=0)
    np.testing.assert_allclose(ms, by_hand, atol=1e-12)
    dense = ep.protocol_posteriors(em, x, "dense", scales=[32, 37])
    crops = ep.protocol_posteriors(em, x, "multi-crop", scales=[32, 37])
    both = ep.protocol_posteriors(em, x, "dense+multi-crop", scales=[32, 37])
    np.testing.assert_allclose(both, 0.5 * (dense + crops), atol=1e-12)
    with pytest.raises(ValueError):
        ep.protocol_posteriors(em, x, "single", scales=[27, 32])
    with pytest.raises(ValueError):
        ep.protocol_posteriors(em, x, "ten-crop")


@pytest.mark.parametrize("protocol", ep.PROTOCOLS)
def test_evaluate_protocol_every_protocol(protocol):
    em = ep.as_eval_model(tiny(), mean=MEAN, std=STD)
    x, y = images(5), np.array([0, 1, 2, 3, 4])
    res = ep.evaluate_protocol(em, (x, y), protocol, batch_size=2, progress=False,
                               return_posteriors=True)
    assert res["n"] == 5 and res["protocol"] == protocol
    assert res["scales"] == ([32] if protocol == "single" else [27, 32, 37])
    assert res["posteriors"].shape == (5, 5)
    np.testing.assert_allclose(res["posteriors"].sum(axis=1), 1.0)
    assert res["top1"] == pytest.approx(np.mean(res["posteriors"].argmax(1) == y))
    assert res["top1_error"] == pytest.approx(1 - res["top1"])
    assert 0 <= res["top1"] <= res["top5"] == 1.0  # 5 classes: top-5 always right
    # chunking does not change the result
    again = ep.evaluate_protocol(em, (x, y), protocol, batch_size=64, progress=False,
                                 return_posteriors=True)
    np.testing.assert_allclose(again["posteriors"], res["posteriors"], rtol=1e-5, atol=1e-7)


def test_ensemble_averages_posteriors():
    ems = [ep.as_eval_model(tiny(seed=s), mean=MEAN, std=STD) for s in (0, 1)]
    ems.append(ep.as_eval_model(tiny(seed=2), mean=MEAN, std=STD, train_scale=40))
    x, y = images(6, 40, 40), np.arange(6) % 5
    res = ep.evaluate_protocol(ems, (x, y), "multi-scale", progress=False, return_posteriors=True)
    manual = [ep.protocol_posteriors(em, x, "multi-scale") for em in ems]
    np.testing.assert_allclose(res["posteriors"], np.mean(manual, axis=0), atol=1e-7)
    for got, want in zip(res["model_posteriors"], manual):
        np.testing.assert_allclose(got, want, atol=1e-7)
    # native side 40 for the unscaled models, S = 40 for the third: the same scales
    assert res["scales"] == [35, 40, 45]
    assert ep.ensemble_posteriors(ems, x, "multi-scale").shape == (6, 5)
    with pytest.raises(ValueError):
        ep.evaluate_protocol([ems[0], ep.as_eval_model(tiny(num_classes=3))], (x, y), "single",
                             progress=False)


def test_topk_accuracy():
    p = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert ep.topk_accuracy(p, [2, 1], 1) == 0.0
    assert ep.topk_accuracy(p, [2, 1], 2) == 1.0
    assert ep.topk_accuracy(p, [2, 1], 5) == 1.0
    assert ep.topk_accuracy(p, [1, 0], 1) == 1.0
    # the same count as training's and evaluate()'s, on many random rows
    from tinyvgg.evaluate import topk_correct
    r = np.random.default_rng(0)
    q, y = r.random((200, 10)), r.integers(0, 10, 200)
    for k in (1, 3, 5):
        rank = (q > q[np.arange(200), y][:, None]).sum(axis=1)  # classes scored higher
        assert ep.topk_accuracy(q, y, k) == np.mean(rank < k) == int(topk_correct(q, y, k)) / 200


# -- checkpoints and the command line ----------------------------------------------

def write_folder(root, classes=3, per_class=4, size=32, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for k in range(classes):
        d = Path(root) / f"class{k}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            im[..., k % 3] = 200  # a class colour, so the classes differ
            Image.fromarray(im).save(d / f"{i:03d}.png")
    return Path(root)


def save_tiny_checkpoint(path, data_dir, scale=None, seed=0, num_classes=3):
    model = tiny(num_classes=num_classes, seed=seed)
    cfg = TrainConfig(model="vgg11", dataset="folder", data_dir=str(data_dir), width=1 / 16,
                      hidden=16, input_size=32, scale=scale, val_size=0.25, seed=0)
    checkpoint.save(path, model, None, epoch=1, step_in_epoch=0, global_step=1, history=[],
                    schedule={}, train_config=cfg.to_dict(),
                    classes=[f"class{k}" for k in range(num_classes)], mean=MEAN, std=STD,
                    input_size=32, reason="epoch")
    return path


def test_as_eval_model_reads_the_checkpoint_meta(tmp_path):
    p = save_tiny_checkpoint(tmp_path / "ck.npz", tmp_path, scale=[32, 48])
    em = ep.as_eval_model(str(p))
    assert em.input_size == 32 and em.channels == 3 and em.train_scale == (32, 48)
    np.testing.assert_allclose(em.mean, MEAN)
    np.testing.assert_allclose(em.std, STD)
    assert ep.default_scales(em, "multi-scale") == [32, 40, 48]


def run_cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "tinyvgg", "evaluate", *argv], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_cli_evaluate_json(tmp_path):
    data = write_folder(tmp_path / "data")
    ck = save_tiny_checkpoint(tmp_path / "ck.npz", data)
    r = run_cli(str(ck), "--json", "--dataset", "folder", "--data-dir", str(data),
                "--split", "all")
    out = json.loads(r.stdout)
    assert out["n"] == 12 and out["protocol"] == "single" and out["scales"] == [32]
    assert out["checkpoints"] == [str(ck)]
    assert out["top1_error"] == pytest.approx(1 - out["top1"])
    for key in ("top1", "top5", "top1_error", "top5_error"):
        assert 0.0 <= out[key] <= 1.0
    # the same number in-process
    em = ep.as_eval_model(str(ck))
    from tinyvgg.data import load_dataset
    ds = load_dataset("folder", data, size=32)
    assert out["top1"] == pytest.approx(ep.evaluate_protocol(em, ds, "single",
                                                             progress=False)["top1"])


def test_cli_ensemble_default_dataset_val_split_and_plots(tmp_path, capsys):
    from tinyvgg.cli import main
    data = write_folder(tmp_path / "data")
    a = save_tiny_checkpoint(tmp_path / "a.npz", data, seed=0)
    b = save_tiny_checkpoint(tmp_path / "b.npz", data, seed=1)
    # no --dataset: the checkpoint's training config names the folder; no test folder:
    # the held-out validation images (val_size 0.25 of 12 = 3)
    assert main(["evaluate", str(a), str(b), "--json", "--protocol", "dense+multi-crop",
                 "--plots", str(tmp_path / "plots")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 and out["split"].startswith("val")
    assert out["scales"] == [27, 32, 37]
    assert out["checkpoints"] == [str(a), str(b)]
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()
    # readable output and --scales
    assert main(["evaluate", str(a), "--protocol", "multi-scale", "--scales", "30,34",
                 "--split", "all", "--limit", "5"]) == 0
    text = capsys.readouterr().out
    assert "top-1 error" in text and "[30, 34]" in text and "5 images" in text
