import pytest

from instseg.models.zoo import model_rows


@pytest.mark.slow
def test_model_table_lists_every_model_with_published_numbers():
    rows = {row["model"]: row for row in model_rows()}
    assert set(rows) >= {f"`model={m}`" for m in
                         ["r50_fpn", "r50_fpn_v2", "r101_fpn", "x101_32x8d_fpn",
                          "mobilenet_v3_fpn", "small_cpu"]}
    assert rows["`model=r50_fpn`"]["published COCO AP (box / mask)"] == "37.9 / 34.6"
    assert rows["`model=r50_fpn_v2`"]["published COCO AP (box / mask)"] == "47.4 / 41.8"
    assert rows["`model=r50_fpn`"]["parameters"] == "44.5 M"
    # torchvision's published 134.38 (no detections); tests/models/test_cost.py checks both
    assert rows["`model=r50_fpn`"]["compute (multiply-adds)"].startswith(
        "187.6 GFLOPs per 800x800 image (134.4 + 100 detections x 0.532)")
