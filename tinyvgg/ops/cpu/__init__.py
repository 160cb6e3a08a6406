"""The fast CPU path of the ops (NumPy arrays): the same numbers as the textbook
versions in :mod:`tinyvgg.ops.conv` and :mod:`tinyvgg.ops.pool`, computed faster.

- :mod:`.channels_last`: the default convolution, activations stored (N, H, W, C);
- :mod:`.conv`: the channels-first convolution in chunks of images, with wide or
  batch-minor columns, dx as a convolution, fused bias and ReLU (its notes list every
  optimisation and what it is for);
- :mod:`.pool`: 2x2/stride-2 max-pooling in whole-array passes;
- :mod:`.scratch`: a pool of reusable large buffers;
- :mod:`.parallel`: worker threads, one per core, with single-threaded BLAS.
"""

from .channels_last import ChannelsLastConvCache
from .conv import FastConvCache, conv2d_backward_fast, conv2d_forward_fast
from .parallel import matmul
from .pool import maxpool2x2_backward, maxpool2x2_forward

__all__ = ["conv2d_forward_fast", "conv2d_backward_fast", "FastConvCache", "ChannelsLastConvCache",
           "maxpool2x2_forward", "maxpool2x2_backward", "matmul"]
