"""The GPU kernels' NumPy twins, and the CUDA sources themselves, checked on the CPU.

1. The twins (:mod:`tinyvgg.ops.gpu.twins`) equal :mod:`tinyvgg.ops` and the
   loop references of :mod:`tinyvgg.reference` on shapes drawn by hypothesis
   (batch, channels, height, width, kernel, stride, padding, non-square included).
2. The CUDA sources of :mod:`tinyvgg.ops.gpu.kernels` are compiled with the
   machine's C++ compiler, with a few lines that make ``__global__``, ``blockIdx``
   and friends plain C++, and run with one loop iteration per CUDA thread. The
   public GPU functions (``im2col_gpu``, ``col2im_gpu``, the max-pool and the
   convolution) then run on the stand-in device with this emulator in place of
   CuPy's launcher, so their index arithmetic, argument order and argument types
   are checked against the twins and the references without a GPU. (Skipped when
   no C++ compiler is found.)
3. The out-of-memory helpers.
"""

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyvgg import backend
from tinyvgg.ops import (col2im, conv_output_size, im2col, maxpool2d_backward, maxpool2d_forward)
from tinyvgg.ops import gpu
from tinyvgg.ops.gpu import kernels as ck
from tinyvgg.ops.gpu.twins import (col2im_twin, im2col_twin, maxpool2d_backward_twin,
                                      maxpool2d_forward_twin)
from tinyvgg.reference import (conv2d_backward_loop, conv2d_forward_loop, maxpool2d_backward_loop,
                               maxpool2d_forward_loop)
from tests.standin import StandInArray, make_device

small = st.integers(1, 3)
# The emulator fixture only sets things up; reusing it across hypothesis inputs is intended.
reuses_fixture = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
pairs = st.tuples(st.integers(1, 4), st.integers(1, 4))


@st.composite
def window_case(draw, pool=False):
    """(n, c, h, w, kernel, stride, padding, seed); for pooling, padding <= kernel/2."""
    n, c = draw(small), draw(small)
    kh, kw = draw(pairs)
    sh, sw = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)))
    if pool:
        ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    else:
        ph, pw = draw(st.tuples(st.integers(0, 2), st.integers(0, 2)))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    return n, c, h, w, (kh, kw), (sh, sw), (ph, pw), draw(st.integers(0, 2**16))


def _pool_input(r, shape, ties):
    # Small integers make ties (several equal maxima in a window) common.
    if ties:
        return r.integers(-2, 3, size=shape).astype(np.float64)
    return r.standard_normal(shape)


# --------------------------------------------------------------------------
# 1. twins == ops == references
# --------------------------------------------------------------------------

@given(window_case())
def test_im2col_twin_equals_im2col(case):
    n, c, h, w, k, s, p, seed = case
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    cols = im2col(x, k, s, p)
    np.testing.assert_array_equal(im2col_twin(x, k, s, p), cols)
    # The (K, N, P) layout is the same numbers with the first two axes swapped.
    np.testing.assert_array_equal(im2col_twin(x, k, s, p, layout="knp"), cols.transpose(1, 0, 2))


@given(window_case())
def test_col2im_twin_equals_col2im_and_the_loop_reference(case):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    oh, ow = conv_output_size(h, k[0], s[0], p[0]), conv_output_size(w, k[1], s[1], p[1])
    cols = r.standard_normal((n, c * k[0] * k[1], oh * ow))
    got = col2im_twin(cols, (n, c, h, w), k, s, p)
    np.testing.assert_allclose(got, col2im(cols, (n, c, h, w), k, s, p), rtol=1e-12, atol=1e-12)
    knp = col2im_twin(np.ascontiguousarray(cols.transpose(1, 0, 2)), (n, c, h, w), k, s, p, layout="knp")
    np.testing.assert_array_equal(knp, got)
    # The loop reference's dx of a convolution is col2im(W2.T @ dy).
    f = 2
    x = r.standard_normal((n, c, h, w))
    wt = r.standard_normal((f, c) + k)
    dy = r.standard_normal((n, f, oh, ow))
    dcols = np.matmul(wt.reshape(f, -1).T, dy.reshape(n, f, -1))
    dx_ref, _, _ = conv2d_backward_loop(dy, x, wt, s, p)
    np.testing.assert_allclose(col2im_twin(dcols, x.shape, k, s, p), dx_ref, rtol=1e-10, atol=1e-12)


@given(window_case(), st.booleans())
def test_im2col_and_col2im_twins_are_adjoint(case, knp):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    layout = "knp" if knp else "nkp"
    x = r.standard_normal((n, c, h, w))
    cols = im2col_twin(x, k, s, p, layout)
    cc = r.standard_normal(cols.shape)
    np.testing.assert_allclose(np.vdot(cols, cc), np.vdot(x, col2im_twin(cc, x.shape, k, s, p, layout)),
                               rtol=1e-10, atol=1e-10)


@given(window_case(pool=True), st.booleans())
def test_maxpool_twins_equal_ops_and_the_loop_reference(case, ties):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = _pool_input(r, (n, c, h, w), ties)
    y, argmax = maxpool2d_forward_twin(x, k, s, p)
    y_ops, cache = maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(y, y_ops)
    np.testing.assert_array_equal(y, maxpool2d_forward_loop(x, k, s, p))
    assert argmax.dtype == cache[1].dtype
    np.testing.assert_array_equal(argmax, cache[1])  # same offsets, ties included
    dy = r.standard_normal(y.shape)
    dx = maxpool2d_backward_twin(dy, argmax, x.shape, k, s, p)
    np.testing.assert_allclose(dx, maxpool2d_backward(dy, cache), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, maxpool2d_backward_loop(dy, x, k, s, p), rtol=1e-12, atol=1e-12)


def test_maxpool_twin_float32_and_int32_argmax():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 20, 19)).astype(np.float32)
    y, argmax = maxpool2d_forward_twin(x, (17, 16), 1, 0)  # 272 window positions: int32 offsets
    assert y.dtype == np.float32 and argmax.dtype == np.int32
    y_ops, cache = maxpool2d_forward(x, (17, 16), 1, 0)
    np.testing.assert_array_equal(y, y_ops)
    np.testing.assert_array_equal(argmax, cache[1])
    dy = r.standard_normal(y.shape).astype(np.float32)
    dx = maxpool2d_backward_twin(dy, argmax, x.shape, (17, 16), 1, 0)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, maxpool2d_backward(dy, cache), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# 2. the CUDA sources, compiled for the CPU
# --------------------------------------------------------------------------

_PRELUDE = r"""
struct tinyvgg_dim3_ { unsigned int x, y, z; };
static tinyvgg_dim3_ threadIdx, blockIdx, blockDim, gridDim;
#define __global__
"""

_CTYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int, "float": ctypes.c_float,
           "double": ctypes.c_double}

_VARIANTS = [(kind, dt, it) for kind in ck.KERNEL_BODIES for dt in (np.float32, np.float64)
             for it in ((np.uint8, np.int32) if kind.startswith("maxpool") else (None,))]


def _driver(name, params):
    decl = ", ".join(f"{t} {p}" for t, p in params)
    args = ", ".join(p for _, p in params)
    return (f'extern "C" void emulate_{name}({decl}, unsigned int grid_, unsigned int block_) {{\n'
            f"    gridDim.x = grid_; blockDim.x = block_;\n"
            f"    for (unsigned int b = 0; b < grid_; ++b)\n"
            f"        for (unsigned int t = 0; t < block_; ++t) {{\n"
            f"            blockIdx.x = b; threadIdx.x = t;\n"
            f"            {name}({args});\n"
            f"        }}\n}}\n")


class Emulator:
    """The CUDA sources of every kernel variant in one C++ shared library."""

    def __init__(self, lib_path):
        self.lib = ctypes.CDLL(str(lib_path))
        self.calls = []

    @classmethod
    def build(cls, folder, defines=()):
        cxx = shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
        if cxx is None:
            pytest.skip("no C++ compiler (g++/clang++): the CUDA sources cannot be emulated here")
        parts = [_PRELUDE]
        for kind, dt, it in _VARIANTS:
            name, code = ck.kernel_source(kind, dt, it)
            parts += [code, _driver(name, ck.kernel_params(kind, dt, it))]
        src = folder / "kernels.cpp"
        src.write_text("\n".join(parts))
        lib = folder / "kernels.so"
        out = subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unused-variable",
                              "-Wno-unused-local-typedefs", *defines, "-o", str(lib), str(src)],
                             capture_output=True, text=True)
        assert out.returncode == 0, f"the CUDA sources do not compile as C++:\n{out.stderr}"
        return cls(lib)

    def __call__(self, kind, dtype, index_dtype, grid, block, args):
        """Stands in for ``ops.gpu.kernels._run_kernel``."""
        name, _ = ck.kernel_source(kind, dtype, index_dtype)
        params = ck.kernel_params(kind, dtype, index_dtype)
        assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
        c_args = []
        for (ctype, pname), a in zip(params, args):
            if ctype.endswith("*"):
                assert isinstance(a, np.ndarray) and a.flags.c_contiguous, f"{name}: {pname} not contiguous"
                want = {"float": np.float32, "double": np.float64, "unsigned char": np.uint8,
                        "int": np.int32}[ctype.replace("const ", "").rstrip("*").strip()]
                assert a.dtype == want, f"{name}: {pname} is {a.dtype}, the kernel reads {ctype}"
                c_args.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = {"long long": np.int64, "int": np.int32, "float": np.float32, "double": np.float64}[ctype]
                assert type(a) is want, f"{name}: {pname} passed as {type(a).__name__}, the kernel takes {ctype}"
                c_args.append(_CTYPES[ctype](a.item()))
        self.calls.append((name, grid, block))
        getattr(self.lib, f"emulate_{name}")(*c_args, ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]))


_emulators = {}


def _emulator(tmp_path_factory, kind):
    if kind not in _emulators:
        # "int64": every division takes the 64-bit branch, as for arrays of 2**31 elements or more.
        defines = ["-DTINYVGG_INT32_LIMIT=-1LL"] if kind == "int64" else []
        _emulators[kind] = Emulator.build(tmp_path_factory.mktemp(f"cuda_emulator_{kind}"), defines)
    return _emulators[kind]


@pytest.fixture(params=["int32", "int64"], ids=["32-bit-indices", "64-bit-indices"])
def on_emulator(request, tmp_path_factory, monkeypatch):
    """The stand-in device selected and the CUDA launcher replaced by the emulator
    (compiled for each branch of the index arithmetic). Small blocks and grids, so
    the grid-stride loops take several turns."""
    emulator = _emulator(tmp_path_factory, request.param)
    dev = make_device()
    backend.use(dev)
    monkeypatch.setattr(ck, "_run_kernel", emulator)
    monkeypatch.setattr(ck, "_gpu_module", lambda: dev.xp)
    monkeypatch.setattr(ck, "BLOCK", 32)
    monkeypatch.setattr(ck, "MAX_BLOCKS", 3)
    emulator.calls.clear()
    return emulator


def _dev(a):
    return backend.to_device(np.ascontiguousarray(a))


def _host(a):
    assert isinstance(a, StandInArray), f"expected a device array, got {type(a)}"
    return backend.to_host(a)


@reuses_fixture
@given(case=window_case(), dtype=st.sampled_from([np.float32, np.float64]), knp=st.booleans())
def test_emulated_im2col_and_col2im_kernels_equal_their_twins(on_emulator, case, dtype, knp):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    layout = "knp" if knp else "nkp"
    x = r.standard_normal((n, c, h, w)).astype(dtype)
    cols = ck.im2col_gpu(_dev(x), k, s, p, layout=layout)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(_host(cols), im2col_twin(x, k, s, p, layout))
    cc = r.standard_normal(cols.shape).astype(dtype)
    dx = ck.col2im_gpu(_dev(cc), x.shape, k, s, p, layout=layout)
    assert dx.dtype == dtype
    # Same additions in the same order: equal to the last bit.
    np.testing.assert_array_equal(_host(dx), col2im_twin(cc, x.shape, k, s, p, layout))
    if layout == "nkp":
        np.testing.assert_array_equal(_host(cols), im2col(x, k, s, p))
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(_host(dx), col2im(cc, x.shape, k, s, p), rtol=tol, atol=tol)


@reuses_fixture
@given(case=window_case(pool=True), dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans())
def test_emulated_maxpool_kernels_equal_their_twins_and_ops(on_emulator, case, dtype, ties):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    x = _pool_input(r, (n, c, h, w), ties).astype(dtype)
    y, cache = ck.maxpool2d_forward_gpu(_dev(x), k, s, p)
    y_t, arg_t = maxpool2d_forward_twin(x, k, s, p)
    np.testing.assert_array_equal(_host(y), y_t)
    np.testing.assert_array_equal(_host(cache[1]), arg_t)
    y_ops, cache_ops = maxpool2d_forward(x, k, s, p)
    np.testing.assert_array_equal(_host(y), y_ops)
    np.testing.assert_array_equal(_host(cache[1]), cache_ops[1])
    assert cache[0] == x.shape and cache[2:] == cache_ops[2:]
    dy = r.standard_normal(y.shape).astype(dtype)
    dx = ck.maxpool2d_backward_gpu(_dev(dy), cache[1], x.shape, k, s, p)
    np.testing.assert_array_equal(_host(dx), maxpool2d_backward_twin(dy, arg_t, x.shape, k, s, p))
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_host(dx), maxpool2d_backward(dy, cache_ops), rtol=tol, atol=tol)


def test_emulated_maxpool_with_int32_argmax(on_emulator):
    r = np.random.default_rng(3)
    x = r.standard_normal((1, 2, 18, 17))
    y, cache = ck.maxpool2d_forward_gpu(_dev(x), (17, 16), (1, 1), 0)
    assert cache[1].dtype == np.int32
    y_ops, cache_ops = maxpool2d_forward(x, (17, 16), 1, 0)
    np.testing.assert_array_equal(_host(y), y_ops)
    np.testing.assert_array_equal(_host(cache[1]), cache_ops[1])
    dy = r.standard_normal(y.shape)
    dx = ck.maxpool2d_backward_gpu(_dev(dy), cache[1], x.shape, (17, 16), 1, 0)
    np.testing.assert_allclose(_host(dx), maxpool2d_backward(dy, cache_ops), rtol=1e-12)


def test_emulated_maxpool_all_minus_inf_window_keeps_offset_zero(on_emulator):
    # A window of -inf values (and padding) keeps the first offset, as the CPU code does.
    x = np.full((1, 1, 2, 2), -np.inf)
    x[0, 0, 1, 1] = 1.0
    y, cache = ck.maxpool2d_forward_gpu(_dev(x), 2, 1, 1)
    y_ops, cache_ops = maxpool2d_forward(x, 2, 1, 1)
    np.testing.assert_array_equal(_host(y), y_ops)
    np.testing.assert_array_equal(_host(cache[1]), cache_ops[1])


@reuses_fixture
@given(case=window_case(), relu=st.booleans(), chunked=st.booleans())
def test_emulated_gpu_convolution_equals_the_loop_reference(on_emulator, case, relu, chunked):
    n, c, h, w, k, s, p, seed = case
    r = np.random.default_rng(seed)
    f = 2
    x = r.standard_normal((n, c, h, w))
    wt = r.standard_normal((f, c) + k)
    b = r.standard_normal(f)
    chunk = 1 if chunked else None  # 1 byte: one image per chunk
    y, cache = gpu.conv2d_forward_gpu(_dev(x), _dev(wt), _dev(b), s, p, relu=relu, chunk_bytes=chunk)
    assert isinstance(cache, gpu.GPUConvCache)
    y_ref = conv2d_forward_loop(x, wt, b, s, p)
    if relu:
        y_ref = np.maximum(y_ref, 0)
    np.testing.assert_allclose(_host(y), y_ref, rtol=1e-10, atol=1e-12)
    dy = r.standard_normal(y.shape)
    dx, dw, db = gpu.conv2d_backward_gpu(_dev(dy), cache)
    if relu:
        dy = dy * (y_ref > 0)
    dx_r, dw_r, db_r = conv2d_backward_loop(dy, x, wt, s, p)
    for got, want in ((dx, dx_r), (dw, dw_r), (db, db_r)):
        np.testing.assert_allclose(_host(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 1])
def test_emulated_pointwise_convolution_and_no_bias(on_emulator, chunk):
    r = np.random.default_rng(5)
    x, wt = r.standard_normal((3, 4, 5, 6)), r.standard_normal((2, 4, 1, 1))
    y, cache = gpu.conv2d_forward_gpu(_dev(x), _dev(wt), None, 1, 0, chunk_bytes=chunk)
    np.testing.assert_allclose(_host(y), conv2d_forward_loop(x, wt, None), rtol=1e-12)
    dy = r.standard_normal(y.shape)
    dx, dw, db = gpu.conv2d_backward_gpu(_dev(dy), cache)
    dx_r, dw_r, _ = conv2d_backward_loop(dy, x, wt)
    assert db is None
    np.testing.assert_allclose(_host(dx), dx_r, rtol=1e-12)
    np.testing.assert_allclose(_host(dw), dw_r, rtol=1e-12)
    assert not on_emulator.calls  # a 1x1 convolution needs no im2col/col2im kernel


def test_emulated_launches_use_small_grids_and_cover_everything(on_emulator):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9))
    cols = ck.im2col_gpu(_dev(x), 3, 1, 1)
    assert on_emulator.calls == [("tinyvgg_im2col_float64", (3,), (32,))]  # 3 blocks of 32 for 1458 elements
    np.testing.assert_array_equal(_host(cols), im2col(x, 3, 1, 1))


def test_gpu_functions_refuse_host_arrays_and_other_dtypes(on_emulator):
    with pytest.raises(TypeError, match="expected a GPU array.*numpy.ndarray"):
        ck.im2col_gpu(np.zeros((1, 1, 3, 3)), 3)
    with pytest.raises(TypeError, match="float32 or float64"):
        ck.im2col_gpu(_dev(np.zeros((1, 1, 3, 3), np.int32)), 3)
    with pytest.raises(ValueError, match="expected columns of shape"):
        ck.col2im_gpu(_dev(np.zeros((1, 9, 2))), (1, 1, 3, 3), 3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ck.maxpool2d_forward_gpu(_dev(np.zeros((1, 1, 2, 2))), 3, 1, 0)


# --------------------------------------------------------------------------
# the module and its sources without CuPy
# --------------------------------------------------------------------------

def test_module_imports_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"  # any 'import cupy' now raises ImportError
            "from tinyvgg.ops.gpu import conv, kernels, memory, twins\n"
            "import numpy as np\n"
            "print(kernels.kernel_source('im2col', np.float32)[0])")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "tinyvgg_im2col_float32"


def test_kernels_on_the_cpu_device_say_what_is_wrong():
    with pytest.raises(RuntimeError, match="no CUDA kernels.*use\\('gpu'\\)"):
        ck.im2col_gpu(np.zeros((1, 1, 3, 3)), 3)


def test_kernel_sources_name_every_variant():
    names = {ck.kernel_source(kind, dt, it)[0] for kind, dt, it in _VARIANTS}
    assert len(names) == len(_VARIANTS) == 12
    name, code = ck.kernel_source("maxpool_bwd", np.float64, np.uint8)
    assert name == "tinyvgg_maxpool_bwd_float64_uint8"
    assert "const double* dy, const unsigned char* argmax, double* dx, long long total" in code
    assert "atomic" not in code  # gather kernels: each output written by one thread
    with pytest.raises(TypeError, match="float32 or float64"):
        ck.kernel_source("im2col", np.int32)
    with pytest.raises(ValueError, match="unknown kernel"):
        ck.kernel_source("conv", np.float32)


def test_launch_config():
    assert ck.launch_config(1) == (1, ck.BLOCK)
    assert ck.launch_config(0) == (1, ck.BLOCK)
    assert ck.launch_config(ck.BLOCK * 5 + 1) == (6, ck.BLOCK)
    assert ck.launch_config(10**12) == (ck.MAX_BLOCKS, ck.BLOCK)  # grid-stride loop does the rest


# --------------------------------------------------------------------------
# 3. out of memory
# --------------------------------------------------------------------------

class OutOfMemoryError(MemoryError):
    """Named like CuPy's ``cupy.cuda.memory.OutOfMemoryError``."""


class SubclassOfIt(OutOfMemoryError):
    pass


class CUDARuntimeError(RuntimeError):
    pass


def test_is_out_of_memory_recognises_cupys_error_by_name():
    assert gpu.is_out_of_memory(OutOfMemoryError("Out of memory allocating 1,024 bytes"))
    assert gpu.is_out_of_memory(SubclassOfIt("x"))
    assert gpu.is_out_of_memory(CUDARuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not gpu.is_out_of_memory(CUDARuntimeError("cudaErrorIllegalAddress: an illegal memory access"))
    assert not gpu.is_out_of_memory(MemoryError("host memory"))  # the host's, not the GPU's
    assert not gpu.is_out_of_memory(ValueError("out of memory"))  # not a CUDA error
    assert not gpu.is_out_of_memory(RuntimeError())
    assert not gpu.is_out_of_memory("OutOfMemoryError")


def test_is_out_of_memory_recognises_memory_errors_raised_by_cuda_modules():
    cls = type("AllocError", (MemoryError,), {"__module__": "cupy.cuda.memory"})
    assert gpu.is_out_of_memory(cls("failed"))


def test_oom_message_names_the_batch_size_and_a_smaller_one():
    msg = gpu.oom_message(64, OutOfMemoryError("Out of memory allocating 8,589,934,592 bytes"))
    assert "batch size 64" in msg and "--batch-size 32" in msg
    assert "OutOfMemoryError: Out of memory allocating 8,589,934,592 bytes" in msg
    assert "--eval-batch-size 128" in gpu.oom_message(256, OutOfMemoryError("x"), flag="--eval-batch-size")
    one = gpu.oom_message(1, OutOfMemoryError("x"))
    assert "batch size 1" in one and "--batch-size" not in one and "--width" in one
