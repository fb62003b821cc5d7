"""The demo command, its video round trip and its errors, with a checkpoint trained here."""

import json
import shutil
from fractions import Fraction

import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.io import decode_image

from instseg.data.images import read_rgb
from instseg.inference.video import VideoWriter, read_frames
from instseg.tasks.demo import demo
from instseg.utils.errors import InstsegError
from tests.conftest import compose_config, shared_data


def _demo(tmp_path, checkpoint, *overrides):
    output = tmp_path / "out"
    cfg = compose_config("demo", [f"ckpt={checkpoint}", "score_threshold=0.05", *overrides],
                         output)
    return demo(cfg), output


def _photo_folder(tmp_path, count: int):
    """A folder of the first `count` demo photos (the demo reads a folder as a user's)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in sorted(shared_data("demo-images").glob("*.jpg"))[:count]:
        shutil.copy(photo, folder / photo.name)
    return folder


def test_overlay_and_coco_json_for_every_demo_image(tmp_path, tiny_checkpoint):
    folder = _photo_folder(tmp_path, 3)
    images = sorted(folder.glob("*.jpg"))
    result, output = _demo(tmp_path, tiny_checkpoint, f"input={folder}")
    assert result["inputs"] == len(images) == 3
    assert result["detections"] > 0  # a few shapes-model detections at threshold 0.05
    for image in images:
        height, width = read_rgb(image).shape[1:]
        overlay = decode_image(str(output / f"{image.stem}.png"))
        assert tuple(overlay.shape) == (3, height, width)
        for record in json.loads((output / f"{image.stem}.json").read_text()):
            assert mask_utils.decode(record["segmentation"]).shape == (height, width)
            assert set(record) >= {"image_id", "category_id", "bbox", "score"}
    summary = json.loads((output / "demo_summary.json").read_text())
    assert [e["file"] for e in summary["inputs"]] == [str(i) for i in images]
    assert [c["name"] for c in summary["categories"]] == ["circle", "rectangle", "triangle",
                                                          "star"]


def test_side_by_side_doubles_the_width(tmp_path, tiny_checkpoint):
    image = sorted(shared_data("demo-images").glob("*.jpg"))[0]
    _, output = _demo(tmp_path, tiny_checkpoint, f"input={image}", "side_by_side=true")
    height, width = read_rgb(image).shape[1:]
    side_by_side = decode_image(str(output / f"{image.stem}.png"))
    assert tuple(side_by_side.shape) == (3, height, 2 * width)
    assert torch.equal(side_by_side[:, :, :width], read_rgb(image))  # the input, untouched


def test_unreadable_input_is_reported_and_the_others_still_run(tmp_path, tiny_checkpoint):
    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted(shared_data("demo-images").glob("*.jpg"))[0]
    (folder / "a_good.jpg").write_bytes(good.read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(InstsegError, match="1 of 2 inputs failed:\n.*b_broken.jpg: cannot read"):
        _demo(tmp_path, tiny_checkpoint, f"input={folder}")
    assert (tmp_path / "out" / "a_good.png").is_file()


def test_missing_input_fails_before_loading_a_model(tmp_path):
    cfg = compose_config("demo", [f"input={tmp_path}/nowhere.jpg"], tmp_path)
    with pytest.raises(InstsegError, match="input not found: .*nowhere.jpg"):
        demo(cfg)


def test_video_round_trip(tmp_path, tiny_checkpoint, tiny_shapes):
    frames = [read_rgb(p) for p in sorted((tiny_shapes / "val").glob("*.png"))[:5]]
    clip = tmp_path / "clip.mp4"
    writer = VideoWriter(clip, Fraction(5))
    for frame in frames:
        writer.write(frame)
    writer.close()

    _, output = _demo(tmp_path, tiny_checkpoint, f"input={clip}")
    written = list(read_frames(output / "clip.mp4"))
    assert len(written) == 5 and tuple(written[0].shape) == tuple(frames[0].shape)
    records = json.loads((output / "clip.json").read_text())
    assert records and {r["image_id"] for r in records} <= {1, 2, 3, 4, 5}
    size = list(frames[0].shape[1:])
    assert all(r["segmentation"]["size"] == size for r in records)

    _, output = _demo(tmp_path, tiny_checkpoint, f"input={clip}", "video_output=frames")
    assert sorted(p.name for p in (output / "clip").iterdir()) == [
        f"{n:06d}.png" for n in range(1, 6)]


def test_without_cached_coco_weights_the_message_says_how_and_offers_ckpt(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    image = sorted(shared_data("demo-images").glob("*.jpg"))[0]
    cfg = compose_config("demo", [f"input={image}"], tmp_path)
    with pytest.raises(InstsegError, match="(?s)download.*ckpt=PATH"):
        demo(cfg)
