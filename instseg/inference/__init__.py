"""Pretrained or trained Mask R-CNN on your images: `Predictor` and the inference
optimisations, usable without any task code.

    from instseg.inference import Predictor
    predictor = Predictor.from_checkpoint("best.ckpt")      # or Predictor.from_pretrained()
    detections = predictor("photo.jpg")                     # path, PIL image, array, tensor
    overlay = predictor.render("photo.jpg", detections)     # uint8 [3, H, W]
    records = detections.records()                          # COCO results records

`detections` is an `instseg.structures.Detections` (boxes, scores, category_ids, class_names,
masks). The command line (`instseg-demo input=... [ckpt=...]`) is `instseg.tasks.demo`;
conf/demo.yaml lists its options.
"""

from instseg.inference.predictor import Predictor

__all__ = ["Predictor"]
