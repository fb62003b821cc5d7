"""RoIAlign on CPU as one sparse-matrix product per feature level, for inference.

torchvision's CPU RoIAlign kernel runs on one thread and reads every channel plane of an
NCHW map for each sample point: pooling R50-FPN's 1,000 proposals took 0.14 s at 800 px on
the 2-core machine even split across both threads, 0.03 s this way
(`benchmarks/bench_inference.py --stages`, before and after). Each pooled value is a fixed
weighted sum of feature pixels (bilinear weights of the sampling_ratio x sampling_ratio
points in its bin, averaged), so all RoIs of a level are one sparse matrix
S [RoIs x 7 x 7, H x W] (16 weights per row for sampling_ratio 2) times the level as a dense
[H x W, C] matrix, a product that reads whole channel vectors of a channels_last map.
`SparseRoIAlign(pool)` wraps a torchvision `MultiScaleRoIAlign` and does just that, with
torchvision's own level assignment and scales and its sampling rules (the same sample
points, the same clamping at the borders, zero outside [-1, size]).

Output: [K, C, P, P] float32 like the wrapped pool's, for the boxes of all images in list
order; it differs from torchvision's by summation order only (about 1e-7 of the features'
magnitude; tests/inference/test_roi_pooling.py). Anything else (CUDA tensors, other dtypes or
autocast, sampling_ratio <= 0 that adapts the points to each box) goes to the wrapped pool
unchanged.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchvision.ops.poolers import MultiScaleRoIAlign, _filter_input, _setup_scales


class SparseRoIAlign(nn.Module):
    def __init__(self, pool: MultiScaleRoIAlign) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        pool = self.pool
        levels = _filter_input(features, pool.featmap_names)
        if (pool.sampling_ratio <= 0 or torch.is_autocast_enabled("cpu")
                or any(level.device.type != "cpu" or level.dtype != torch.float32
                       for level in levels)):
            return pool(features, boxes, image_shapes)
        if pool.scales is None or pool.map_levels is None:
            pool.scales, pool.map_levels = _setup_scales(levels, image_shapes,
                                                         pool.canonical_scale,
                                                         pool.canonical_level)
        all_boxes = torch.cat(boxes)
        images = torch.cat([torch.full((len(b),), i) for i, b in enumerate(boxes)])
        size = tuple(pool.output_size)
        out = all_boxes.new_zeros((len(all_boxes), levels[0].shape[1], *size))
        level_of = (pool.map_levels(boxes) if len(levels) > 1
                    else torch.zeros(len(all_boxes), dtype=torch.int64))
        for index, (level, scale) in enumerate(zip(levels, pool.scales, strict=True)):
            chosen = torch.nonzero(level_of == index).flatten()
            if len(chosen):
                out[chosen] = _align_level(level, all_boxes[chosen] * scale, images[chosen],
                                           size, pool.sampling_ratio)
        return out


def _align_level(level: torch.Tensor, boxes: torch.Tensor, images: torch.Tensor,
                 size: tuple[int, int], points: int) -> torch.Tensor:
    """level [B, C, H, W]; boxes [R, 4] in the level's pixels; images [R] -> [R, C, P, P]."""
    batch, channels, height, width = level.shape
    count, (rows_out, cols_out) = len(boxes), size
    x0, y0, x1, y1 = boxes.unbind(1)
    ys, y_weights = _axis_samples(y0, (y1 - y0).clamp(min=1.0), rows_out, points, height)
    xs, x_weights = _axis_samples(x0, (x1 - x0).clamp(min=1.0), cols_out, points, width)
    # Row (r, i, j) of S: every y corner of bin row i with every x corner of bin column j.
    columns = (images.view(-1, 1, 1, 1, 1) * (height * width)
               + ys[:, :, None, :, None] * width + xs[:, None, :, None, :])
    weights = y_weights[:, :, None, :, None] * x_weights[:, None, :, None, :] / (points * points)
    per_row = columns.shape[-1] * columns.shape[-2]
    row_starts = torch.arange(0, count * rows_out * cols_out * per_row + 1, per_row)
    # A row's columns are unsorted and may repeat (samples sharing a pixel, clamped borders):
    # CSR times dense sums them all the same (the border tests check it), but the tensor is
    # outside what check_invariants accepts, so it is built unchecked.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        sampling = torch.sparse_csr_tensor(row_starts, columns.reshape(-1), weights.reshape(-1),
                                           (count * rows_out * cols_out, batch * height * width),
                                           check_invariants=False)
    pixels = level.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = sampling @ pixels  # [R P P, C]
    return pooled.view(count, rows_out, cols_out, channels).permute(0, 3, 1, 2)


def _axis_samples(start: torch.Tensor, extent: torch.Tensor, bins: int, points: int,
                  length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis, for each box: the two neighbouring pixel indices and bilinear weights
    of each of the `points` samples in each of the `bins` bins, as torchvision's
    roi_align (aligned=False) places and clamps them -> ([R, bins, 2 points] int64, same
    float)."""
    step = torch.arange(bins * points, dtype=start.dtype)
    bin_size = extent / bins
    at = (start[:, None] + (step // points) * bin_size[:, None]
          + ((step % points) + 0.5) * bin_size[:, None] / points)
    inside = (at >= -1.0) & (at <= length)
    at = at.clamp(min=0)
    # clamped for non-finite boxes too (no read outside the map; finite ones are inside)
    low = at.floor().nan_to_num(0.0).clamp(0, length - 1).to(torch.int64)
    past_end = low >= length - 1  # torchvision: low = high = the last pixel, fraction 0
    high = torch.where(past_end, low, low + 1)
    fraction = torch.where(past_end, torch.zeros_like(at), at - low.to(at.dtype))
    indices = torch.stack([low, high], dim=-1).view(len(start), bins, 2 * points)
    weights = torch.stack([1 - fraction, fraction], dim=-1)
    weights = torch.where(inside[..., None], weights, torch.zeros_like(weights))
    return indices, weights.view(len(start), bins, 2 * points)
