"""Lesson 10: training a small VGG, reading its curves -- and three broken trainings.

Section 3.1 of the paper: mini-batch SGD with momentum 0.9, weight decay
5e-4, dropout 0.5 on the first two FC layers, learning rate 1e-2. Here we
train a narrow VGG-11 on a toy problem that takes seconds, with our own
four-line loop, and then break the training three ways that happen in real
life: a learning rate that is too high, a deep net that starts from
N(0, 0.01) without batch normalisation, and a forgotten ReLU. Each leaves a
recognisable mark on the curves.

Run:  python lessons/10_training_and_its_failures.py   [--no-pause]   (~20 s)
"""

import math

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.layers import Conv2d, Linear, MaxPool2d, ReLU
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg

from tinyvgg.optim import SGD

K = 4          # classes
STEPS = 48     # SGD steps per training run
BATCH = 32


def make_images(n, seed):
    """Stripes in 4 orientations (0, 45, 90, 135 degrees): random phase, stripe
    width, colour and noise. The class is the orientation. A phase that varies
    at random means no single pixel says anything about the class: a purely
    linear model on the pixels cannot solve it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, K, n)
    theta = labels * np.pi / 4 + rng.normal(0, 0.08, n)
    freq = rng.uniform(0.6, 1.2, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:32, 0:32]
    along = np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy
    stripes = np.sin(freq[:, None, None] * along + phase[:, None, None])
    colour = rng.uniform(0.5, 1.5, (n, 3))
    images = stripes[:, None] * colour[:, :, None, None] + 0.5 * rng.standard_normal((n, 3, 32, 32))
    return images.astype(np.float32), labels


def accuracy(model, x, y):
    return float(np.mean(model.forward(x, train=False).argmax(axis=1) == y))


def train(model, lr, x, y, x_val, y_val, steps=STEPS, eval_every=6):
    """The whole training loop: forward, loss, backward, SGD step. As in the
    paper, the learning rate is divided by 10 late in training (here after 3/4
    of the steps). Stops at the first loss that is not a finite number.
    Returns the history."""
    opt = SGD(model, lr=lr, momentum=0.9, weight_decay=5e-4)
    loss_fn = SoftmaxCrossEntropy()
    order = np.random.default_rng(0).permutation(np.arange(steps * BATCH) % len(x))
    hist = {"step": [], "loss": [], "eval_step": [], "val_acc": []}
    with np.errstate(all="ignore"):   # a diverging run overflows: we look at the numbers instead
        for s in range(steps):
            idx = order[s * BATCH:(s + 1) * BATCH]
            if s == 3 * steps // 4:
                opt.lr /= 10
            loss = loss_fn.forward(model.forward(x[idx], train=True), y[idx])
            hist["step"].append(s + 1)
            hist["loss"].append(float(loss))
            if not math.isfinite(loss):
                print(f"  step {s + 1}: loss is {loss} -- stopping")
                break
            model.backward(loss_fn.backward())
            opt.step()
            if (s + 1) % eval_every == 0:
                hist["eval_step"].append(s + 1)
                hist["val_acc"].append(accuracy(model, x_val, y_val))
                print(f"  step {s + 1:3d}  train loss {loss:8.4f}  validation accuracy {hist['val_acc'][-1]:.2f}")
    return hist


def small_vgg(name, init="glorot", **kw):
    """A narrow VGG for 32x32 images: 1/16 of the paper's width (4 to 32 channels)."""
    backend.seed(0)
    return vgg(name, num_classes=K, input_size=32, width=1 / 16, hidden=64, init=init, **kw)


x_train, y_train = make_images(384, seed=1)
x_val, y_val = make_images(128, seed=2)
runs = {}

step("The data: stripes in four orientations")
say("""
    384 training and 128 validation images, 32x32 RGB, four classes: the
    orientation of the stripes. Chance is 25%, and an untrained network's loss
    is log(4) = 1.386 (lesson 4).
""")
print(f"x_train {x_train.shape} {x_train.dtype}, labels {np.bincount(y_train)} per class")
plt = _lesson.pyplot()
fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
for ax, i in zip(axes.ravel(), [int(np.flatnonzero(y_train == c)[j]) for j in range(4) for c in range(K)]):
    img = x_train[i].transpose(1, 2, 0)
    ax.imshow((img - img.min()) / (img.max() - img.min()))
    ax.set_title(f"class {y_train[i]}", fontsize=8)
    ax.axis("off")
_lesson.save(fig, "10_data.png")

step("A healthy training run")
say("""
    VGG-11 (configuration A) at 1/16 width (4 to 32 channels), 64 hidden units,
    dropout 0.5, SGD with momentum 0.9 and weight decay 5e-4, learning rate
    0.02 divided by 10 for the last quarter, batches of 32, 48 steps. The weights start from Glorot's scaled
    initialisation (the paper notes it works without pre-training), and --
    something the paper did not have -- batch normalisation after each
    convolution (vgg11_bn; Ioffe & Szegedy, 2015). Both make a small net like
    this train reliably in a few dozen steps.
""")
model = small_vgg("vgg11", batch_norm=True)
runs["healthy"] = train(model, 0.02, x_train, y_train, x_val, y_val)
h = runs["healthy"]
say("""
    How to read it: the loss starts around or above log(4) = 1.386 (the
    net knows nothing, and its random logits are confidently wrong on some
    images) and falls; validation accuracy climbs from chance (0.25) towards 1. The
    training loss is noisy -- every step sees a different batch, and dropout
    is on -- so look at its trend.
""")
print(f"first loss {h['loss'][0]:.3f}, mean of the last six {np.mean(h['loss'][-6:]):.3f}")
assert h["loss"][0] > 0.9 * math.log(K)
assert np.mean(h["loss"][-6:]) < 0.5 * math.log(K)
assert h["val_acc"][-1] >= 0.75

step("Broken 1: the learning rate is too high")
say("""
    Same net, learning rate 30 instead of 0.02 (batch normalisation makes a
    net forgiving, so it takes a big mistake here). Each step overshoots, the
    weights grow, the logits grow, the loss grows -- by orders of magnitude --
    until, usually, something overflows and the loss becomes inf or NaN.
    (tinyvgg's trainer stops at the first such loss and says so.)
""")
model = small_vgg("vgg11", batch_norm=True)
runs["lr too high"] = train(model, 30.0, x_train, y_train, x_val, y_val)
losses = runs["lr too high"]["loss"]
print("losses step by step:", ", ".join(f"{v:.3g}" for v in losses))
finite = [v for v in losses if math.isfinite(v)]
assert max(finite) > 1000 * losses[0]                               # it blew up ...
assert not math.isfinite(losses[-1]) or np.mean(losses[-6:]) > math.log(K)   # ... and learned nothing
say("""
    The mark: the loss goes UP, fast, by orders of magnitude, and usually
    ends as nan. (Sometimes a net limps on after the explosion, at a loss
    far above log(4), learning nothing.) The fix: a smaller learning rate
    (divide by 10 until it trains), and often a short warm-up.
""")

step("Broken 2: a deep net from N(0, 0.01), without batch normalisation")
say("""
    The paper initialised net A with weights from N(0, 0.01) and then started
    the deeper nets from A's trained layers, because "bad initialisation can
    stall learning due to the instability of gradient in deep nets" (section
    3.1). Here is why. Every layer multiplies the size of the signal by about
    0.01 * sqrt(fan_in / 2) -- far below 1 for these layers -- forwards, and
    the gradient the same way backwards. The deeper the net, the smaller what
    arrives. One backward pass at initialisation, first-layer gradient norm:
""")
loss_fn = SoftmaxCrossEntropy()


def first_layer_gradient(model):
    loss_fn.forward(model.forward(x_train[:BATCH], train=True), y_train[:BATCH])
    model.backward(loss_fn.backward())
    first = next(layer for layer in model.layers if isinstance(layer, Conv2d))
    return float(np.linalg.norm(first.grads["weight"]))


grads = {}
for name, kw, label in [("vgg11", {"init": "paper"}, "A (11 layers), N(0, 0.01)"),
                        ("vgg13", {"init": "paper"}, "B (13 layers), N(0, 0.01)"),
                        ("vgg16", {"init": "paper"}, "D (16 layers), N(0, 0.01)"),
                        ("vgg19", {"init": "paper"}, "E (19 layers), N(0, 0.01)"),
                        ("vgg19", {"init": "glorot"}, "E, Glorot initialisation"),
                        ("vgg19", {"init": "paper", "batch_norm": True}, "E, N(0, 0.01) + batch norm")]:
    grads[label] = first_layer_gradient(small_vgg(name, **kw))
    print(f"  {label:32} {grads[label]:9.1e}")
paper = [grads[k] for k in list(grads)[:4]]
assert all(a > b for a, b in zip(paper, paper[1:])), "deeper -> smaller gradients"
assert paper[-1] < 1e-12 and grads["E, Glorot initialisation"] > 1e-5
assert grads["E, N(0, 0.01) + batch norm"] > 1e-3
say("""
    Gradients of 1e-20 change nothing: train E from N(0, 0.01) and the loss
    stays at log(4). It wobbles a little, because the one thing that does
    learn is the last layer's bias (its gradient does not pass through the
    other layers): it learns how common each class is, nothing more. (Our nets
    are narrow, so fan_in is small and even A suffers here; at the paper's
    full width each layer's factor is larger, and the paper trained A from
    N(0, 0.01): it is depth that stalls.)
""")
model = small_vgg("vgg19", init="paper")
runs["deep, N(0, 0.01)"] = train(model, 0.02, x_train, y_train, x_val, y_val, steps=18)
stalled = runs["deep, N(0, 0.01)"]
print(f"losses: {', '.join(f'{v:.3f}' for v in stalled['loss'])}")
assert max(abs(v - math.log(K)) for v in stalled["loss"]) < 0.05
commonest = np.bincount(y_val).max() / len(y_val)   # accuracy of "always the commonest class"
assert max(stalled["val_acc"]) <= commonest
say("""
    The mark: a loss that sits at log(K) from the first step, and accuracy
    no better than always guessing the commonest class. The fixes: start from a trained shallower net (the
    paper's way; tinyvgg.models.init_from(deep, trained_A) copies A's first
    four conv layers and its FC layers), or a scaled initialisation (Glorot --
    the paper notes it works without pre-training), or batch normalisation.
""")

step("Broken 3: a forgotten ReLU")
say("""
    A model definition that forgot its activation functions: each ReLU below
    is replaced by a layer that passes its input through unchanged. Without
    ReLUs the convolutions (and batch norms) compose into one linear map;
    only the max-pools are left to bend it.
""")


class Forgotten:
    """What is left where the ReLU was forgotten: nothing (the identity)."""

    params, buffers = {}, {}

    def __init__(self):
        self.grads = {}

    def forward(self, x, train=True):
        return x

    def backward(self, dy):
        return dy


model = small_vgg("vgg11", batch_norm=True)
model.layers = [Forgotten() if isinstance(layer, ReLU) else layer for layer in model.layers]
runs["forgotten ReLU"] = train(model, 0.02, x_train, y_train, x_val, y_val)
broken = runs["forgotten ReLU"]
print(f"final training loss {broken['loss'][-1]:.4f}, validation accuracy along the way: "
      f"{' '.join(f'{a:.2f}' for a in broken['val_acc'])}")
assert min(broken["loss"]) < 0.25 * math.log(K)   # it does learn
say("""
    Surprise: it learns, fits the training set, and may even look better
    than the healthy run. Max-pooling is non-linear too (a max of linear
    functions), and for stripes that is enough. But the stacked convolutions
    have collapsed into one linear map per block (lesson 7): the depth the
    paper is about is gone. The curves do not give this bug away.
    Two checks that do. First, a block without ReLUs is one
    affine map: f(a + b) = f(a) + f(b) - f(0) holds for the first block
    (everything before the first max-pool, evaluated with train=False).
""")


def first_block(model, x):
    for layer in model.layers:
        if isinstance(layer, MaxPool2d):
            return x
        x = layer.forward(x, train=False)


healthy_model = small_vgg("vgg11", batch_norm=True)
a, b = x_val[:8], x_val[8:16]
zero = np.zeros_like(a)
for label, net in (("with ReLUs", healthy_model), ("ReLUs forgotten", model)):
    gap = np.abs(first_block(net, a + b) - first_block(net, a) - first_block(net, b)
                 + first_block(net, zero)).max()
    scale = np.abs(first_block(net, a + b)).max()
    print(f"  {label:16} max |f(a+b) - f(a) - f(b) + f(0)| = {gap:.1e}  (outputs up to {scale:.1f})")
    if net is model:
        assert gap < 1e-4 * scale
    else:
        assert gap > 0.1 * scale
say("""
    Second, look at what enters each max-pool. After a ReLU nothing is
    negative; here about half of it is.
""")


def negative_fraction_before_pools(model):
    out, fractions = x_val, []
    for layer in model.layers:
        if isinstance(layer, MaxPool2d):
            fractions.append(float(np.mean(out < 0)))
        if isinstance(layer, Linear):
            break
        out = layer.forward(out, train=False)
    return fractions


frac_ok = negative_fraction_before_pools(healthy_model)
frac_bad = negative_fraction_before_pools(model)
print("fraction of negative values entering each max-pool:")
print("  with ReLUs:     ", " ".join(f"{f:.2f}" for f in frac_ok))
print("  ReLUs forgotten:", " ".join(f"{f:.2f}" for f in frac_bad))
assert max(frac_ok) == 0.0 and min(frac_bad) > 0.2

step("All four runs in one picture")
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for label, run in runs.items():
    finite = [v if math.isfinite(v) else np.nan for v in run["loss"]]
    axes[0].plot(run["step"], finite, label=label)
    if run["val_acc"]:
        axes[1].plot(run["eval_step"], run["val_acc"], "o-", label=label)
axes[0].set_yscale("log")
axes[0].set_ylim(1e-3, 1e4)   # the diverging run leaves through the top
axes[0].axhline(math.log(K), color="gray", ls=":", label="log(4): knows nothing")
axes[0].set_xlabel("SGD step")
axes[0].set_ylabel("training loss (log scale)")
axes[0].legend(fontsize=8)
axes[1].axhline(1 / K, color="gray", ls=":", label="chance")
axes[1].set_xlabel("SGD step")
axes[1].set_ylabel("validation accuracy")
axes[1].set_ylim(0, 1.05)
axes[1].legend(fontsize=8)
_lesson.save(fig, "10_curves.png")
say("""
    Falling loss and rising accuracy: healthy. Loss shooting up and then
    missing (NaN): learning rate too high. Loss flat at log(K): no gradient
    gets through. And a network that learns is not proof that it is the
    network you meant: look inside it.
""")

_lesson.done()
