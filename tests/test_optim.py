"""SGD's update rule, its state round trip, and the learning-rate schedules."""

import numpy as np
import pytest

from tinyvgg import layers as L
from tinyvgg.ops.cpu.channels_last import channels_last_weight
from tinyvgg.optim import SGD, ConstantLR, CosineLR, ReduceOnPlateau, StepLR, make_schedule


class OneLayer:
    """The smallest 'model': one Linear layer with named_parameters()."""

    def __init__(self, dtype=np.float64):
        self.layer = L.Linear(3, 2, dtype=dtype)

    def named_parameters(self):
        for k, p in self.layer.params.items():
            yield f"fc.{k}", p, self.layer.grads.get(k)


def test_sgd_matches_the_update_rule_written_out():
    m = OneLayer()
    w0 = m.layer.params["weight"].copy()
    g1 = np.random.default_rng(0).standard_normal(w0.shape)
    g2 = np.random.default_rng(1).standard_normal(w0.shape)
    opt = SGD(m, lr=0.1, momentum=0.9, weight_decay=0.01)
    m.layer.grads = {"weight": g1.copy(), "bias": np.zeros(2)}
    opt.step()
    v = g1 + 0.01 * w0
    w1 = w0 - 0.1 * v
    np.testing.assert_allclose(m.layer.params["weight"], w1, rtol=1e-12)
    m.layer.grads = {"weight": g2.copy(), "bias": np.zeros(2)}
    opt.step()
    v = 0.9 * v + g2 + 0.01 * w1
    np.testing.assert_allclose(m.layer.params["weight"], w1 - 0.1 * v, rtol=1e-12)
    np.testing.assert_array_equal(m.layer.grads["weight"], g2)  # the gradient is not modified


def test_nesterov_update():
    m = OneLayer()
    w0 = m.layer.params["weight"].copy()
    g = np.ones_like(w0)
    opt = SGD(m, lr=0.5, momentum=0.9, weight_decay=0.0, nesterov=True)
    m.layer.grads = {"weight": g, "bias": np.zeros(2)}
    opt.step()
    np.testing.assert_allclose(m.layer.params["weight"], w0 - 0.5 * (g + 0.9 * g), rtol=1e-12)


def test_sgd_keeps_float32():
    m = OneLayer(np.float32)
    opt = SGD(m, lr=0.1)
    m.layer.grads = {"weight": np.ones((2, 3), np.float32), "bias": np.ones(2, np.float32)}
    opt.step()
    assert m.layer.params["weight"].dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.buffers.values())


def test_state_dict_round_trip_continues_identically():
    def run(steps, resume_at=None):
        m = OneLayer()
        m.layer.params["weight"][...] = np.arange(6.0).reshape(2, 3) / 10
        opt = SGD(m, lr=0.1, momentum=0.9)
        for i in range(steps):
            if i == resume_at:
                state = opt.state_dict()
                opt = SGD(m, lr=1.0, momentum=0.0)  # a fresh optimiser with other settings
                opt.load_state_dict(state)
            m.layer.grads = {"weight": np.full((2, 3), float(i + 1)), "bias": np.ones(2)}
            opt.step()
        return m.layer.params["weight"]

    np.testing.assert_array_equal(run(5), run(5, resume_at=3))


def test_step_without_gradient_and_bad_settings_are_clear_errors():
    with pytest.raises(RuntimeError, match="has no gradient"):
        SGD(OneLayer(), lr=0.1).step()
    with pytest.raises(ValueError, match="lr must be a positive"):
        SGD(OneLayer(), lr=0)
    with pytest.raises(ValueError, match="momentum must be in"):
        SGD(OneLayer(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        SGD(OneLayer(), lr=0.1).load_state_dict({"lr": 1, "momentum": 0, "weight_decay": 0, "nesterov": False,
                                                 "steps": 0, "momentum_buffer.nope": np.zeros(1)})


def _opt(lr=1.0):
    return SGD(OneLayer(), lr=lr)


def test_reduce_on_plateau_is_the_papers_rule():
    opt = _opt(0.01)
    s = ReduceOnPlateau(opt, factor=0.1, patience=2)
    for acc in [0.5, 0.6, 0.6, 0.6]:  # two epochs without improvement after 0.6
        s.epoch_end(acc)
    assert opt.lr == pytest.approx(0.001)
    for acc in [0.7, 0.69]:
        s.epoch_end(acc)
    assert opt.lr == pytest.approx(0.001)
    s.epoch_end(0.69)
    assert opt.lr == pytest.approx(0.0001)
    assert s.reductions == 2


def test_step_and_cosine_and_warmup():
    opt = _opt(1.0)
    s = StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        s.epoch_end()
        lrs.append(opt.lr)
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]
    opt = _opt(1.0)
    c = CosineLR(opt, total_epochs=4)
    got = []
    for _ in range(4):
        c.epoch_end()
        got.append(opt.lr)
    np.testing.assert_allclose(got, [0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(1, 5)], atol=1e-12)
    opt = _opt(1.0)
    w = ConstantLR(opt, warmup_steps=4)
    seen = [opt.lr]
    for _ in range(5):
        w.batch_end()
        seen.append(opt.lr)
    np.testing.assert_allclose(seen, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_schedule_state_round_trip():
    opt = _opt(0.1)
    s = make_schedule("plateau", opt, epochs=10, steps_per_epoch=5)
    for acc in [0.3, 0.3, 0.3]:
        s.epoch_end(acc)
    state = s.state_dict()
    opt2 = _opt(0.1)
    s2 = make_schedule("plateau", opt2, epochs=10, steps_per_epoch=5)
    s2.load_state_dict(state)
    assert opt2.lr == opt.lr and s2.best == s.best and s2.bad_epochs == s.bad_epochs
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", opt, epochs=1, steps_per_epoch=1)


def test_weight_decay_skips_biases_when_asked():
    m = OneLayer()
    w0, b0 = m.layer.params["weight"].copy(), m.layer.params["bias"].copy()
    b0 += 1.0
    m.layer.params["bias"][...] = b0
    opt = SGD(m, lr=0.1, momentum=0.0, weight_decay=0.5, decay_bias_and_norm=False)
    m.layer.grads = {"weight": np.zeros_like(w0), "bias": np.zeros_like(b0)}
    opt.step()
    np.testing.assert_allclose(m.layer.params["weight"], w0 * (1 - 0.1 * 0.5), rtol=1e-12)
    np.testing.assert_array_equal(m.layer.params["bias"], b0)  # 1-D: not decayed
    opt2 = SGD(m, lr=0.1, momentum=0.0, weight_decay=0.5)  # the default decays every parameter
    opt2.step()
    np.testing.assert_allclose(m.layer.params["bias"], b0 * (1 - 0.1 * 0.5), rtol=1e-12)


def test_one_cycle_rises_linearly_then_falls_to_near_zero():
    from tinyvgg.optim import OneCycleLR
    m = OneLayer()
    opt = SGD(m, lr=0.1)
    s = make_schedule("onecycle", opt, epochs=4, steps_per_epoch=25, pct_start=0.2)
    assert isinstance(s, OneCycleLR)
    rates = [opt.lr]
    for _ in range(99):
        s.batch_end()
        rates.append(opt.lr)
    rates = np.array(rates)
    peak = int(np.argmax(rates))
    assert abs(rates[0] - 0.1 / 25) < 1e-12 and 0.1 - 1e-4 < rates.max() <= 0.1  # peak between two steps
    assert abs(peak - 0.2 * 99) <= 1
    np.testing.assert_allclose(np.diff(rates[:peak]), (0.1 - 0.004) / (0.2 * 99), rtol=1e-9)
    assert np.all(np.diff(rates[peak:]) < 0) and abs(rates[-1] - 0.1 / 1e4) < 1e-12
    s.epoch_end(0.5)  # the validation result does not change the rate
    assert opt.lr == rates[-1]


def test_one_cycle_resumes_exactly():
    def rates(resume_at=None):
        opt = SGD(OneLayer(), lr=0.2)
        s = make_schedule("onecycle", opt, epochs=3, steps_per_epoch=10)
        out = []
        for i in range(30):
            if i == resume_at:
                state = s.state_dict()
                opt = SGD(OneLayer(), lr=0.2)
                s = make_schedule("onecycle", opt, epochs=3, steps_per_epoch=10)
                s.load_state_dict(state)
            out.append(opt.lr)
            s.batch_end()
        return out
    assert rates() == rates(resume_at=13)


@pytest.mark.parametrize("kw, pattern", [({"total_steps": 0}, "total_steps"), ({"total_steps": 5, "pct_start": 1.0},
                                         "pct_start")])
def test_one_cycle_bad_arguments(kw, pattern):
    from tinyvgg.optim import OneCycleLR
    with pytest.raises(ValueError, match=pattern):
        OneCycleLR(SGD(OneLayer(), lr=0.1), **kw)


class Arrays:
    """A 'model' made of the given parameter arrays; gradients set by the test."""

    def __init__(self, params):
        self.params, self.grads = params, {}

    def named_parameters(self):
        for k, p in self.params.items():
            yield k, p, self.grads.get(k)


def _blocked_model():
    rng = np.random.default_rng(3)
    return Arrays({"fc.weight": rng.standard_normal((300, 250)).astype(np.float32),  # shared by 2 threads
                   "conv.weight": rng.standard_normal((13, 11)).astype(np.float32),  # 143: not a whole block
                   "bn.bias": rng.standard_normal(5).astype(np.float32),              # 1-D
                   "head.weight": rng.standard_normal((40, 25)),                      # float64
                   "t.weight": rng.standard_normal((4, 6)).astype(np.float32).T,      # not contiguous
                   # stored channels-last, as Conv2d stores its weight
                   "features.0.weight": channels_last_weight(rng.standard_normal((7, 5, 3, 3)).astype(np.float32))})


@pytest.mark.parametrize("kw", [dict(momentum=0.9, nesterov=True, weight_decay=5e-4, decay_bias_and_norm=False),
                                dict(momentum=0.9, weight_decay=1e-2),
                                dict(momentum=0.0, weight_decay=0.0)])
@pytest.mark.parametrize("grads_stored", ["c_order", "like_params"])
def test_blocked_update_equals_the_simple_version_bit_for_bit(monkeypatch, kw, grads_stored):
    """SGD's fast path on NumPy (blocks of UPDATE_BLOCK values, shared between the
    worker threads) against the simple version on whole arrays (UPDATE_BLOCK = 0):
    the same parameters and momentum buffers after three steps, exactly, whatever
    the parameters' memory order and whether the gradients are stored like them."""
    from tinyvgg import optim

    def run(block):
        monkeypatch.setattr(optim, "UPDATE_BLOCK", block)
        m = _blocked_model()
        strides = {k: p.strides for k, p in m.params.items()}
        opt = SGD(m, lr=0.05, **kw)
        rng = np.random.default_rng(4)
        for _ in range(3):
            m.grads = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in m.params.items()}
            if grads_stored == "like_params":
                m.grads = {k: _stored_like(g, m.params[k]) for k, g in m.grads.items()}
            opt.step()
        assert {k: p.strides for k, p in m.params.items()} == strides  # updated in place
        assert all(opt.buffers[k].strides == m.params[k].strides for k in opt.buffers)
        return m.params, opt.buffers

    simple_params, simple_buffers = run(0)
    for block in (8, 1 << 16):
        params, buffers = run(block)
        for k in simple_params:
            assert params[k].dtype == simple_params[k].dtype
            np.testing.assert_array_equal(params[k], simple_params[k], err_msg=f"{k}, block {block}")
        assert buffers.keys() == simple_buffers.keys()
        for k in simple_buffers:
            np.testing.assert_array_equal(buffers[k], simple_buffers[k], err_msg=f"{k}, block {block}")
    moved = run(8)[0]["fc.weight"] - _blocked_model().params["fc.weight"]
    assert np.all(moved != 0)  # every block was updated, none skipped


def _stored_like(a, like):
    out = np.empty_like(like)  # (order "K": like's memory order)
    out[...] = a
    return out


def test_flat_views_follow_memory_order_and_write_through():
    from tinyvgg.optim import _flat_views
    p = channels_last_weight(np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2))
    v = np.empty_like(p)
    g = p.copy(order="C") * 10  # stored otherwise: copied in p's order
    fp, fg, fv = _flat_views(p, g, v)
    assert np.shares_memory(fp, p) and np.shares_memory(fv, v)
    np.testing.assert_array_equal(fg, fp * 10)  # position i is the same element in each
    fp[5] = -1.0
    assert (p == -1.0).sum() == 1
    assert _flat_views(p, g, p.copy(order="C")) is None  # a buffer stored otherwise: no flat view


def test_loaded_momentum_buffers_are_stored_like_their_parameters():
    m = _blocked_model()
    opt = SGD(m, lr=0.1, momentum=0.9)
    m.grads = {k: np.ones_like(p) for k, p in m.params.items()}
    opt.step()
    state = opt.state_dict()
    again = SGD(m, lr=0.1, momentum=0.9)
    again.load_state_dict(state)
    for k, p in m.params.items():
        assert again.buffers[k].strides == p.strides, k
        np.testing.assert_array_equal(again.buffers[k], opt.buffers[k])
