"""VGG models: the configurations of Table 1, their initialisation and dense evaluation.

``vgg(name, ...)`` builds a :class:`VGG`; :func:`count_params` counts its
parameters without building it; :func:`initialize` and :func:`init_from` set
its weights. See :mod:`tinyvgg.models.vgg` for the notation.
"""

from .init import SCHEMES, init_from, initialize
from .vgg import (CONFIGS, DEFAULT_INIT, NAMES, VGG, FullyConvolutionalVGG, StateDictError,
                  count_params, hidden_width, resolve_name, vgg)

__all__ = ["vgg", "VGG", "FullyConvolutionalVGG", "CONFIGS", "NAMES", "SCHEMES", "count_params",
           "resolve_name", "initialize", "init_from", "StateDictError", "hidden_width",
           "DEFAULT_INIT"]
