"""Recognising a GPU out-of-memory error, and the message that suggests a smaller batch.

Imports without CuPy: CuPy's errors are recognised by class name.
"""

from __future__ import annotations

__all__ = ["is_out_of_memory", "oom_message"]

_OOM_MARKERS = ("cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED",
                "CUDNN_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED", "out of memory")


def is_out_of_memory(exc):
    """True when ``exc`` says the GPU ran out of memory: CuPy's ``OutOfMemoryError``
    (recognised by class name anywhere in the class hierarchy, so no CuPy import is
    needed), a ``MemoryError`` raised by CuPy/CUDA code, or a CUDA, cuBLAS or cuDNN
    error whose message is an allocation failure. A plain host ``MemoryError`` is
    not a GPU one (False)."""
    if not isinstance(exc, BaseException):
        return False
    mro = type(exc).__mro__
    if any(cls.__name__ == "OutOfMemoryError" for cls in mro):
        return True
    module = type(exc).__module__ or ""
    from_cuda = module.startswith(("cupy", "cupy_backends")) or "cuda" in module.lower()
    if isinstance(exc, MemoryError) and from_cuda:
        return True
    if from_cuda or any(cls.__name__ in ("CUDARuntimeError", "CUDADriverError", "CUBLASError",
                                         "CuDNNError") for cls in mro):
        text = str(exc)
        return any(m.lower() in text.lower() for m in _OOM_MARKERS)
    return False


def oom_message(batch_size, exc, flag="--batch-size"):
    """A message for a GPU out-of-memory error ``exc`` at ``batch_size``: what
    happened, and a smaller batch size to try with the command-line option
    ``flag`` (``"--eval-batch-size"`` when evaluation ran out)."""
    b = int(batch_size)
    what = f"{type(exc).__name__}: {exc}".strip()
    if b > 1:
        smaller = max(1, b // 2)
        advice = (f"Try a smaller batch, e.g. {flag} {smaller} (memory for activations grows "
                  f"linearly with the batch size), or a narrower model (--width) or a smaller "
                  f"--input-size.")
    else:
        advice = ("Even one image does not fit: use a narrower model (--width), a smaller "
                  "--input-size or float32 instead of float64, or train on the CPU.")
    return f"the GPU ran out of memory with batch size {b} ({what}). {advice}"
