"""instseg: Mask R-CNN instance segmentation with Hydra configs, Lightning training and COCO mAP."""

__version__ = "0.1.0"
