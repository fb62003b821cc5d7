"""COCO-format datasets, transforms and the synthetic shapes generator."""

from instseg.data.categories import CategoryMap
from instseg.data.datamodule import CocoDataModule, ShapesDataModule

__all__ = ["CategoryMap", "CocoDataModule", "ShapesDataModule"]
