"""Video frames in and out with PyAV (FFmpeg): uint8 RGB [3, H, W] tensors per frame."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from instseg.utils.errors import InstsegError


def read_frames(path: Path) -> Iterator[torch.Tensor]:
    """The frames of the first video stream of `path`, in order."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                yield torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    except (av.error.FFmpegError, IndexError) as error:
        raise InstsegError(f"{path}: cannot read video ({error})") from error


def frame_rate(path: Path) -> Fraction:
    import av

    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
    except (av.error.FFmpegError, IndexError) as error:
        raise InstsegError(f"{path}: cannot read video ({error})") from error
    return Fraction(rate) if rate else Fraction(25)


class VideoWriter:
    """MPEG-4 video of uint8 RGB [3, H, W] frames (odd sizes are padded to even ones, as
    yuv420p needs)."""

    def __init__(self, path: Path, rate: Fraction) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("mpeg4", rate=rate)
        self.stream.pix_fmt = "yuv420p"
        self.stream.bit_rate = 4_000_000
        self.started = False

    def write(self, frame: torch.Tensor) -> None:
        import av

        pixels = frame.permute(1, 2, 0).numpy()
        height, width = pixels.shape[:2]
        pixels = np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)))
        if not self.started:
            self.stream.height, self.stream.width = pixels.shape[:2]
            self.started = True
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        for packet in self.stream.encode(video_frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
