"""Lesson 14: training scales, scale jittering, and the paper's five ways to test.

Sections 3.1, 3.2 and 4 of the paper. A network is trained on s x s crops (224 in
the paper, 32 here) of images rescaled so that their shorter side is S, the
*training scale*: fixed (S = 256 or 384) or drawn anew for every image from
[S_min, S_max] (*scale jittering*, [256, 512]), so that the network sees objects
at many sizes. At test time an image is rescaled to a *test scale* Q and then
classified in one of several ways: the central crop at one Q (single scale) or at
several (multi-scale), the fully convolutional net on the whole image (dense),
a grid of crops (multi-crop), dense and multi-crop together, and several
networks' posteriors averaged (fusion). Each is a few lines in
tinyvgg/evaluate_protocols.py; here we check what each one computes, on a small
untrained VGG-11 (what they are worth in accuracy is the paper-table study's job:
experiments/paper_tables.py).

Run:  python lessons/14_scales_and_test_protocols.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg import evaluate_protocols as ep
from tinyvgg.data.transforms import TrainTransform, rescale, single_test_scale
from tinyvgg.models import vgg

step("The training scale S: rescale, then crop")
say("""
    rescale(image, S) resizes an image isotropically (Pillow, bilinear) so that
    its shorter side is S: a 48 x 64 photo at S = 36 becomes 36 x 48. The
    training crop (32 x 32 here) is then cut at a random place.
""")
photo = np.zeros((48, 64, 3), np.uint8)
print(f"48 x 64 at S = 36 -> {rescale(photo, 36).shape[:2]}; at S = 48 -> {rescale(photo, 48).shape[:2]}")
assert rescale(photo, 36).shape == (36, 48, 3) and rescale(photo, 48).shape == (48, 64, 3)

step("Scale jittering: S drawn per image, so objects come in many sizes")
say("""
    A 48 x 48 image holding an 8-pixel white square in its centre, put through
    the training transform 24 times. With a fixed S = 48 the square always
    spans 8 pixels of the 32 x 32 crop; with S drawn from [32, 48] it spans
    8 * S / 48, from about 5 to 8 pixels: the same object at several sizes, which
    is what scale jittering teaches the network (section 3.1).
""")
square = np.zeros((48, 48, 3), np.uint8)
square[20:28, 20:28] = 255


def square_sizes(scale, draws=24):
    """The square's width (pixels brighter than mid-grey in its middle row) in each crop."""
    t = TrainTransform(32, mean=None, scale=scale, flip=False)
    sizes = []
    for seed in range(draws):
        crop = t([square], rng=np.random.default_rng(seed))[0, 0]  # (32, 32), the first channel
        row = crop[int(np.argmax(crop.sum(axis=1)))]
        sizes.append(int((row > 127).sum()))
    return sizes


fixed, jittered = square_sizes((48, 48)), square_sizes((32, 48))
print(f"fixed S = 48:       square widths {sorted(set(fixed))}")
print(f"S from [32, 48]:    square widths {sorted(set(jittered))}")
assert set(fixed) == {8}
assert len(set(jittered)) >= 3 and min(jittered) <= 6 and max(jittered) == 8

step("Test scales Q (section 4.1-4.2)")
say("""
    Single scale: Q = S for a fixed S, Q = (S_min + S_max) / 2 for a jittered
    one. Multi-scale: {S - 32, S, S + 32} (the paper's Table 4, at crop 224),
    or {S_min, the middle, S_max} for a jittered S. tinyvgg scales the offset 32
    with the crop size: 5 at crop 32.
""")
print(f"S = 256: {ep.test_scales(256)};  S = 384: {ep.test_scales(384)};  "
      f"S in [256, 512]: {ep.test_scales((256, 512))}, single Q {single_test_scale((256, 512))}")
print(f"at crop 32: S = 32 -> {ep.test_scales(32, input_size=32)}, "
      f"S in [32, 48] -> {ep.test_scales((32, 48), input_size=32)}")
assert ep.test_scales(256) == [224, 256, 288] and ep.test_scales(384) == [352, 384, 416]
assert ep.test_scales((256, 512)) == [256, 384, 512] and single_test_scale((256, 512)) == 384
assert ep.test_scales(32, input_size=32) == [27, 32, 37]

step("Single scale and multi-scale: the central crop, at one Q or averaged over several")
say("""
    From here on, a small untrained VGG-11 stands for a network trained with S
    in [32, 48] (its posteriors are nearly uniform: what we check is the
    arithmetic of each protocol, not its accuracy). Multi-scale testing is the
    average of the single-scale posteriors at each Q.
""")
backend.seed(0)
net = vgg("vgg11", num_classes=4, input_size=32, width=1 / 16, hidden=32, batch_norm=True,
          dropout=0.0, init="glorot", dtype=np.float64)
model = ep.as_eval_model(net, mean=[120.0, 120.0, 120.0], std=[60.0, 60.0, 60.0], train_scale=(32, 48))
rng = np.random.default_rng(1)
images = [rng.integers(0, 256, (40, 52, 3)).astype(np.uint8) for _ in range(3)]
scales = ep.model_test_scales(model)
single = {q: ep.single_scale_posteriors(model, images, q) for q in scales}
multi = ep.multi_scale_posteriors(model, images)
print(f"a model trained with S in [32, 48]: test scales {scales}")
print(f"posteriors (3 images, 4 classes), each row sums to 1: {np.round(multi.sum(axis=1), 12)}")
assert scales == [32, 40, 48]
np.testing.assert_allclose(multi.sum(axis=1), 1.0, rtol=1e-12)
np.testing.assert_allclose(multi, np.mean([single[q] for q in scales], axis=0), rtol=1e-12)

step("Dense evaluation: the whole image, the fully connected layers as convolutions")
say("""
    Section 3.2: fc6 becomes a convolution over the last feature map, fc7 and
    fc8 1x1 convolutions, so the network takes an image of any size and returns
    a map of class scores, which is averaged over its positions (then
    soft-maxed), with the mirror image's posteriors averaged in. On an image of
    exactly the crop size the map is 1 x 1: dense evaluation is then the
    central crop and its mirror image. A larger image gives a larger map.
""")
exact = [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(2)]
dense_small = ep.dense_posteriors(model, exact, Q=32)
mirrored = [im[:, ::-1] for im in exact]
both = 0.5 * (ep.single_scale_posteriors(model, exact, 32) + ep.single_scale_posteriors(model, mirrored, 32))
_, maps = ep.dense_posteriors(model, images, Q=64, return_maps=True)
print(f"on 32 x 32 images: dense == (crop + mirrored crop) / 2: "
      f"largest difference {np.abs(dense_small - both).max():.1e}")
print(f"a 40 x 52 image rescaled to Q = 64 (64 x 83): score map {maps[0][1:]} (K, h, w)")
np.testing.assert_allclose(dense_small, both, rtol=1e-10)
assert maps[0][1:] == (4, 2, 2)

step("Multi-crop: a 5 x 5 grid of crops and their mirror images")
say("""
    Section 3.2 (and Table 5): 25 crops per scale on a regular grid, and their
    flips: 50 crops, whose posteriors are averaged. Complementary to dense
    evaluation, because the convolutions see different borders (zero padding
    of a crop against the neighbouring image content in the dense pass).
""")
positions = ep.grid_crops((64, 83), 32)
crops = ep.multi_crop_posteriors(model, images, Q=64)
dense64 = ep.dense_posteriors(model, images, Q=64)
print(f"grid on a 64 x 83 image: {len(positions)} positions, corners {positions[0]} and {positions[-1]}")
print(f"multi-crop and dense posteriors differ by up to {np.abs(crops - dense64).max():.3f}")
assert len(positions) == 25 and positions[0] == (0, 0) and positions[-1] == (64 - 32, 83 - 32)
assert not np.allclose(crops, dense64)  # two different views of the same image
combined = ep.protocol_posteriors(model, images, "dense+multi-crop", scales=[64])
np.testing.assert_allclose(combined, 0.5 * (crops + dense64), rtol=1e-12)

step("Fusion: several networks' posteriors averaged (section 4.4)")
backend.seed(1)
other = ep.as_eval_model(vgg("vgg13", num_classes=4, input_size=32, width=1 / 16, hidden=32, batch_norm=True,
                             dropout=0.0, init="glorot", dtype=np.float64),
                         mean=[120.0] * 3, std=[60.0] * 3, train_scale=(32, 48))
fused = ep.ensemble_posteriors([model, other], images, "multi-scale")
print(f"fused posteriors of VGG-11 and VGG-13 (multi-scale):\n{np.round(fused, 3)}")
np.testing.assert_allclose(fused, 0.5 * (ep.protocol_posteriors(model, images, "multi-scale")
                                         + ep.protocol_posteriors(other, images, "multi-scale")), rtol=1e-12)

step("What they are worth: the paper-table study")
say("""
    Everything above checks what each protocol computes, not whether it helps.
    experiments/paper_tables.py measures that: twelve VGGs at width 1/4 trained
    15 epochs each on CIFAR-10, judged at 2 paired standard errors on 5,000
    validation images (experiments/results/paper_tables.md). Its verdicts on
    this lesson's claims:

    - scale jittering at training (S in [32, 48]) beats a fixed S = 32:
      contradicted at single test; supported at multi-scale test (single-scale
      test: D 16.4 %, D [32, 48] 17.4 %)

    - multi-scale testing beats single-scale testing: supported for 1 of 8
      models, contradicted for 3 (mean gain -0.2 points)

    - dense and multi-crop evaluation are complementary (their average beats
      both): D not resolved, D-S32-48 not resolved (D: dense 16.6, multi-crop
      15.9, both 16.2 %)

    - fusing several models (averaging their posteriors) beats the best single
      model: supported for 6 of 7 fusions (best: D + D [32, 48] (multi-scale)
      13.8 % vs its best member 15.5 %)

    At 32 pixels the paper's scale effects have little room: Q = 27 throws
    detail away, Q = 37 invents it, and every dense score map is 1 x 1 (one
    window), so dense and multi-crop see nearly the same pixels and their average
    adds nothing measurable. Fusion helps here as in the paper; jittering helps
    only the network trained with it when it is also tested at several scales.
""")

_lesson.done()
