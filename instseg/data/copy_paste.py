"""Simple copy-paste (Ghiasi et al., 2021) between the training images of a batch.

Each image receives a random subset of the instances of the next image of the batch (the
batch rolled by one, as torchvision's references do): their pixels, resized with the source
image to the receiving image's size, are pasted over it (edges softened by a Gaussian blur
of the pasted region, sigma 1), their masks, boxes and labels are appended to its targets,
and the receiving image's own masks lose the pasted pixels. Its instances left with fewer
than `min_pixels` pixels are dropped and counted in "dropped_instances" (the pasted ones in
"pasted_instances"); every box is its mask's extent afterwards.

Random draws come from a generator seeded by the batch's samples' seeds ("sample_seed", set
by the dataset from (seed, epoch, index)), so a batch's pasting is a function of its samples
(exact resume); without them (DDP's sampler), from torch's global generator.

Input and output: images float32 [3, H, W] in [0, 1]; targets with boxes XYXY float32
[N, 4], masks uint8 [N, H, W], labels int64 [N].
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from instseg.structures.masks import mask_extents


class CopyPaste:
    def __init__(self, probability: float = 1.0, blend_sigma: float = 1.0,
                 min_pixels: int = 1) -> None:
        """probability: of an image receiving pastes; blend_sigma: 0 for hard edges."""
        self.probability = probability
        self.blend_sigma = blend_sigma
        self.min_pixels = max(int(min_pixels), 1)

    def __call__(self, images: list[torch.Tensor],
                 targets: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
        if len(images) < 2:
            return images, targets
        generator = _batch_generator(targets)
        pasted_images, pasted_targets = [], []
        for k, (image, target) in enumerate(zip(images, targets, strict=True)):
            source = (k + 1) % len(images)
            chosen = _choose(len(targets[source]["labels"]), self.probability, generator)
            if len(chosen) == 0:
                pasted_images.append(image)
                pasted_targets.append(target)
                continue
            image, target = self._paste(image, target, images[source], targets[source], chosen)
            pasted_images.append(image)
            pasted_targets.append(target)
        return pasted_images, pasted_targets

    def _paste(self, image, target, source_image, source_target, chosen):
        size = list(image.shape[-2:])
        masks = source_target["masks"][chosen]
        if list(source_image.shape[-2:]) != size:
            source_image = F.resize(source_image, size, antialias=True)
            masks = F.resize(masks, size, interpolation=F.InterpolationMode.NEAREST_EXACT)
        region = masks.amax(dim=0).to(image.dtype)  # [H, W] in {0, 1}
        alpha = region
        if self.blend_sigma > 0:
            alpha = F.gaussian_blur(region[None, None], kernel_size=[5, 5],
                                    sigma=[self.blend_sigma])[0, 0]
        image = image * (1 - alpha) + source_image * alpha
        own = target["masks"] * (1 - region.to(torch.uint8))
        all_masks = torch.cat([own, masks.to(own.dtype)])
        labels = torch.cat([target["labels"], source_target["labels"][chosen]])
        keep = all_masks.flatten(1).sum(dim=1) >= self.min_pixels
        updated = dict(target)
        updated.update(masks=all_masks[keep], labels=labels[keep],
                       boxes=mask_extents(all_masks[keep]),
                       dropped_instances=int(target.get("dropped_instances", 0))
                       + int((~keep).sum()),
                       pasted_instances=int(target.get("pasted_instances", 0)) + len(chosen))
        return image, updated  # a convex blend of two images in [0, 1]


def _choose(count: int, probability: float, generator) -> torch.Tensor:
    """Indices of a random non-empty subset of `count` instances, or none (no paste)."""
    if count == 0 or torch.rand(1, generator=generator).item() >= probability:
        return torch.zeros(0, dtype=torch.int64)
    picked = torch.randint(0, count, (count,), generator=generator)
    return torch.unique(picked)  # sorted: the source's order


def _batch_generator(targets: list[dict]) -> torch.Generator | None:
    seeds = [t.get("sample_seed") for t in targets]
    if any(seed is None for seed in seeds):
        return None  # torch's global generator
    return torch.Generator().manual_seed(hash(tuple(int(s) for s in seeds)) % 2**63)
