"""Replicas in helper processes (tinyvgg.replicas): the split step is the whole batch's step
(checked in float64 against the model stepping the batch itself), a failing or dying
replica raises instead of hanging, and the trainer and command line use them."""

import os
import time

import numpy as np
import pytest
from PIL import Image

from tinyvgg import backend, checkpoint, replicas
from tinyvgg.cli import main
from tinyvgg.losses import SoftmaxCrossEntropy
from tinyvgg.models import vgg
from tinyvgg.ops.cpu import parallel
from tinyvgg.replicas import (MAX_DEFAULT_REPLICAS, MAX_IMAGE_MACS, MIN_DEFAULT_SHARE, MIN_STEP_MACS, ReplicaError,
                              Replicas, default_replicas)
from tinyvgg.train import TrainConfig, Trainer, train

from .test_train import InterruptAt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="replicas need a POSIX system")


@pytest.fixture(params=["shared", "messages"])
def meetings(request, monkeypatch):
    """BatchNorm's meetings through the shared memory (the fast path, x86 only) or as
    messages on the socket (every other machine): the tests taking this run on both."""
    if request.param == "shared" and not replicas.SHARED_MEETINGS:
        pytest.skip("meetings through shared memory are for x86 processors (total store order)")
    monkeypatch.setattr(replicas, "SHARED_MEETINGS", request.param == "shared")
    return request.param


def tiny(batch_norm=True, dropout=0.0, dtype=np.float64, seed=0):
    backend.seed(seed)
    return vgg("vgg11", num_classes=10, input_size=32, width=1 / 16, hidden=32, batch_norm=batch_norm,
               dropout=dropout, dtype=dtype)


def batch(n, seed=1, dtype=np.float64):
    r = np.random.default_rng(seed)
    return r.standard_normal((n, 3, 32, 32)).astype(dtype), r.integers(0, 10, n)


def whole_step(model, x, y):
    """The reference: the model steps the whole batch itself."""
    loss_fn = SoftmaxCrossEntropy()
    logits = model.forward(x, train=True)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward(), input_grad=False)
    return logits, loss


def assert_same_step(model, ref, logits, loss, ref_logits, ref_loss):
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for (name, _, g), (_, _, want) in zip(model.named_parameters(), ref.named_parameters()):
        # atol: a convolution's bias before BatchNorm has a gradient of zero plus rounding
        np.testing.assert_allclose(g, want, rtol=1e-9, atol=1e-13 * max(1.0, np.abs(want).max()),
                                   err_msg=name)
    for (name, b), (_, want) in zip(model.named_buffers(), ref.named_buffers()):
        np.testing.assert_allclose(b, want, rtol=1e-12, err_msg=name)


def check_split_step(reps, ref, x, y):
    """``reps`` steps (x, y) split; ``ref``, a model with the same state, steps it whole."""
    ref_logits, ref_loss = whole_step(ref, x, y)
    logits, loss = reps.forward_backward(x, y)
    assert_same_step(reps.model, ref, logits, loss, ref_logits, ref_loss)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("n, size", [(2, 9), (3, 7)])
def test_split_step_is_the_whole_batch_step_in_float64(batch_norm, n, size, meetings):
    """Uneven shares too (9 images on 2 replicas, 7 on 3): the gradients, the logits, the
    loss and BatchNorm's running statistics equal the model's own step up to rounding."""
    x, y = batch(size)
    ref = tiny(batch_norm)
    ref_logits, ref_loss = whole_step(ref, x, y)
    model = tiny(batch_norm)
    reps = Replicas(model, SoftmaxCrossEntropy(), n, max_batch=size)
    try:
        logits, loss = reps.forward_backward(x, y)
        assert (reps.steps, reps.whole) == (1, 0)
        assert_same_step(model, ref, logits, loss, ref_logits, ref_loss)
        # a second step after an update of the parameters (the helpers must see it)
        for (_, p, g), (_, q, h) in zip(model.named_parameters(), ref.named_parameters()):
            p -= 0.1 * g
            q -= 0.1 * h
        check_split_step(reps, ref, *batch(size, seed=2))
    finally:
        reps.close()


def test_parameters_replaced_after_the_first_step_reach_the_helpers():
    """The model's parameters move to shared memory at the first step; an array the
    model is given later (a plain assignment, not an in-place update) is moved at the
    next step, so the helpers never step stale weights."""
    x, y = batch(8)
    model, ref = tiny(), tiny()
    reps = Replicas(model, SoftmaxCrossEntropy(), 2, max_batch=8)
    try:
        check_split_step(reps, ref, x, y)
        for m in (model, ref):
            conv = m.layers[0]
            conv.params["weight"] = conv.params["weight"] * 3.0  # a new array
        check_split_step(reps, ref, x, y)
    finally:
        reps.close()


def test_dropout_masks_are_drawn_in_every_replica_and_reproducible():
    x, y = batch(8)
    runs = []
    for _ in range(2):
        model = tiny(batch_norm=False, dropout=0.5)
        reps = Replicas(model, SoftmaxCrossEntropy(), 2, max_batch=8)
        try:
            backend.seed(5)
            logits, _ = reps.forward_backward(x, y)
        finally:
            reps.close()
        runs.append((logits, [g.copy() for _, _, g in model.named_parameters()]))
    no_dropout = model.forward(x, train=False)  # no BatchNorm: train mode without dropout
    for rows in (slice(0, 4), slice(4, 8)):  # both shares were dropped out
        assert not np.allclose(runs[0][0][rows], no_dropout[rows])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("bad", [0, 8], ids=["in-the-model's-share", "in-the-helper's-share"])
def test_an_error_in_any_replica_is_raised_and_the_next_step_works(batch_norm, bad, meetings):
    x, y = batch(9)
    y_bad = y.copy()
    y_bad[bad] = 99  # a label outside the 10 classes: the loss refuses it
    model = tiny(batch_norm)
    reps = Replicas(model, SoftmaxCrossEntropy(), 2, max_batch=9)
    try:
        with pytest.raises(ValueError, match="labels must lie in"):
            reps.forward_backward(x, y_bad)
        ref = tiny(batch_norm)
        for (_, p, _), (_, q, _) in zip(model.named_parameters(), ref.named_parameters()):
            q[...] = p
        for (_, b), (_, c) in zip(model.named_buffers(), ref.named_buffers()):
            c[...] = b  # (the failed step's forward updated the running statistics)
        check_split_step(reps, ref, x, y)
    finally:
        reps.close()


@pytest.mark.parametrize("when", ["between-steps", "at-a-meeting"])
def test_a_helper_that_dies_is_a_replica_error_not_a_hang(meetings, when):
    """A helper killed between two steps (the next step's command finds it gone), or
    while the model waits at a meeting for its sums (in shared memory or as a message):
    a ReplicaError naming it, instead of waiting for ever."""
    x, y = batch(8)
    reps = Replicas(tiny(), SoftmaxCrossEntropy(), 2, max_batch=8)
    try:
        reps.forward_backward(x, y)
        reps._procs[0].kill()
        reps._procs[0].wait()
        with pytest.raises(ReplicaError, match="replica process 1"):
            if when == "between-steps":
                reps.forward_backward(x, y)
            else:  # the model alone at a new step's first meeting
                reps._step_id += 1
                reps._final, reps._meetings = [None, None], 0
                reps._sum_over_replicas(np.zeros(9))
    finally:
        reps.close()


class Recorder:
    def __init__(self):
        self.calls = 0

    def after_forward(self, name, layer, y, train):
        self.calls += 1


def test_helpers_import_this_package_not_one_in_the_working_directory(tmp_path, monkeypatch):
    """`python -c` puts the working directory first on a helper's path: the helpers must
    still import the package the training process runs, not another copy there (a
    second checkout, an older install)."""
    (tmp_path / "tinyvgg").mkdir()
    (tmp_path / "tinyvgg" / "__init__.py").write_text("raise ImportError('not the tinyvgg in use')\n")
    monkeypatch.chdir(tmp_path)
    reps = Replicas(tiny(), SoftmaxCrossEntropy(), 2, max_batch=8)
    try:
        check_split_step(reps, tiny(), *batch(8))
    finally:
        reps.close()


def test_hooks_and_small_batches_make_a_whole_step():
    """Model hooks (the doctor) would see one process only, and a batch of fewer images
    than replicas cannot be split: both run whole, on the model, and give its step."""
    model = tiny()
    reps = Replicas(model, SoftmaxCrossEntropy(), 3, max_batch=8)
    try:
        check_split_step(reps, tiny(), *batch(2))
        hook = model.add_hook(Recorder())
        x, y = batch(8)
        reps.forward_backward(x, y)
        assert hook.calls == len(model.layers)
        assert (reps.steps, reps.whole) == (0, 2) and reps._block is None  # no helper was started
    finally:
        reps.close()


def test_bad_arguments_are_value_errors():
    model = tiny()
    with pytest.raises(ValueError, match="n must be a whole number of at least 2"):
        Replicas(model, SoftmaxCrossEntropy(), 1, max_batch=8)
    with pytest.raises(ValueError, match="max_batch"):
        Replicas(model, SoftmaxCrossEntropy(), 4, max_batch=2)


def test_default_is_one_per_core_for_large_steps_only(monkeypatch):
    monkeypatch.setattr(replicas, "SHARED_MEETINGS", True)
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    small = tiny(dtype=np.float32)
    per_image = sum(r["macs"] for r in small.layer_table())
    assert default_replicas(small, 8) == 1
    big_batch = int(MIN_STEP_MACS // per_image) + 1
    assert default_replicas(small, big_batch) == 2
    assert default_replicas(small, big_batch, world=2) == 1  # MPI ranks share the cores already
    imagenet = vgg("vgg11", num_classes=10, input_size=224, width=1, hidden=8)
    assert sum(r["macs"] for r in imagenet.layer_table()) > MAX_IMAGE_MACS
    assert default_replicas(imagenet, 64) == 1  # large layers: the worker threads do well
    monkeypatch.setattr(parallel, "workers", lambda: 64)  # a big machine: capped
    quarter = vgg("vgg11", num_classes=10, input_size=32, width=0.25, hidden=8)  # ~10M per image
    assert default_replicas(quarter, 64 * MIN_DEFAULT_SHARE) == MAX_DEFAULT_REPLICAS
    assert default_replicas(quarter, 3 * MIN_DEFAULT_SHARE + 1) == 3  # MIN_DEFAULT_SHARE images each
    assert default_replicas(quarter, 2 * MIN_DEFAULT_SHARE - 1) == 1  # (its multiply-adds would do)
    monkeypatch.setattr(replicas, "SHARED_MEETINGS", False)  # meetings as messages: 64 images each
    assert default_replicas(quarter, 2 * replicas.MIN_DEFAULT_SHARE_MESSAGES - 1) == 1
    assert default_replicas(quarter, 2 * replicas.MIN_DEFAULT_SHARE_MESSAGES) == 2
    monkeypatch.setattr(parallel, "workers", lambda: 1)
    assert default_replicas(small, big_batch) == 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 RGB PNGs of 32 x 32 whose colour says the class."""
    root = tmp_path_factory.mktemp("replicas") / "train"
    r = np.random.default_rng(0)
    for k, c in enumerate([(220, 40, 40), (40, 220, 40), (40, 40, 220)]):
        (root / f"class{k}").mkdir(parents=True)
        for i in range(8):
            img = np.clip(np.array(c) + r.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{k}" / f"{i}.png")
    return root


def config(folder, out, **kw):
    return TrainConfig(**{**dict(model="vgg11", dataset="folder", data_dir=str(folder), epochs=2, batch_size=6,
                                 lr=0.05, width=1 / 16, hidden=16, batch_norm=True, schedule="cosine",
                                 val_size=0.25, seed=3, out=str(out), progress=False, dtype="float64"), **kw})


def test_training_with_replicas_ends_with_the_weights_of_training_without(folder, tmp_path, capsys):
    """Two epochs of `train` in float64 (BatchNorm, no dropout): with 2 replicas the
    weights end where the model stepping every batch itself ends, up to rounding."""
    train(config(folder, tmp_path / "whole", replicas=1))
    assert "replicas:" not in capsys.readouterr().out
    train(config(folder, tmp_path / "split", replicas=2))
    assert "replicas: 2" in capsys.readouterr().out
    a = checkpoint.load(tmp_path / "whole" / "checkpoint.npz").model.state_dict()
    b = checkpoint.load(tmp_path / "split" / "checkpoint.npz").model.state_dict()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-8, atol=1e-10, err_msg=k)


def test_ctrl_c_with_replicas_saves_a_checkpoint_and_resume_is_exact(folder, tmp_path, capsys):
    """The helpers ignore Ctrl-C (the training process saves its checkpoint and ends
    them); the resumed run ends with the weights of the uninterrupted one, bit for bit:
    the split, the order of the sums and the dropout seeds are the same."""
    kw = dict(replicas=2, dropout=0.5, batch_norm=False, lr=0.01)
    train(config(folder, tmp_path / "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(config(folder, tmp_path / "cut", **kw), hooks=[InterruptAt(4)])  # mid epoch 2
    assert "interrupted: checkpoint saved" in capsys.readouterr().out
    train(config(folder, tmp_path / "cut", **kw), resume=tmp_path / "cut")
    a = checkpoint.load(tmp_path / "full" / "checkpoint.npz").model.state_dict()
    b = checkpoint.load(tmp_path / "cut" / "checkpoint.npz").model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_trainer_refuses_replicas_it_cannot_use(folder, tmp_path):
    with pytest.raises(ValueError, match="--data-parallel"):
        Trainer(config(folder, tmp_path / "a", replicas=2), shard=(0, 2)).setup()
    with pytest.raises(ValueError, match="batches of at least 3 images"):
        Trainer(config(folder, tmp_path / "b", replicas=3, batch_size=2)).setup()


@pytest.mark.parametrize("value", ["0", "-2"])
def test_command_line_replicas_below_1_exit_2(folder, tmp_path, capsys, value):
    status = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--width", "0.0625",
                   "--hidden", "8", "--epochs", "1", "--batch-size", "4", "--no-progress",
                   "--out", str(tmp_path / "run"), "--replicas", value])
    assert status == 2
    err = capsys.readouterr().err
    assert "--replicas must be a whole number of at least 1" in err and "Traceback" not in err


def test_a_helper_stopped_in_the_middle_of_a_step_ends_cleanly(capfd, meetings):
    """Ctrl-C can end the training between two BatchNorm meetings: the helper waiting
    for a total then gets the stop message, and must end quietly (status 0, no
    traceback) instead of failing on it."""
    x, y = batch(8)
    reps = Replicas(tiny(), SoftmaxCrossEntropy(), 2, max_batch=8)
    reps.forward_backward(x, y)  # starts the helper
    reps._step_id += 1
    reps._send(1, ("step", reps._step_id, 4, 8, 0))  # the helper's share of a new step
    if meetings == "messages":
        assert reps._next(1)[0] == "sums"  # it waits at the first BatchNorm layer now
    else:  # the same, in shared memory: its number of the step's first meeting
        flag, first = reps._block["meeting"][1], replicas._meeting_number(reps._step_id, 1)
        for _ in range(1000):
            if flag[0] == first:
                break
            time.sleep(0.01)
        assert flag[0] == first
    proc = reps._procs[0]
    reps.close()
    assert proc.returncode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_the_two_seams_are_per_thread():
    """backend.thread_rng and parallel.one_core change only the calling thread, and only
    inside their block."""
    import threading
    seen = {}

    def other():
        seen["rng"], seen["workers"] = backend.rng(), parallel.workers()

    host, before = backend.host_rng(), parallel.workers()
    with backend.thread_rng(7) as own, parallel.one_core():
        assert backend.rng() is own and parallel.workers() == 1
        np.testing.assert_array_equal(own.random(3), np.random.default_rng(7).random(3))
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == {"rng": host, "workers": before}
    assert backend.rng() is host and parallel.workers() == before


def test_a_model_that_cannot_be_handed_to_the_helpers_is_a_replica_error(capfd):
    model = tiny()
    model.callback = lambda: None  # cannot be pickled
    reps = Replicas(model, SoftmaxCrossEntropy(), 2, max_batch=8)
    with pytest.raises(ReplicaError, match="could not hand the model to replica process 1"):
        reps.forward_backward(*batch(8))
    assert reps._procs == [] and "Traceback" not in capfd.readouterr().err


def test_command_line_says_what_to_do_when_a_helper_fails(folder, tmp_path, capsys, monkeypatch):
    def fail(self, x, y):
        raise ReplicaError("replica process 1 ended during a training step")
    monkeypatch.setattr(Replicas, "forward_backward", fail)
    status = main(["train", "--dataset", "folder", "--data-dir", str(folder), "--width", "0.0625",
                   "--hidden", "8", "--epochs", "1", "--batch-size", "4", "--no-progress",
                   "--out", str(tmp_path / "run"), "--replicas", "2"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "replica process 1 ended" in err and "--resume" in err and "--replicas 1" in err


def test_helpers_that_copy_their_gradients_give_the_same_step(monkeypatch):
    """``replicas.GRADS_IN_PLACE = False`` (kept for benchmarks/bench_switches.py): the
    helpers' Linear layers write new arrays, copied into shared memory afterwards."""
    monkeypatch.setattr(replicas, "GRADS_IN_PLACE", False)
    reps = Replicas(tiny(batch_norm=False), SoftmaxCrossEntropy(), 2, max_batch=9)
    try:
        check_split_step(reps, tiny(batch_norm=False), *batch(9))
    finally:
        reps.close()


def test_shared_memory_stores_each_parameter_and_gradient_as_the_model_does():
    """A Conv2d stores its weight channels-last: its shared copy and the helpers' gradient
    slots are stored the same way, so the model keeps that layout after the first step and
    no copy between the processes transposes."""
    from tinyvgg.ops.cpu.channels_last import is_channels_last
    model = tiny()
    strides = {name: p.strides for name, p, _ in model.named_parameters()}
    assert any(is_channels_last(p) and not p.flags.c_contiguous for _, p, _ in model.named_parameters())
    reps = Replicas(model, SoftmaxCrossEntropy(), 2, max_batch=8)
    try:
        check_split_step(reps, tiny(), *batch(8))
        for name, p, g in model.named_parameters():
            assert p is reps._block[f"p/{name}"], name
            assert p.strides == strides[name] and g.strides == strides[name], name
            assert reps._block[f"g1/{name}"].strides == strides[name], name
    finally:
        reps.close()
