"""Lesson 9: where VGG-16's cost lives -- parameters against computation and memory.

VGG-16 (configuration D) has 138M parameters, and 15.5G multiply-adds for one
224x224 image. They live in different places: the three fully connected layers
hold most of the parameters, the thirteen convolutions do almost all of the
computation and produce almost all of the activations. This is why dense
evaluation (lesson 11) and multi-GPU training (paper, section 3.3) are about
the convolutions, and why the FC layers are what one trims to save memory.

Run:  python lessons/09_where_the_cost_lives.py   [--no-pause]   (builds the full VGG-16: ~10 s)
"""

import time

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.layers import Conv2d, Linear
from tinyvgg.models import count_params, vgg

step("Build the real VGG-16 and push one 224x224 image through it")
say("""
    138 million float32 parameters: 553 MB. Building draws them all from
    N(0, 0.01^2), the paper's initialisation, which takes a few seconds.
""")
backend.seed(0)
t0 = time.perf_counter()
model = vgg("vgg16", init=None)  # the layer constructors draw N(0, 0.01^2): counting needs no more
print(f"built {model!r} in {time.perf_counter() - t0:.1f} s")
assert model.num_params() == count_params("vgg16") == 138_357_544

x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
t0 = time.perf_counter()
shapes = []
h = x
for layer in model.layers:           # model.forward(x) does just this loop
    h = layer.forward(h, train=False)
    shapes.append(h.shape[1:])
print(f"forward pass of one image: {time.perf_counter() - t0:.1f} s, logits {h.shape}")
assert h.shape == (1, 1000)

step("The per-layer table")
say("""
    model.layer_table() lists every layer's output shape, parameters and
    multiply-adds (MACs) for one image. A conv layer with F filters over C
    channels makes F*C*3*3 multiply-adds at each of its H*W output pixels;
    a fully connected layer makes in*out. We keep the 16 weight layers,
    named as in the literature (conv1_1 ... fc8), and check the table's
    shapes against the forward pass we just ran.
""")
rows = model.layer_table()
assert [r["output_shape"] for r in rows] == [tuple(s) for s in shapes]
weight_rows, names, b, i = [], [], 1, 0
for r in rows:
    if isinstance(r["layer"], Conv2d):
        i += 1
        names.append(f"conv{b}_{i}")
        weight_rows.append(r)
    elif type(r["layer"]).__name__ == "MaxPool2d":
        b, i = b + 1, 0
    elif isinstance(r["layer"], Linear):
        names.append(f"fc{6 + sum(n.startswith('fc') for n in names)}")
        weight_rows.append(r)
params = np.array([r["params"] for r in weight_rows], dtype=float)
macs = np.array([r["macs"] for r in weight_rows], dtype=float)
acts = np.array([np.prod(r["output_shape"]) for r in weight_rows], dtype=float)
is_fc = np.array([n.startswith("fc") for n in names])
print(f"{'layer':8} {'output':>16} {'params':>13} {'MACs':>15} {'activations':>12}")
for n, r, p, m, a in zip(names, weight_rows, params, macs, acts):
    print(f"{n:8} {str(r['output_shape']):>16} {p:13,.0f} {m:15,.0f} {a:12,.0f}")
print(f"{'total':8} {'':>16} {params.sum():13,.0f} {macs.sum():15,.0f} {acts.sum():12,.0f}")
assert len(names) == 16 and is_fc.sum() == 3
assert params.sum() == model.num_params()

step("Parameters live in the fully connected layers")
fc_share = params[is_fc].sum() / params.sum()
print(f"FC layers: {params[is_fc].sum() / 1e6:6.1f} M parameters = {fc_share:.1%}")
print(f"  fc6 alone ({int(params[names.index('fc6')]):,d} = 7*7*512*4096 + 4096) "
      f"= {params[names.index('fc6')] / params.sum():.1%}")
print(f"conv layers: {params[~is_fc].sum() / 1e6:6.1f} M parameters = {1 - fc_share:.1%}")
assert fc_share > 0.85
say("""
    fc6 connects every one of the 7*7*512 = 25,088 values of the last feature
    map to each of 4096 units: 103 million weights, three quarters of the
    network. A conv filter is shared by every position, so even the biggest
    conv layer (512 -> 512) has only 2.4M.
""")

step("Computation and activations live in the convolutions")
conv_mac_share = macs[~is_fc].sum() / macs.sum()
conv_act_share = acts[~is_fc].sum() / acts.sum()
print(f"multiply-adds: {macs.sum() / 1e9:.2f} G in all; "
      f"conv layers {conv_mac_share:.2%}, FC {1 - conv_mac_share:.2%}")
print(f"activations (outputs of the weight layers): {acts.sum() / 1e6:.1f} M values; "
      f"conv layers {conv_act_share:.3%}")
assert conv_mac_share > 0.99 and conv_act_share > 0.99
assert 15.4e9 < macs.sum() < 15.6e9
all_outputs = sum(np.prod(s) for s in shapes)
print(f"every layer's output (ReLUs and pools too): {all_outputs / 1e6:.1f} M values "
      f"= {all_outputs * 4 / 1e6:.0f} MB per image in float32")
batch_gb = all_outputs * 4 * 256 / 1e9
param_gb = params.sum() * 4 / 1e9
print(f"for a batch of 256 (the paper's): {batch_gb:.1f} GB of activations, "
      f"against {param_gb:.2f} GB of parameters")
say("""
    Each FC weight is used once per image; each conv weight at every pixel of
    its feature map (50,176 times in block 1). The first two layers alone,
    64 channels at full 224x224 resolution, produce nearly half of the
    activations. Training keeps the activations for the backward pass, for
    every image of the batch: that, far more than the parameters, is what
    fills a GPU's memory.
""")
assert acts[:2].sum() / acts.sum() > 0.4
assert batch_gb > 10 * param_gb

step("The picture")
plt = _lesson.pyplot()
fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
colors = np.where(is_fc, "tab:orange", "tab:blue")
for ax, values, label in [(axes[0], params / 1e6, "parameters (M)"),
                          (axes[1], macs / 1e9, "multiply-adds (G)"),
                          (axes[2], acts * 4 / 1e6, "activations (MB, float32)")]:
    ax.bar(range(16), values, color=colors)
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)
axes[2].set_xticks(range(16))
axes[2].set_xticklabels(names, rotation=60)
axes[0].set_title("VGG-16, one 224x224 image: conv layers (blue) vs fully connected (orange)")
_lesson.save(fig, "09_vgg16_cost.png")

_lesson.done()
