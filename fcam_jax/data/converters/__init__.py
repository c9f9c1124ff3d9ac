"""Converters of common annotation formats to the wsolevaluation metadata layout.

The command is `python -m fcam_jax.data.convert {csv,coco,voc} ...` (fcam_jax/data/convert.py).
Modules: common (errors, the image items every reader produces, the label rule, box
rounding), classes (the class index shared by the splits), layout (writes, checks and
installs one split), rle (COCO RLE and polygon rendering), and one reader per format:
csv_boxes, coco, voc.
"""
