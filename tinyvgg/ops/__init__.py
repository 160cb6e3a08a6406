"""Array operations with hand-written backward passes (functions, no state).

``im2col``/``col2im`` and the convolution and max-pool passes built on them. The
layers in :mod:`tinyvgg.layers` wrap these; the loop versions that define what
"correct" means live in :mod:`tinyvgg.reference`.
"""

from .conv import conv2d_backward, conv2d_forward
from .im2col import col2im, conv_output_size, im2col, pair
from .pool import maxpool2d_backward, maxpool2d_forward

__all__ = ["im2col", "col2im", "conv_output_size", "pair", "conv2d_forward",
           "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward"]
