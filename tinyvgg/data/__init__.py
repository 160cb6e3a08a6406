"""Data: datasets in memory, VGG's augmentation, and a prefetching loader.

Notation
--------
N : images, B : batch size, C : channels, H, W : height, width.

Datasets hold host uint8 images (N, H, W, C); transforms turn a batch of them
into float32 (B, C, H, W); the DataLoader yields those batches on the current
device in true, seeded epochs.
"""

from .datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    Dataset,
    DatasetNotFoundError,
    UnknownClassError,
    align_classes,
    clear_cache,
    find_dataset_dir,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_size,
    padded_side,
)
from .loader import DataLoader
from .sampling import split_source, stratified_sample, train_val_split, warn_if_source_changed
from .transforms import (
    EvalTransform,
    TrainTransform,
    center_crop,
    center_pad,
    compute_mean_std,
    compute_pca,
    pca_color_shift,
    random_crop,
    random_flip,
    rescale,
    to_float_nchw,
)

__all__ = [
    "Dataset", "DatasetNotFoundError", "find_dataset_dir", "load_fashion_mnist",
    "load_cifar10", "load_image_folder", "train_val_split", "load_dataset", "clear_cache",
    "align_classes", "UnknownClassError", "stratified_sample",
    "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES",
    "compute_mean_std", "compute_pca", "rescale", "to_float_nchw", "center_pad",
    "random_crop", "random_flip", "pca_color_shift", "center_crop",
    "TrainTransform", "EvalTransform", "DataLoader", "load_size", "padded_side",
    "split_source", "warn_if_source_changed",
]
