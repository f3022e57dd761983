"""Data for the Heinsen-routing model zoo: DataModules, samplers, transforms, tiny real-format datasets.

Batches are dicts (see the team contract): raw vision ``{"image": [B, 3, H, W], "label": [B], "index": [B]}``,
raw text ``{"text": list[str], "label": [B], "index": [B]}``.

Example:
    >>> from heinsen_zoo.data import BBCNewsDataModule
    >>> BBCNewsDataModule(max_per_class=5).num_classes
    5
"""

from .base import TextDataset, ZooDataModule, stratified_split
from .bbc import BBCNewsDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule, read_cifar
from .collate import collate_images, collate_text
from .images import ImageNetDataModule
from .safe_pickle import RestrictedUnpickler, safe_load_pickle
from .sampling import CyclingRandomSampler, DistributedCyclingSampler
from .smallnorb import SmallNORBDataModule
from .text import IMDBDataModule, SSTDataModule

__all__ = [
    "BBCNewsDataModule",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CyclingRandomSampler",
    "DistributedCyclingSampler",
    "IMDBDataModule",
    "ImageNetDataModule",
    "RestrictedUnpickler",
    "SSTDataModule",
    "SmallNORBDataModule",
    "TextDataset",
    "ZooDataModule",
    "collate_images",
    "collate_text",
    "read_cifar",
    "safe_load_pickle",
    "stratified_split",
]
