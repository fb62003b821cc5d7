"""`instseg-convert` / `python -m instseg.data.convert {labelme,voc,yolo} ... -o OUT.json`:
the converters behind one argparse command. Exit status 0 on success (bad records are
warnings on stderr, the summary on stdout), 1 for unusable arguments (InstsegError: its
message alone), 2 for usage errors (argparse)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from instseg.data.convert.builder import write_json
from instseg.data.convert.labelme import convert_labelme
from instseg.data.convert.voc import convert_voc
from instseg.data.convert.yolo import convert_yolo
from instseg.utils.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per format; each sets `run`, the conversion of its parsed arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m instseg.data.convert",
        description="Convert labelme, VOC or YOLO-seg annotations to a COCO instances json.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="{labelme,voc,yolo}")
    subcommands = (_add_labelme(formats), _add_voc(formats), _add_yolo(formats))
    for sub in subcommands:
        sub.add_argument("-o", "--output", required=True, help="the COCO json to write")
    return parser


def _add_labelme(formats) -> argparse.ArgumentParser:
    labelme = formats.add_parser("labelme", help="a folder of labelme json files")
    labelme.add_argument("folder", help="the labelme json files")
    labelme.add_argument("--images", help="image folder; file names are relative to it "
                         "(default: the labelme folder)")
    labelme.add_argument("--labels", help="class names, one per line; lines __ignore__ and "
                         "_background_ are not classes (default: the labels seen, sorted)")
    labelme.set_defaults(run=lambda a: convert_labelme(a.folder, a.images, a.labels))
    return labelme


def _add_voc(formats) -> argparse.ArgumentParser:
    voc = formats.add_parser("voc", help="SegmentationObject + SegmentationClass PNGs")
    voc.add_argument("--root", required=True, help="folder with SegmentationObject/, "
                     "SegmentationClass/ and JPEGImages/")
    voc.add_argument("--labels", help="names of class indices 1, 2, ..., one per line "
                     "(default: the 20 PASCAL VOC classes)")
    voc.set_defaults(run=lambda a: convert_voc(a.root, a.labels))
    return voc


def _add_yolo(formats) -> argparse.ArgumentParser:
    yolo = formats.add_parser("yolo", help="YOLO-seg txt label files")
    yolo.add_argument("--labels", required=True, help="folder of YOLO-seg .txt files")
    yolo.add_argument("--images", required=True, help="image folder (same relative names)")
    yolo.add_argument("--names", required=True, help="class names, line i = class i "
                      "(or an Ultralytics data yaml)")
    yolo.add_argument("--category-ids", help="category id of each class, one per line "
                      "(default 1..K)")
    yolo.set_defaults(run=lambda a: convert_yolo(a.labels, a.images, a.names, a.category_ids))
    return yolo


def main(argv: Sequence[str] | None = None) -> int:
    """Convert, write the json, print every warning (stderr) and the summary (stdout): 0."""
    args = build_parser().parse_args(argv)  # usage errors: exit status 2
    with exit_on_user_error():  # bad input: its message and exit status 1
        converted = args.run(args)
        write_json(converted.dataset, args.output)
    for warning in converted.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.output}: {converted.summary()}")
    return 0
