"""3x3 convolutions by Winograd's minimal filtering, F(4x4, 3x3), for CPU inference.

`WinogradConv2d.from_conv(conv)` computes what a 3x3, stride 1, padding 1, ungrouped
`nn.Conv2d` computes, with 36 products per 6x6 input tile for its 4x4 outputs instead of 144:
4x fewer multiplications (3.1x on the mask head's 14x14 maps, covered by 16x16 of tiles),
for the price of the tile transforms. The weights are transformed once, in float64.
Input [N, C, H, W] float32 on CPU (any memory format); output [N, K, H, W] float32 in
channels_last. Anything else (a GPU, where cuDNN chooses its own algorithms; autocast or
another dtype, where the transforms would lose too much precision; an empty map) runs the
ordinary convolution with the same weights.

Rounding: the transforms add and scale by small constants (1/4, 1/6, 1/24), so results
differ from direct convolution by about 1e-5 of the output's magnitude (measured in
tests/inference/test_winograd.py), ten times oftener than different summation orders do, and
far inside inference's tolerances (boxes and scores within 1e-3, masks IoU >= 0.99).

The work is done a block of tiles at a time, so that a block's transformed input (36 x tiles
x C floats) stays in the CPU's cache between the transform and the products; PyTorch's own
convolutions (oneDNN) are direct, not Winograd, on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUT, TILE = 4, 6  # output tile 4x4, input tile 6x6
TILES_PER_BLOCK = 128

# F(4, 3) with interpolation points 0, +-1, +-2, infinity (Lavin & Gray, 2015).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def is_winograd_compatible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class WinogradConv2d(nn.Module):
    """A 3x3/stride 1/padding 1 convolution computed by F(4x4, 3x3); see the module docstring."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        out_channels, in_channels = weight.shape[:2]
        g = torch.tensor(_G, dtype=torch.float64)
        bt = torch.tensor(_BT, dtype=torch.float64)
        at = torch.tensor(_AT, dtype=torch.float64)
        # U[p, c, k]: the kernel of output channel k, input channel c, at tile point p.
        u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double(), g)
        self.register_buffer("u", u.reshape(TILE * TILE, in_channels, out_channels).float())
        # Both 2-D transforms as one matrix on the flattened tile (Kronecker products).
        self.register_buffer("input_transform", torch.kron(bt, bt).float())
        self.register_buffer("output_transform", torch.kron(at, at).float())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("weight", weight.detach().clone())  # for the fallback
        self.in_channels, self.out_channels = in_channels, out_channels

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        if not is_winograd_compatible(conv):
            raise ValueError(f"not a 3x3/stride 1/padding 1 convolution: {conv}")
        return cls(conv.weight, conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _winograd_applies(x):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        n, _, height, width = x.shape
        tiles_h, tiles_w = -(-height // OUT), -(-width // OUT)
        nhwc = x.permute(0, 2, 3, 1)
        # Zero padding: 1 for the convolution, and up to whole tiles at the bottom/right.
        padded = F.pad(nhwc, (0, 0, 1, tiles_w * OUT + 1 - width, 1, tiles_h * OUT + 1 - height))
        out = x.new_empty((n, tiles_h * OUT, tiles_w * OUT, self.out_channels))
        for images, rows in _blocks(n, tiles_h, tiles_w):
            window = padded[images, rows.start * OUT: rows.stop * OUT + 2]
            out[images, rows.start * OUT: rows.stop * OUT] = self._block(window)
        out = out[:, :height, :width]
        if self.bias is not None:
            out += self.bias
        return out.permute(0, 3, 1, 2)

    def _block(self, window: torch.Tensor) -> torch.Tensor:
        """[n, 4r + 2, 4t + 2, C] padded NHWC input -> [n, 4r, 4t, K] output."""
        n, rows, cols = window.shape[0], (window.shape[1] - 2) // OUT, (window.shape[2] - 2) // OUT
        tiles = window.unfold(1, TILE, OUT).unfold(2, TILE, OUT)  # [n, r, t, C, 6, 6]
        flat = tiles.reshape(-1, TILE * TILE)  # [n r t C, 36]
        v = torch.mm(self.input_transform, flat.t()).view(TILE * TILE, -1, self.in_channels)
        m = torch.bmm(v, self.u)  # [36, n r t, K]
        y = torch.mm(self.output_transform, m.view(TILE * TILE, -1))  # [16, n r t K]
        y = y.view(OUT, OUT, n, rows, cols, self.out_channels)
        return y.permute(2, 3, 0, 4, 1, 5).reshape(n, rows * OUT, cols * OUT, self.out_channels)


def _winograd_applies(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu"))


def _blocks(n: int, tiles_h: int, tiles_w: int):
    """(slice of images, slice of tile rows) blocks of about TILES_PER_BLOCK tiles each."""
    per_image = tiles_h * tiles_w
    if per_image >= TILES_PER_BLOCK:
        rows = max(1, TILES_PER_BLOCK // tiles_w)
        for image in range(n):
            for start in range(0, tiles_h, rows):
                yield slice(image, image + 1), range(start, min(start + rows, tiles_h))
        return
    images = max(1, TILES_PER_BLOCK // per_image)
    for start in range(0, n, images):
        yield slice(start, min(start + images, n)), range(0, tiles_h)
