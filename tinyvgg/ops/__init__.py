"""Array operations with hand-written backward passes (functions, no state).

Layout
------
- :mod:`.shapes`: ``pair``, the output size, padding and window views (every op uses them);
- :mod:`.im2col`: ``im2col``/``col2im``, the textbook way to turn a convolution into a product;
- :mod:`.conv`: the convolution, textbook version first (im2col, one product, col2im);
- :mod:`.pool`: max-pooling, textbook version first;
- :mod:`.dense`: the fully connected layers' matrix product;
- :mod:`.paths`: the one rule that picks the GPU, fast CPU or textbook path;
- :mod:`.cpu`: the fast CPU path (channels-last activations, chunks, scratch buffers, worker threads);
- :mod:`.gpu`: the CUDA kernels and their NumPy twins.

``tinyvgg.backend.use_fast(False)`` (or ``TINYVGG_FAST=0``) runs everything on
the textbook versions. The layers in :mod:`tinyvgg.layers` wrap these
functions; the loop versions that define what "correct" means live in
:mod:`tinyvgg.reference`.
"""

from .conv import conv2d_backward, conv2d_backward_simple, conv2d_forward, conv2d_forward_simple
from .dense import matmul
from .im2col import col2im, im2col
from .paths import choose_path
from .pool import maxpool2d_backward, maxpool2d_backward_simple, maxpool2d_forward, maxpool2d_forward_simple
from .shapes import channel_rows, conv_output_size, pair

__all__ = ["im2col", "col2im", "conv_output_size", "pair", "conv2d_forward", "conv2d_backward",
           "maxpool2d_forward", "maxpool2d_backward", "conv2d_forward_simple", "conv2d_backward_simple",
           "maxpool2d_forward_simple", "maxpool2d_backward_simple", "matmul", "choose_path", "channel_rows"]
