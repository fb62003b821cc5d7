"""The LightningModule and learning-rate schedules; networks are torchvision's, built by Hydra."""

from instseg.models.module import MaskRCNNModule

__all__ = ["MaskRCNNModule"]
