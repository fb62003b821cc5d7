"""WinogradConv2d computes what nn.Conv2d computes (3x3, stride 1, padding 1), to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instseg.inference import winograd
from instseg.inference.winograd import WinogradConv2d, is_winograd_compatible


@pytest.mark.parametrize(("shape", "bias"), [
    ((1, 16, 13, 17), True),  # sizes that are not whole tiles
    ((3, 8, 4, 4), False),  # one tile, no bias
    ((5, 32, 14, 14), True),  # the mask head's RoI maps
    ((1, 8, 1, 1), True),
])
def test_winograd_matches_direct_convolution(shape, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], 24, 3, padding=1, bias=bias).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = conv(x)
        got = WinogradConv2d.from_conv(conv)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4 * expected.abs().max().item(), rtol=0)


def test_blocks_of_tiles_cover_every_image_and_row(monkeypatch):
    """Small blocks: many images per block, and rows of one big image split over blocks."""
    monkeypatch.setattr(winograd, "TILES_PER_BLOCK", 6)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1).eval()
    for shape in [(7, 4, 4, 4), (2, 4, 30, 9)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            torch.testing.assert_close(WinogradConv2d.from_conv(conv)(x), conv(x),
                                       atol=1e-4, rtol=1e-4)


def test_empty_batch():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        assert WinogradConv2d.from_conv(conv)(torch.zeros(0, 8, 14, 14)).shape == (0, 8, 14, 14)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3),
    nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.Conv2d(8, 8, 3, padding=2, dilation=2),
])
def test_other_convolutions_are_refused(conv):
    assert not is_winograd_compatible(conv)
    with pytest.raises(ValueError, match="not a 3x3"):
        WinogradConv2d.from_conv(conv)


def test_autocast_and_other_dtypes_run_the_ordinary_convolution():
    """The transforms would lose too much precision in bf16: the same weights, direct."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1).eval()
    winograd = WinogradConv2d.from_conv(conv)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(winograd(x), conv(x))
    with torch.no_grad():
        assert torch.equal(winograd.double()(x.double()), conv.double()(x.double()))
