"""Lesson 8: building A, A-LRN, B, C, D and E -- Tables 1 and 2 of the paper from the code.

Section 2.2: six configurations that differ only in depth, from 11 weight
layers (A) to 19 (E). Table 1 lists their layers; Table 2 their parameter
counts (133, 133, 133, 134, 138, 144 million). Here both tables are printed
from tinyvgg.models -- the very table the models are built from -- and the
counts are checked against real, built models.

Run:  python lessons/08_building_the_six_nets.py   [--no-pause]
"""

import _lesson
from _lesson import say, step

from tinyvgg import backend
from tinyvgg.layers import Conv2d, Linear
from tinyvgg.models import CONFIGS, NAMES, count_params, vgg

LETTERS = ["A", "A-LRN", "B", "C", "D", "E"]
NAME_OF = {letter: name for name, letter in NAMES.items()}

step("Table 1: the configurations, column by column")
say("""
    tinyvgg.models.CONFIGS holds Table 1 as the paper writes it: for each
    configuration, five blocks of layers, each block ending in a max-pool.
    "conv3-64" is a 3x3 convolution with 64 output channels (stride 1,
    padding 1); "conv1-256" a 1x1 convolution; "LRN" local response
    normalisation. Every convolution is followed by a ReLU (not shown, as in
    the paper). The channel count doubles after each pool, from 64 to 512.
""")


def n_weight_layers(letter):
    convs = sum(entry.startswith("conv") for block in CONFIGS[letter] for entry in block)
    return convs + 3  # plus the three fully connected layers


col = 11
print("".join(f"{letter:^{col}}" for letter in LETTERS))
print("".join(f"{f'{n_weight_layers(letter)} weight':^{col}}" for letter in LETTERS))
print("".join(f"{'layers':^{col}}" for _ in LETTERS))
print("input (224 x 224 RGB image)".center(col * 6))
for b in range(5):
    blocks = [[e for e in CONFIGS[letter][b] if e != "maxpool"] for letter in LETTERS]
    for r in range(max(len(blk) for blk in blocks)):
        print("".join(f"{(blk[r] if r < len(blk) else ''):^{col}}" for blk in blocks))
    print("maxpool".center(col * 6))
for line in ("FC-4096", "FC-4096", "FC-1000", "soft-max"):
    print(line.center(col * 6))
assert [n_weight_layers(letter) for letter in LETTERS] == [11, 11, 13, 16, 16, 19]
assert all(block[-1] == "maxpool" for letter in LETTERS for block in CONFIGS[letter])

step("How the configurations differ")
say("""
    A-LRN is A plus one LRN layer; B adds a second conv to blocks 1 and 2; C
    adds a 1x1 conv to blocks 3-5; D makes those 3x3; E adds a fourth 3x3 conv
    to blocks 3-5. Torchvision's names for them:
""")
for letter in LETTERS:
    print(f"  {letter:6} = vgg(\"{NAME_OF[letter]}\")")
assert NAME_OF["D"] == "vgg16" and NAME_OF["E"] == "vgg19" and NAME_OF["A"] == "vgg11"

step("Table 2: number of parameters, without building anything")
say("""
    A full VGG-16 holds 138 million numbers (over half a gigabyte in float32);
    building all six would take a while and a lot of memory. The models module
    counts them from the layer table instead (count_params): a conv layer has
    F*C*K*K weights + F biases, a fully connected one in*out + out.
""")
expected = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848,
            "C": 133_638_952, "D": 138_357_544, "E": 143_667_240}
paper_millions = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
print(f"{'net':6} {'parameters':>14} {'millions':>9} {'paper':>6}")
counts = {}
for letter in LETTERS:
    counts[letter] = count_params(letter)
    print(f"{letter:6} {counts[letter]:14,d} {counts[letter] / 1e6:9.0f} {paper_millions[letter]:6d}")
    assert counts[letter] == expected[letter]
    assert round(counts[letter] / 1e6) == paper_millions[letter]
say("""
    The paper's point: in spite of the depth, the deepest net has no more
    weights than a shallower net with wider, larger-kernel layers (it compares
    with OverFeat's 144M).
""")

step("Where the differences come from")
say("""
    The counts differ by exactly the layers that Table 1 adds. Each line
    below computes the difference from the conv layers alone (F*C*K*K + F)
    and checks it against the totals above.
""")


def conv(c_in, c_out, k):
    return c_out * c_in * k * k + c_out


steps_between = [
    ("A-LRN - A", "LRN has no parameters", 0),
    ("B - A", "conv3-64 and conv3-128 added", conv(64, 64, 3) + conv(128, 128, 3)),
    ("C - B", "conv1-256 and two conv1-512 added", conv(256, 256, 1) + 2 * conv(512, 512, 1)),
    ("D - C", "those three 1x1 become 3x3",
     conv(256, 256, 3) - conv(256, 256, 1) + 2 * (conv(512, 512, 3) - conv(512, 512, 1))),
    ("E - D", "conv3-256 and two conv3-512 added", conv(256, 256, 3) + 2 * conv(512, 512, 3)),
]
for label, why, by_hand in steps_between:
    a, b = label.split(" - ")
    print(f"{label:10} = {counts[a] - counts[b]:10,d}   ({why})")
    assert counts[a] - counts[b] == by_hand
fc = 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
print(f"\nThe three FC layers alone: {fc:,d} = {fc / counts['A']:.0%} of A, {fc / counts['E']:.0%} of E.")
assert fc == 123_642_856

step("The counting agrees with real models")
say("""
    count_params must count what vgg() builds. We build all six -- narrow
    (width 1/8: 8 to 64 channels), for 64x64 images, with 128 hidden units,
    so they take a fraction of a second -- and compare with the parameter
    arrays the built models really hold.
""")
backend.seed(0)
small = dict(num_classes=10, input_size=64, width=0.125, hidden=128)
for letter in LETTERS:
    model = vgg(NAME_OF[letter], **small)
    built = model.num_params()
    held = sum(p.size for _, p, _ in model.named_parameters())
    n_conv = sum(isinstance(layer, Conv2d) for layer in model.layers)
    n_fc = sum(isinstance(layer, Linear) for layer in model.layers)
    print(f"{letter:6} built {built:9,d}   count_params {count_params(letter, **small):9,d}   "
          f"{n_conv} conv + {n_fc} FC layers")
    assert built == held == count_params(letter, **small)
    assert n_conv + n_fc == n_weight_layers(letter)
say("""
    The same code builds the full-size nets: vgg("vgg16") gives the 138,357,544
    parameters above (lesson 9 builds it and looks inside).
""")
model = vgg("vgg11_lrn", **small)
print("A-LRN's first block, as built:")
for name, layer in model.named_layers()[:4]:
    print(f"  {name:12} {layer!r}")
assert type(model.layers[2]).__name__ == "LocalResponseNorm"

_lesson.done()
