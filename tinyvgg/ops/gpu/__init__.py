"""The GPU path of the ops: CUDA kernels (CuPy ``RawKernel``) and their NumPy twins.

- :mod:`.kernels`: the CUDA sources of im2col, col2im and max-pooling, compiled
  on first use, and the functions that launch them;
- :mod:`.conv`: the convolution built on them (im2col in the (K, N, P) layout,
  one cuBLAS product per chunk of images);
- :mod:`.twins`: a readable NumPy twin of every kernel (the same index
  arithmetic, vectorised), tested on machines without a GPU;
- :mod:`.memory`: recognising a GPU out-of-memory error and suggesting a
  smaller batch.

Everything here imports without CuPy: CuPy is reached through
``tinyvgg.backend.device().xp`` when a kernel is first launched.
"""

from .conv import GPUConvCache, conv2d_backward_gpu, conv2d_forward_gpu
from .kernels import col2im_gpu, im2col_gpu, maxpool2d_backward_gpu, maxpool2d_forward_gpu
from .memory import is_out_of_memory, oom_message

__all__ = ["im2col_gpu", "col2im_gpu", "maxpool2d_forward_gpu", "maxpool2d_backward_gpu",
           "conv2d_forward_gpu", "conv2d_backward_gpu", "GPUConvCache", "is_out_of_memory",
           "oom_message"]
