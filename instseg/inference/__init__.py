"""Pretrained or trained Mask R-CNN on your images: `Predictor` and the inference
optimisations, usable without any task code.

    from instseg.inference import Predictor
    predictor = Predictor.from_checkpoint("best.ckpt")      # or Predictor.from_pretrained()
    instances = predictor("photo.jpg")                      # path, PIL image, array, tensor
    overlay = predictor.render("photo.jpg", instances)      # uint8 [3, H, W]

The command line (`instseg-demo input=... [ckpt=...]`) is `instseg.tasks.demo`;
conf/demo.yaml lists its options.
"""

from instseg.inference.predictor import Instances, Predictor

__all__ = ["Instances", "Predictor"]
