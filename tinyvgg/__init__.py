"""tinyvgg: the VGG paper (Simonyan & Zisserman, 2014) from scratch in NumPy/CuPy.

Data flows one way: backend -> ops -> layers -> models -> training and
evaluation -> command line. Lessons and benchmarks use the package; the package
never imports them.
"""

__version__ = "0.1.0"
