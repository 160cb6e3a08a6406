"""The fast paths of the ops equal the loop references and each other.

The convolution has several routes (see :mod:`tinyvgg.ops.cpu.conv`): wide or
compact columns, chunks of the batch (run in worker threads or not), dx as a
convolution or through col2im, a fused ReLU, and scratch buffers reused between
calls; max-pooling has a 2x2/stride-2 route. Each is checked against
:mod:`tinyvgg.reference` (float64) and, where two routes must agree, against
the other.
"""

import numpy as np
import pytest

from tinyvgg import layers as L
from tinyvgg.ops.cpu import conv as conv_mod
from tinyvgg.ops import conv2d_backward, conv2d_forward, maxpool2d_backward, maxpool2d_forward
from tinyvgg.ops.cpu import parallel, scratch
from tinyvgg.reference import (conv2d_backward_loop, conv2d_forward_loop, maxpool2d_backward_loop,
                               maxpool2d_forward_loop)

TIGHT = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True, params=["channels_last", "channels_first"])
def layout(request, monkeypatch):
    """Every test here runs on both CPU convolutions: the channels-last one (the
    default) and the channels-first one with wide or compact columns."""
    monkeypatch.setitem(conv_mod.OPTIMISATIONS, "channels_last", request.param == "channels_last")
    return request.param


@pytest.fixture
def threads(monkeypatch):
    """Force the worker threads on for every product, whatever its size; restore after."""
    old_workers = parallel.workers()
    parallel.set_workers(2)
    monkeypatch.setattr(conv_mod, "MIN_TASK_FLOPS", 0)
    monkeypatch.setattr(parallel, "MIN_TASK_FLOPS", 0)
    yield
    parallel.set_workers(old_workers)


def _case(seed, n, c, f, h, w, k=(3, 3)):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, c, h, w))
    wt = r.standard_normal((f, c) + k)
    b = r.standard_normal(f)
    return r, x, wt, b


def _check_against_reference(x, wt, b, stride, padding, **kw):
    y, cache = conv2d_forward(x, wt, b, stride, padding, **kw)
    np.testing.assert_allclose(y, conv2d_forward_loop(x, wt, b, stride, padding), **TIGHT)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    dx_r, dw_r, db_r = conv2d_backward_loop(dy, x, wt, stride, padding)
    np.testing.assert_allclose(dx, dx_r, **TIGHT)
    np.testing.assert_allclose(dw, dw_r, **TIGHT)
    np.testing.assert_allclose(db, db_r, **TIGHT)
    return y, dx, dw, db


# (n, c, f, h, w, kernel, stride, padding): wide columns (stride 1, OW >= 4*(KW-1)),
# compact ones (small maps, strides), dx by col2im (stride 2, padding > KH-1), C << F.
ROUTES = {
    "wide_3x3_same": (3, 2, 3, 10, 17, (3, 3), (1, 1), (1, 1)),
    "wide_nonsquare": (2, 2, 3, 7, 20, (2, 3), (1, 1), (1, 0)),
    "compact_small_map": (3, 3, 2, 4, 4, (3, 3), (1, 1), (1, 1)),
    "compact_8x8": (3, 2, 3, 8, 8, (3, 3), (1, 1), (1, 1)),
    "compact_strided": (2, 2, 3, 9, 8, (3, 3), (2, 2), (1, 1)),
    "col2im_big_padding": (2, 2, 2, 5, 9, (1, 2), (1, 1), (2, 1)),
    "first_layer_c_much_smaller_than_f": (2, 1, 8, 9, 9, (3, 3), (1, 1), (1, 1)),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1 byte: one image per chunk
def test_conv_routes_match_reference(route, chunk_bytes):
    n, c, f, h, w, k, s, p = ROUTES[route]
    _, x, wt, b = _case(1, n, c, f, h, w, k)
    _check_against_reference(x, wt, b, s, p, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_conv_in_worker_threads_matches_reference_and_serial(route, threads):
    n, c, f, h, w, k, s, p = ROUTES[route]
    _, x, wt, b = _case(2, n, c, f, h, w, k)
    y, dx, dw, db = _check_against_reference(x, wt, b, s, p, chunk_bytes=1)
    parallel.set_workers(1)
    y1, c1 = conv2d_forward(x, wt, b, s, p, chunk_bytes=1)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    for got, want in zip((y, dx, dw, db), (y1,) + conv2d_backward(dy, c1)):
        np.testing.assert_allclose(got, want, **TIGHT)


def test_chunked_equals_unchunked_in_float32():
    _, x, wt, b = _case(3, 5, 4, 6, 12, 17)
    x, wt, b = x.astype(np.float32), wt.astype(np.float32), b.astype(np.float32)
    dy = np.random.default_rng(4).standard_normal((5, 6, 12, 17)).astype(np.float32)
    outs = []
    for chunk_bytes in (None, 1, 30_000):
        y, cache = conv2d_forward(x, wt, b, 1, 1, chunk_bytes=chunk_bytes)
        outs.append((y,) + conv2d_backward(dy, cache))
    for other in outs[1:]:
        for a, o in zip(outs[0], other):
            assert o.dtype == np.float32
            np.testing.assert_allclose(a, o, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.parametrize("route", ["wide_3x3_same", "compact_strided"])
def test_fused_relu_is_conv_then_relu(route):
    n, c, f, h, w, k, s, p = ROUTES[route]
    r, x, wt, b = _case(5, n, c, f, h, w, k)
    y, cache = conv2d_forward(x, wt, b, s, p, relu=True)
    z, zcache = conv2d_forward(x, wt, b, s, p)
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    dy = r.standard_normal(y.shape)
    got = conv2d_backward(dy, cache)
    want = conv2d_backward(dy * (z > 0), zcache)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, **TIGHT)


def test_input_grad_false_skips_dx_only():
    r, x, wt, b = _case(6, 2, 3, 4, 9, 17)
    y, cache = conv2d_forward(x, wt, b, 1, 1)
    dy = r.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, cache)
    none, dw2, db2 = conv2d_backward(dy, cache, input_grad=False)
    assert none is None
    np.testing.assert_array_equal(dw, dw2)
    np.testing.assert_array_equal(db, db2)


@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 10, 17), (3, 3), 1, 1), ((2, 3, 4, 4), (3, 3), 1, 1),
                                         ((2, 3, 9, 8), (3, 3), 2, 1), ((2, 3, 6, 6), (1, 1), 1, 0)])
@pytest.mark.parametrize("relu", [False, True])
def test_float32_stays_float32(shape, k, s, p, relu):
    r = np.random.default_rng(0)
    x = r.standard_normal(shape).astype(np.float32)
    wt = r.standard_normal((4, shape[1]) + k).astype(np.float32)
    b = np.zeros(4, np.float32)
    y, cache = conv2d_forward(x, wt, b, s, p, relu=relu)
    grads = conv2d_backward(np.ones_like(y), cache)
    assert {a.dtype for a in (y,) + grads} == {np.dtype(np.float32)}


def test_two_layers_in_flight_do_not_share_scratch(threads):
    """Forward two layers, then backward in reverse: the second forward must not
    overwrite anything the first layer's cache still needs (its input, its
    fused-ReLU output), even with every temporary coming from the scratch pool."""
    r = np.random.default_rng(8)
    a, b2 = L.Conv2d(3, 4, 3, padding=1, dtype=np.float64), L.Conv2d(4, 5, 3, padding=1, dtype=np.float64)
    x = r.standard_normal((3, 3, 12, 17))
    h = a.forward(x)
    out = b2.forward(h)
    dy = r.standard_normal(out.shape)
    dh = b2.backward(dy)
    dx = a.backward(dh)
    dh_r, dwb, _ = conv2d_backward_loop(dy, h, b2.params["weight"], 1, 1)
    dx_r, dwa, _ = conv2d_backward_loop(dh_r, x, a.params["weight"], 1, 1)
    np.testing.assert_allclose(dh, dh_r, **TIGHT)
    np.testing.assert_allclose(dx, dx_r, **TIGHT)
    np.testing.assert_allclose(a.grads["weight"], dwa, **TIGHT)
    np.testing.assert_allclose(b2.grads["weight"], dwb, **TIGHT)


def test_scratch_buffer_is_reused_only_when_free():
    scratch.clear()
    shape = (512, 1024)  # 2 MiB of float32: big enough to be pooled
    first = scratch.take(shape, np.float32)
    view = first[3:].T
    del first
    second = scratch.take(shape, np.float32)
    assert not np.shares_memory(second, view)  # a view of the first is alive
    del view
    third = scratch.take(shape, np.float32)  # the first buffer is free again
    assert scratch.nbytes() == 2 * 512 * 1024 * 4
    del second, third
    scratch.clear()
    assert scratch.nbytes() == 0


def test_scratch_pool_respects_its_limit():
    old = scratch.limit()
    try:
        scratch.clear()
        scratch.set_limit(3 << 20)
        for _ in range(5):
            scratch.take((1 << 20,), np.uint8)  # each dropped at once: free
            scratch.take((2 << 20,), np.uint8)
        assert scratch.nbytes() <= 3 << 20
    finally:
        scratch.set_limit(old)
        scratch.clear()


# -- max-pool 2x2, stride 2 ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 2, 7, 5), (3, 1, 2, 2), (2, 2, 5, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_pool2x2_fast_path_matches_reference(shape, ties):
    r = np.random.default_rng(9)
    # values from {0, 1, 2}: most windows hold equal maxima, so the tie rule is exercised
    x = r.integers(0, 3, shape).astype(np.float64) if ties else r.standard_normal(shape)
    y, cache = maxpool2d_forward(x, 2, 2)
    np.testing.assert_array_equal(y, maxpool2d_forward_loop(x, 2, 2))
    dy = r.standard_normal(y.shape)
    np.testing.assert_array_equal(maxpool2d_backward(dy, cache), maxpool2d_backward_loop(dy, x, 2, 2))


def test_pool2x2_every_tie_pattern_sends_gradient_to_first_maximum():
    # all 16 patterns of a 2x2 window with entries from {0, 1}: the winner is the
    # first 1 in row-major order (or the top-left 0 when all are 0)
    patterns = np.array([[(m >> 3) & 1, (m >> 2) & 1, (m >> 1) & 1, m & 1] for m in range(16)], float)
    x = patterns.reshape(1, 16, 2, 2)
    y, cache = maxpool2d_forward(x, 2, 2)
    dx = maxpool2d_backward(np.ones_like(y), cache)
    expected = np.zeros_like(patterns)
    for i, p in enumerate(patterns):
        expected[i, int(np.argmax(p))] = 1.0  # numpy's argmax also picks the first
    np.testing.assert_array_equal(dx.reshape(16, 4), expected)


def test_pool2x2_keeps_float32_and_a_one_byte_index():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, cache = maxpool2d_forward(x, 2, 2)
    assert y.dtype == np.float32 and cache[1].dtype == np.uint8
    assert maxpool2d_backward(np.ones_like(y), cache).dtype == np.float32


def test_route_names_describe_the_geometry():
    """The cases above take the routes their names say."""
    def geometry(route):
        n, c, f, h, w, k, s, p = ROUTES[route]
        return conv_mod._Geometry((n, c, h, w), f, k, s, p, 8)
    assert geometry("wide_3x3_same").wide and geometry("wide_nonsquare").wide
    assert not any(geometry(r).wide for r in ("compact_small_map", "compact_8x8", "compact_strided"))


@pytest.mark.parametrize("shape", [(7, 5, 3), (3, 5, 9), (1, 4, 1)])
def test_parallel_matmul_equals_matmul(shape, threads, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_TASK_FLOPS", 0)  # split even these tiny products
    m, k, n = shape
    r = np.random.default_rng(10)
    a, b = r.standard_normal((m, k)), r.standard_normal((k, n))
    np.testing.assert_allclose(parallel.matmul(a, b), a @ b, **TIGHT)
    np.testing.assert_allclose(parallel.matmul(b.T, a.T), b.T @ a.T, **TIGHT)  # transposed views


def test_parallel_run_raises_a_task_error_and_restores_blas(threads):
    from threadpoolctl import threadpool_info
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    def task(i):
        if i == 1:
            raise ValueError("task 1 failed")
    with pytest.raises(ValueError, match="task 1 failed"):
        parallel.run(task, [(0,), (1,), (2,)])
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before


@pytest.mark.parametrize("caller_runs_a_task", [True, False])
def test_parallel_run_runs_every_task_once_and_waits_for_all(threads, monkeypatch, caller_runs_a_task):
    """Every task runs exactly once, never more of them at once than workers()
    (the calling thread counts as one when it takes tasks, or takes none); the
    error of the first failing task in order is raised only after all finished."""
    import threading
    import time
    monkeypatch.setattr(parallel, "CALLER_RUNS_A_TASK", caller_runs_a_task)
    ran, lock = [], threading.Lock()
    in_flight, most = [0], [0]

    def task(i):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05 if i == 0 else 0.005)  # one slow task, the others short
        with lock:
            in_flight[0] -= 1
            ran.append((i, threading.current_thread() is threading.main_thread()))
        if i in (5, 9):
            raise RuntimeError(f"task {i} failed")
    with pytest.raises(RuntimeError, match="task 5 failed"):
        parallel.run(task, [(i,) for i in range(10)], np)
    assert sorted(i for i, _ in ran) == list(range(10))   # each once, and all before the raise
    assert most[0] == parallel.workers() == 2             # both threads busy, never a third
    on_caller = [i for i, main in ran if main]
    assert (len(on_caller) > 0) == caller_runs_a_task


@pytest.mark.parametrize("name", sorted(conv_mod.OPTIMISATIONS))
@pytest.mark.parametrize("route", ["wide_3x3_same", "compact_small_map", "first_layer_c_much_smaller_than_f"])
def test_each_optimisation_switched_off_still_matches_reference(name, route, monkeypatch, layout):
    """Lesson 13 times each optimisation off and on: off, the numbers stay right."""
    monkeypatch.setitem(conv_mod.OPTIMISATIONS, name, False)
    n, c, f, h, w, k, s, p = ROUTES[route]
    _, x, wt, b = _case(11, n, c, f, h, w, k)
    _check_against_reference(x, wt, b, s, p)
    _, x1, w1, b1 = _case(12, 2, 3, 4, 5, 6, (1, 1))  # the 1x1 shortcut, or im2col without it
    _check_against_reference(x1, w1, b1, 1, 0)


def test_switching_wide_columns_off_takes_the_compact_layout(monkeypatch):
    n, c, f, h, w, k, s, p = ROUTES["wide_3x3_same"]
    assert conv_mod._Geometry((n, c, h, w), f, k, s, p, 8).wide
    monkeypatch.setitem(conv_mod.OPTIMISATIONS, "wide_columns", False)
    assert not conv_mod._Geometry((n, c, h, w), f, k, s, p, 8).wide


def test_scratch_limit_zero_turns_reuse_off():
    old = scratch.limit()
    try:
        scratch.clear()
        scratch.set_limit(0)
        first = scratch.take((1 << 20,), np.uint8)
        del first
        assert scratch.nbytes() == 0  # never pooled: a buffer larger than the cap
    finally:
        scratch.set_limit(old)
    first = scratch.take((1 << 20,), np.uint8)
    assert scratch.nbytes() == 1 << 20
    del first
    scratch.clear()
