"""Lesson 11: dense evaluation -- the fully connected layers become convolutions.

Section 3.2 of the paper: at test time "the fully-connected layers are first
converted to convolutional layers (the first FC layer to a 7x7 conv. layer,
the last two FC layers to 1x1 conv. layers). The resulting fully-convolutional
net is then applied to the whole (uncropped) image." The result is a class
score map, which is averaged over its positions. Here we do the conversion by
hand, then with tinyvgg's to_fully_convolutional(), on a small VGG-11.

Run:  python lessons/11_dense_evaluation.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.layers import Conv2d
from tinyvgg.models import vgg

backend.seed(0)
S = 64  # the training size of our small net; 224 in the paper
model = vgg("vgg11", num_classes=5, input_size=S, width=0.125, hidden=32, init="glorot", dtype=np.float64)
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, S, S))

step("The last feature map and fc6")
say("""
    Five 2x2 pools shrink a 64x64 image to 2x2 (224 -> 7 in the paper).
    Flatten lays the C x 2 x 2 values out in a row, and fc6 multiplies them by
    its weight matrix (hidden, C*2*2).
""")
h = x
for layer in model.features:
    h = layer.forward(h)
fc6 = model.classifier[0]
flat = h.reshape(len(x), -1)
y_fc = flat @ fc6.params["weight"].T + fc6.params["bias"]
print(f"last feature map {h.shape}, flattened {flat.shape}, fc6 weight {fc6.params['weight'].shape}")
assert h.shape[2:] == (S // 32, S // 32)

step("fc6 IS a convolution whose kernel covers the whole feature map")
say("""
    Reshape each row of fc6's weight matrix back to (C, 2, 2): it becomes a
    filter exactly the size of the feature map. Convolving without padding,
    it fits in one place only, and computes the same dot product as fc6.
    (Flatten reads in C order -- channel, row, column -- so the reshape is exact.)
""")
k = S // 32
conv6 = Conv2d(h.shape[1], fc6.out_features, kernel_size=k, dtype=np.float64)
conv6.params["weight"][...] = fc6.params["weight"].reshape(fc6.out_features, h.shape[1], k, k)
conv6.params["bias"][...] = fc6.params["bias"]
y_conv = conv6.forward(h)
print(f"Conv2d({h.shape[1]}, {fc6.out_features}, kernel_size={k}) on {h.shape} -> {y_conv.shape}")
np.testing.assert_allclose(y_conv[:, :, 0, 0], y_fc, rtol=1e-12, atol=1e-12)
print("its 1x1 output equals fc6's output. fc7 and fc8 become 1x1 convolutions the same way.")

step("to_fully_convolutional(): the same net, at the training size")
fcn = model.to_fully_convolutional()
print(repr(fcn))
for name, layer in fcn.named_layers()[-7:]:
    print(f"  {name:13} {layer!r}")
logits = model.forward(x)
score_map = fcn.forward(x)
print(f"\nVGG on {x.shape}: logits {logits.shape}")
print(f"fully convolutional on {x.shape}: score map {score_map.shape}")
print("logits        ", logits[0])
print("score map[0]  ", score_map[0, :, 0, 0])
assert score_map.shape == (2, 5, 1, 1)
np.testing.assert_allclose(score_map[:, :, 0, 0], logits, rtol=1e-10, atol=1e-12)
say("""
    At the training size the score map is 1x1 and holds exactly the logits:
    equal scores. The converted net shares the original's weight arrays (views,
    not copies), so there is nothing to keep in sync.
""")
assert np.shares_memory(fcn.layers[-1].params["weight"], model.classifier[-1].params["weight"])
try:
    model.forward(rng.standard_normal((1, 3, 2 * S, 2 * S)))
    raise AssertionError("the FC net should refuse a larger image")
except ValueError as e:
    print(f"The original net on a {2 * S}x{2 * S} image refuses: {str(e)[:90]}...")

step("A larger image gives a map of scores")
say("""
    Nothing in a convolution cares about the image size. On a 128x128 image
    the last feature map is 4x4, the 2x2 'fc6' filter fits in 3x3 places,
    and we get a 3x3 map of class scores: one score vector per 64x64 window,
    the windows 32 pixels apart (32 = the five pools' total stride).
""")
big = rng.standard_normal((1, 3, 2 * S, 2 * S))
big_map = fcn.forward(big)
print(f"image {big.shape} -> score map {big_map.shape}")
print("score map of class 0:\n", big_map[0, 0])
assert big_map.shape == (1, 5, 3, 3)
for size in (96, 160, 200):
    m = fcn.forward(rng.standard_normal((1, 3, size, size)))
    side = size // 32 - S // 32 + 1
    print(f"image {size}x{size} -> score map {m.shape[2]}x{m.shape[3]}  (= {size}//32 - {S}//32 + 1)")
    assert m.shape[2:] == (side, side)

step("Averaging the map: one score per class")
say("""
    The paper sum-pools the score map into one vector of class scores, and
    also averages with the scores of the horizontally flipped image.
    fcn.score(x) is the spatial mean.
""")
scores = fcn.score(big)
np.testing.assert_allclose(scores, big_map.mean(axis=(2, 3)))
flipped = fcn.score(big[:, :, :, ::-1].copy())
print(f"score(x)              {scores[0]}\nscore(flipped x)      {flipped[0]}")
print(f"average of the two    {(scores[0] + flipped[0]) / 2}  -> class {np.argmax(scores[0] + flipped[0])}")

step("Dense evaluation is not the same as cropping")
say("""
    Is map position (0, 0) the score of the top-left 64x64 crop? Close, but
    not the same. When the crop is evaluated on its own, each conv layer pads
    it with zeros; inside the big image the 'padding' is the neighbouring part of the
    image itself (section 3.2), so the dense score also sees context beyond
    the crop. The paper found the two complementary, and
    combining them helped a little (Table 5).
""")
crop_logits = model.forward(big[:, :, :S, :S].copy())
diff = np.abs(crop_logits[0] - big_map[0, :, 0, 0]).max()
print(f"top-left crop through the original net: {crop_logits[0]}")
print(f"score map at (0, 0):                    {big_map[0, :, 0, 0]}")
print(f"largest difference: {diff:.3f}")
assert diff > 1e-6
say("""
    And the cost: 9 crops of 64x64 run the convolutions on 9 * 64^2 pixels;
    dense evaluation runs them once on 128^2 = 4 * 64^2 pixels, sharing the
    overlaps. Counting the conv multiply-adds with layer_table() of the same
    architecture at both sizes:
""")


def conv_macs(size):
    net = vgg("vgg11", num_classes=5, input_size=size, width=0.125, hidden=32)
    return sum(r["macs"] for r in net.layer_table() if isinstance(r["layer"], Conv2d))


crops, dense = 9 * conv_macs(S), conv_macs(2 * S)
print(f"9 crops: {crops:,d} conv multiply-adds; one dense pass: {dense:,d}  ({crops / dense:.2f}x fewer)")
assert crops / dense == 2.25
say("""
    The paper's multi-crop evaluation used 150 crops per image (50 per scale),
    far more work than one dense pass per scale.
""")

_lesson.done()
