r"""Annotations in the formats datasets come in -> the wsolevaluation metadata layout.

  python -m fcam_jax.data.convert csv  --csv=boxes.csv --images=DIR --out=META --split=train
  python -m fcam_jax.data.convert coco --annotations=instances_val.json --images=DIR \
      --out=META --split=val [--masks=MASKS]
  python -m fcam_jax.data.convert voc  --annotations=VOC2012/Annotations \
      --images=VOC2012/JPEGImages --out=META --split=val [--ids=VOC2012/ImageSets/Main/val.txt]

One run converts one split into `<out>/<split>/{image_ids,class_labels,image_sizes,
localization}.txt` (docs/design.md §8; the folder is replaced) and keeps the class index
`<out>/class_names.txt` (line k = label k) shared by the splits: train creates or extends
it, val and test must use only its classes (convert train first). Image ids are paths
relative to --data_root (default --images), the trainer's config.dataset.data_root; with
--masks, mask paths are relative to the masks folder (config.dataset.mask_root).
Everything written is read back with fcam_jax.data.metadata.read_split (every image and
mask file opened) before it replaces the previous output. Images left out (no
annotation, ambiguous label, ...) are listed in `<out>/<split>_left_out.json`.

Prints one summary line per split. Bad input ends in one line `error: <file:line or
JSON id>: <what>` on stderr (--verbose shows the traceback instead); exit code 2 for usage
errors (bad flags), 1 for data errors. `--help` after a format explains its options.
See docs/own-dataset.md.
"""

import argparse
import os
import sys
from typing import List, Optional

from fcam_jax import cli
from fcam_jax.data.converters import coco, csv_boxes, layout, voc
from fcam_jax.data.converters.common import DEFAULT_AMBIGUOUS_RATIO, ConvertError, check_ratio

SPLITS = layout.SPLITS
PROG = "python -m fcam_jax.data.convert"


def _ratio(text: str) -> float:
  try:
    return check_ratio(float(text))
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e).replace("--ambiguous_ratio=", "")) from None


def _common(p: argparse.ArgumentParser):
  p.set_defaults(subparser=p)
  p.add_argument("--images", required=True, metavar="DIR",
                 help="the folder the annotations' image names are relative to")
  p.add_argument("--out", required=True, metavar="METADATA_DIR",
                 help="the metadata root (config.dataset.metadata_root): gets <split>/, "
                      "class_names.txt and <split>_left_out.json")
  p.add_argument("--split", required=True, choices=SPLITS,
                 help="the split to write; only train may add classes or have images "
                      "without ground truth")
  p.add_argument("--data_root", metavar="DIR",
                 help="the trainer's image root (config.dataset.data_root), which must hold "
                      "--images; image ids are relative to it (default: --images). Use the "
                      "parent folder when the splits' images are in separate folders "
                      "(e.g. coco/ for coco/train2017 and coco/val2017)")
  p.add_argument("--labels_only", action="store_true",
                 help="write no localization.txt (train: the classifier needs labels only)")
  cli.add_verbose_flag(p)


def _label_rule(p: argparse.ArgumentParser):
  p.add_argument("--ambiguous_ratio", type=_ratio, default=DEFAULT_AMBIGUOUS_RATIO,
                 metavar="R",
                 help="label rule: an image is labelled with the class of largest total "
                      "annotated area; it is left out as ambiguous when another class covers "
                      "at least R times that area (0 < R <= 1; 1: only ties; default "
                      "%(default)s)")


def parser() -> argparse.ArgumentParser:
  fmt = argparse.RawDescriptionHelpFormatter
  top = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n", 1)[1], formatter_class=fmt)
  sub = top.add_subparsers(dest="format", required=True, metavar="{csv,coco,voc}",
                           parser_class=cli.ArgumentParser)
  p = sub.add_parser("csv", help="an image folder and a CSV of boxes",
                     description=csv_boxes.__doc__, formatter_class=fmt)
  p.add_argument("--csv", required=True, metavar="FILE", help="the CSV (with a header)")
  p.add_argument("--box_format", choices=tuple(csv_boxes.BOX_COLUMNS), default="xyxy",
                 help="box columns x0,y0,x1,y1 (xyxy, default) or x,y,w,h (xywh)")
  _common(p)
  p = sub.add_parser("coco", help="a COCO instances JSON (boxes, or masks with --masks)",
                     description=coco.__doc__, formatter_class=fmt)
  p.add_argument("--annotations", required=True, metavar="FILE",
                 help="the instances JSON (images, annotations, categories)")
  p.add_argument("--masks", metavar="DIR",
                 help="render instance masks as PNGs under DIR/<split>/ (DIR is "
                      "config.dataset.mask_root) and write a mask dataset (PxAP) instead of "
                      "boxes")
  _label_rule(p)
  _common(p)
  p = sub.add_parser("voc", help="Pascal VOC XMLs (one per image)",
                     description=voc.__doc__, formatter_class=fmt)
  p.add_argument("--annotations", required=True, metavar="DIR", help="the folder of XMLs")
  p.add_argument("--ids", metavar="FILE",
                 help="the split's ids, one XML stem a line (VOC's ImageSets/Main/<split>.txt; "
                      "default: every XML in --annotations)")
  p.add_argument("--first_pixel", type=int, choices=(1, 0), default=1,
                 help="1: Pascal VOC's 1-based coordinates (default); 0: ImageNet's 0-based")
  p.add_argument("--difficult", choices=voc.DIFFICULT, default="keep",
                 help="objects marked difficult: keep them as boxes (default) or drop them")
  _label_rule(p)
  _common(p)
  return top


def _check_paths(args):
  """Flags that name nothing are usage errors."""
  sub = args.subparser
  files = {"csv": [("--csv", getattr(args, "csv", ""))],
           "coco": [("--annotations", getattr(args, "annotations", ""))],
           "voc": [("--ids", getattr(args, "ids", ""))]}[args.format]
  dirs = [("--images", args.images)]
  if args.format == "voc":
    dirs.append(("--annotations", args.annotations))
  for flag, path in files:
    if path and not os.path.isfile(path):
      sub.error(f"{flag}={path}: no such file")
  for flag, path in dirs:
    if not os.path.isdir(path):
      sub.error(f"{flag}={path}: no such folder")
  root = os.path.abspath(args.data_root or args.images)
  rel = os.path.relpath(os.path.abspath(args.images), root)
  if rel == ".." or rel.startswith(".." + os.sep):
    sub.error(f"--images={args.images} is not inside --data_root={args.data_root}")
  if args.labels_only and args.split != "train":
    sub.error(f"--labels_only with --split={args.split}: val and test need localization "
              "ground truth (val selects the model, test scores it)")
  if args.format == "coco" and args.masks and args.labels_only:
    sub.error("--masks and --labels_only: a labels-only split has no masks")


def convert(args) -> layout.Written:
  """Reads the input named by `args` and writes the split; the summary."""
  data_root = args.data_root or args.images
  left_out = []
  if args.format == "csv":
    items = csv_boxes.read(args.csv, args.images, data_root, args.split, args.box_format)
  elif args.format == "coco":
    items, left_out = coco.read(args.annotations, args.images, data_root,
                                bool(args.masks) and not args.labels_only, args.ambiguous_ratio)
  else:
    xmls = voc.xml_files(args.annotations, args.ids or "")
    items, left_out = voc.read(xmls, args.images, data_root, args.first_pixel, args.difficult,
                               args.ambiguous_ratio)
  return layout.write_split(items, left_out, args.out, args.split, data_root,
                            masks_dir=getattr(args, "masks", None) or "",
                            labels_only=args.labels_only)


def main(argv: Optional[List[str]] = None) -> int:
  p = parser()
  args = p.parse_args(argv)
  _check_paths(args)

  def run() -> int:
    print(convert(args).summary())
    return 0

  return cli.call(run, verbose=args.verbose, data_errors=(ConvertError, OSError))


if __name__ == "__main__":
  sys.exit(main())
