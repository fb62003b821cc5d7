"""Other annotation formats to a COCO instances json that
`instseg.data.validation.check_annotations` accepts and `data=coco_format` trains on:
`convert_labelme`, `convert_voc` and `convert_yolo` each return a `Converted` (the json and
the records reported), `write_json` writes it; `python -m instseg.data.convert
{labelme,voc,yolo} ... -o OUT.json` (or `instseg-convert`) does both.

In:
    labelme  a folder of labelme json files: `shapes` [{label, points, group_id, shape_type}],
             `imagePath` (relative to the json), `imageHeight`, `imageWidth`. Shapes sharing a
             non-null group_id are one instance (several polygons); rectangles become 4-point
             polygons; other shape types (circle, line, point, mask, ...) are reported.
             Categories: `--labels FILE` (one name per line) or the sorted labels seen.
             labelme's reserved labels are never classes, with or without `--labels`
             (whose reserved lines, e.g. labels.txt's first two, `__ignore__` and
             `_background_`, are dropped): a `__ignore__` shape (or group) is an ignore
             region, see below; `_background_` (and the other NOT_CLASSES) shapes are
             reported and skipped.
    voc      `--root` with SegmentationObject/*.png (instance index per pixel), SegmentationClass
             /*.png (class index per pixel), both palette PNGs read as indices (0 background,
             255 void: never part of a mask), and JPEGImages/*.jpg. An instance's class is the
             majority class of its pixels. Only images with a SegmentationObject PNG are
             converted. Categories: the 20 PASCAL VOC classes (index 1..20) or `--labels`.
    yolo     `--labels DIR` of YOLO-seg txt files (`class x1 y1 x2 y2 ...`, normalised to [0, 1]
             of the image's width and height), `--images DIR` (same relative path and stem),
             `--names FILE` (line i = class i; or an Ultralytics data yaml with `names`) and
             optionally `--category-ids FILE` (line i = the category id of class i, e.g. COCO's
             1..90) to keep a dataset's own ids.

Out (the same for all): images with ids 1..N in sorted `file_name` order (the path relative to
the image folder), `width`/`height` from the image file's header (labelme: its json's size);
annotations with ids 1..M, `iscrowd` 0 (labelme's ignore regions: 1, see below), `area` and
`bbox` of the instance's mask (pycocotools' area / toBbox of its RLE); `categories` in the
names' order (else sorted) with ids 1..K (yolo with `--category-ids`: those). Segmentation:
polygons [[x1, y1, ...], ...] rounded to 0.01 px (labelme, yolo: the mask is that of the
rounded polygons) or a compressed RLE with `counts` a str (voc: pixel masks stay exact).

Ignore regions (labelme's `__ignore__`; labelme2voc.py gives it id -1, below `_background_`'s
0): `iscrowd` 1, the segmentation a compressed RLE of the rounded polygons' mask (COCO's form
for crowd regions), `area` and `bbox` of that mask, on their image, one such annotation for
every category. Why every category: COCO has no category-less annotation, and pycocotools'
COCOeval matches a crowd region only against detections of its own category, so one copy per
category is what lets the region absorb a detection of any class, as "ignore" means. Training
never uses crowd records as targets (instseg.data.coco); they stay in the evaluation ground
truth, where ignored ground truth adds no positives: the copies change AP only by no longer
counting detections inside the region as false positives. (labelme's own labelme2coco.py drops
`__ignore__` shapes, so such detections count as false positives.) The summary counts the
regions; with no category at all they are reported and dropped.

Bad records (unreadable file, unknown label, polygon of < 3 points, class index out of range,
instance without pixels, ...) are each reported with their file and skipped; `Converted.
warnings` lists them (`Reported`: source, kind, detail) and the command prints them with a
count by kind. Unusable arguments (a missing folder or names file) raise InstsegError: one
line, exit status 1.

Modules: `builder` (the json's numbering, the reports, the readers and instance makers that
formats share), `labelme`, `voc`, `yolo` (one format each, importing only `builder`) and `cli`
(the command, importing the formats).
"""

from instseg.data.convert.builder import (
    NOT_CLASSES,
    Converted,
    Reported,
    read_names,
    write_json,
)
from instseg.data.convert.cli import build_parser, main
from instseg.data.convert.labelme import IGNORE, convert_labelme
from instseg.data.convert.voc import VOC_CLASSES, convert_voc
from instseg.data.convert.yolo import convert_yolo, read_category_ids

__all__ = [
    "IGNORE",
    "NOT_CLASSES",
    "VOC_CLASSES",
    "Converted",
    "Reported",
    "build_parser",
    "convert_labelme",
    "convert_voc",
    "convert_yolo",
    "main",
    "read_category_ids",
    "read_names",
    "write_json",
]
