"""Datasets for training and testing flows: the MAF tabular benchmarks, bundled tables, images.

``load_dataset(name)`` is the one entry point; ``list_datasets()`` says what exists and which
files each needs under the data root (``$NFKD_DATA_ROOT`` or the shared `datasets/` folder).
"""
from __future__ import annotations

from .embedded import load_breast_cancer_table, load_digits_table, load_magic, load_wine_table
from .images import (
    ImageSet,
    ImageSplits,
    load_celeba,
    load_cifar10,
    load_digits_images,
    load_image_folder,
    split_images,
)
from .quantize import dequantize, quantize, reduce_bits
from .registry import DATA_ROOT_ENV, DatasetInfo, dataset_info, default_data_root, list_datasets, load_dataset
from .splits import TabularSplits, maf_split_sizes
from .tabular import load_bsds300, load_gas, load_hepmass, load_miniboone, load_power

__all__ = [
    "DATA_ROOT_ENV", "DatasetInfo", "ImageSet", "ImageSplits", "TabularSplits",
    "dataset_info", "default_data_root", "dequantize", "list_datasets", "load_breast_cancer_table",
    "load_bsds300", "load_celeba", "load_cifar10", "load_dataset", "load_digits_images", "load_digits_table",
    "load_gas", "load_hepmass", "load_image_folder", "load_magic", "load_miniboone", "load_power",
    "load_wine_table", "maf_split_sizes", "quantize", "reduce_bits", "split_images",
]
