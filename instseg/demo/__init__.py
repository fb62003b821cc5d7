"""Pretrained or trained Mask R-CNN on your images and videos: `Predictor`, overlays, the demo.

    from instseg.demo import Predictor
    predictor = Predictor.from_checkpoint("best.ckpt")      # or Predictor.from_pretrained()
    instances = predictor("photo.jpg")                      # path, PIL image, array, tensor
    overlay = predictor.render("photo.jpg", instances)      # uint8 [3, H, W]

The command line (`instseg-demo input=... [ckpt=...]`, `python -m instseg.demo`) is
`instseg.pipeline.demo`; conf/demo.yaml lists its options.
"""

from instseg.demo.predictor import Instances, Predictor

__all__ = ["Instances", "Predictor"]
