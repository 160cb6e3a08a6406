"""Lesson 12: CPU and GPU -- the same code on the other backend, and what moves between them.

The paper trained on four GPUs for two to three weeks per net (section 3.3).
tinyvgg runs the same code on NumPy (CPU) or CuPy (GPU): tinyvgg.backend picks
the array module, and every copy between host memory and the device is made
explicitly (to_device / to_host) and counted (transfer_counts()). Copies are
slow compared with arithmetic on the device, so a training step should make
only the ones it needs.

Run:  python lessons/12_cpu_and_gpu.py   [--no-pause]
(Without CuPy or a CUDA device the GPU part is skipped, with the reason; the
rest runs on the CPU and on a pretend device.)
"""

import time

import _lesson
from _lesson import say, step

import numpy as np

from tinyvgg import backend
from tinyvgg.backend import Device
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.optim import SGD

STEPS = 3

step("Which devices are there?")
backend.use("cpu")
print(f"current device: {backend.current()}  (array module: {backend.xp().__name__})")
HAVE_GPU = backend.gpu_available()
print(f"backend.gpu_available(): {HAVE_GPU}")
if not HAVE_GPU:
    try:
        backend.use("gpu")
    except backend.GPUUnavailableError as e:
        print(f"\nThe GPU part of this lesson is skipped, because use('gpu') says:\n  {e}")
    backend.use("cpu")
say("""
    backend.use("gpu") switches everything to CuPy (or the environment
    variable TINYVGG_DEVICE=gpu does, at import). Layers ask the backend for
    the array module, so the same layer code runs on both.
""")
assert backend.current() == "cpu"

step("On the CPU, host and device are the same memory: no copies")
backend.reset_transfer_counts()
a = np.arange(6.0)
b = backend.to_device(a)
c = backend.to_host(b)
print(f"to_device(a) is a: {b is a}, to_host(...) is a: {c is a}")
print(f"transfer_counts(): {backend.transfer_counts()}")
assert b is a and c is a
assert backend.transfer_counts() == {"host_to_device": 0, "device_to_host": 0}


def training_run(device):
    """Build a small VGG-11 on the host (seed 0), move it to ``device``, train
    STEPS steps, read the weights back. Returns (losses, host weights, copy counts)."""
    backend.use("cpu")
    backend.seed(0)
    model = vgg("vgg11", num_classes=4, input_size=32, width=0.125, hidden=32,
                dropout=0.0, init="glorot")
    data = np.random.default_rng(0)
    batches = [(data.standard_normal((16, 3, 32, 32)).astype(np.float32), data.integers(0, 4, 16))
               for _ in range(STEPS)]
    backend.reset_transfer_counts()
    model.to(device)                                 # every parameter array: host -> device
    after_move = backend.transfer_counts()["host_to_device"]
    opt, loss_fn, losses = SGD(model, lr=0.05), SoftmaxCrossEntropy(), []
    for x_host, y_host in batches:
        x, y = backend.to_device(x_host), backend.to_device(y_host)   # 2 copies up
        loss = loss_fn.forward(model.forward(x, train=True), y)
        model.backward(loss_fn.backward())
        opt.step()                                    # no copies: all on the device
        losses.append(float(backend.to_host(loss)))   # 1 copy down, to print it
    weights = [backend.to_host(p) for p in model.parameters()]   # copies down
    counts = backend.transfer_counts()
    backend.use("cpu")
    return losses, weights, counts, after_move, len(model.parameters())


step("A training run on the CPU: zero copies")
say("""
    The same little run is used on every device: build a narrow VGG-11 with
    seed 0 on the host, move it to the device, train three steps (each: copy
    the batch up, forward, loss, backward, SGD step, copy the loss down to
    print it), then copy the weights back. Dropout is off so that every device
    computes exactly the same function (their random streams differ).
""")
cpu_losses, cpu_weights, counts, _, n_params = training_run("cpu")
print(f"losses {np.round(cpu_losses, 4)}\ncopies {counts}")
assert counts == {"host_to_device": 0, "device_to_host": 0}

step("The same run on a pretend device: now we can see the copies")
say("""
    To watch the accounting without a GPU, we hand the backend a pretend
    device: NumPy underneath, but its arrays carry a marker type, so the
    backend treats them as living elsewhere -- it copies on to_device and
    to_host, counts each copy, and refuses to mix them with host arrays.
    (tinyvgg's own tests use the same trick.)
""")


class PretendArray(np.ndarray):
    """An array 'on the pretend device'."""


def _mark(a):
    return a.view(PretendArray) if type(a) is np.ndarray else a


class PretendXP:
    """NumPy, except that every array it creates is a PretendArray."""

    random = np.random

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def wrapped(*args, **kwargs):
            out = f(*args, **kwargs)
            return tuple(_mark(o) for o in out) if isinstance(out, tuple) else _mark(out)
        return wrapped


pretend = Device("pretend", PretendXP(), PretendArray, is_host=False,
                 asarray=lambda a: np.array(a, copy=True).view(PretendArray),
                 asnumpy=lambda a: np.array(a, copy=True).view(np.ndarray))
losses, weights, counts, moved, n_params = training_run(pretend)
print(f"losses {np.round(losses, 4)}\ncopies {counts}")
print(f"  host -> device: {moved} parameter arrays (model.to) + {STEPS} steps x 2 (images, labels)")
print(f"  device -> host: {STEPS} losses (one per step, to print) + {n_params} parameter arrays at the end")
assert moved == n_params == 22                      # 11 weight layers x (weight, bias)
assert counts == {"host_to_device": n_params + 2 * STEPS, "device_to_host": STEPS + n_params}
assert losses == cpu_losses                          # NumPy underneath: bit for bit
say("""
    Nothing else moves: the forward and backward passes and the SGD update
    stay on the device. Reading the loss every step costs a copy (and, on a
    GPU, a wait for the device to finish); a real training loop reads it only
    when it logs.
""")

step("Nothing is copied silently: mixing host and device is an error")
backend.use("cpu")
backend.seed(0)
model = vgg("vgg11", num_classes=4, input_size=32, width=0.125, hidden=32).to(pretend)
try:
    model.forward(np.zeros((1, 3, 32, 32), dtype=np.float32))   # a host array
    raise AssertionError("mixing should be refused")
except TypeError as e:
    print(f"TypeError: {str(e)[:160]}...")
y = model.forward(backend.to_device(np.zeros((1, 3, 32, 32), dtype=np.float32)))
print(f"after to_device: logits of type {type(y).__name__}, shape {y.shape}")
assert isinstance(y, PretendArray)
backend.use("cpu")

step("The same run on the GPU")
if not HAVE_GPU:
    print("Skipped: no usable GPU here (see step 1). On a machine with CuPy and a CUDA device,")
    print("this step repeats the run on the GPU, checks the same copy counts and compares the")
    print("losses and weights with the CPU's.")
else:
    losses, weights, counts, moved, n_params = training_run("gpu")
    print(f"GPU losses {np.round(losses, 4)}\nCPU losses {np.round(cpu_losses, 4)}\ncopies {counts}")
    assert counts == {"host_to_device": n_params + 2 * STEPS, "device_to_host": STEPS + n_params}
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-3)
    for w_gpu, w_cpu in zip(weights, cpu_weights):
        np.testing.assert_allclose(w_gpu, w_cpu, rtol=1e-3, atol=1e-5)
    say("""
        The same numbers up to float32 round-off: the GPU adds up in a different
        order. Now the reason for the GPU -- a batch of 16 64x64 images through a
        quarter-width VGG-11 (16 to 128 channels), forward and backward:
    """)
    timings = {}
    for dev, reps in (("cpu", 1), ("gpu", 3)):       # the first GPU pass compiles kernels
        backend.use(dev)
        backend.seed(0)
        net = vgg("vgg11", num_classes=10, input_size=64, width=0.25, hidden=256)
        x = backend.to_device(np.random.default_rng(0).standard_normal((16, 3, 64, 64)).astype(np.float32))
        for _ in range(reps):
            t0 = time.perf_counter()
            out = net.forward(x, train=True)
            net.backward(backend.xp().ones_like(out))
            backend.to_host(out[0, 0])                # waits for the device to finish
            timings[dev] = time.perf_counter() - t0
        print(f"{dev}: {timings[dev] * 1e3:8.1f} ms per forward + backward")
    backend.use("cpu")
    print(f"speed-up: {timings['cpu'] / timings['gpu']:.0f}x")

assert backend.current() == "cpu"
_lesson.done()
