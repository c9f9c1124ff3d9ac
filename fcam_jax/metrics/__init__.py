"""WSOL evaluation, identical to the wsolevaluation benchmark (docs/design.md §9), on host numpy/OpenCV.

`BoxEvaluator` (CUB, ILSVRC) and `MaskEvaluator` (OpenImages) stream over batches of
score maps (B, S, S) in [0, 1] named by `ImageRecord.index`; `compute()` returns a flat
JSON-serialisable dict, the keys of results.json. Percentages are in [0, 100]; tau is a
score-map threshold in `arange(0, 1, cam_curve_interval)`; "best tau" is the first tau
reaching the maximum.

Box keys (BoxEvaluator):

| key | definition |
|---|---|
| num_images | images evaluated |
| MaxBoxAcc | max over tau of the % of images whose largest-contour box has IoU >= 0.5 with a GT box |
| best_tau_MaxBoxAcc | the tau of MaxBoxAcc |
| MaxBoxAcc@d | as MaxBoxAcc at IoU >= d/100, for d in iou_thresholds and 50 |
| MaxBoxAccV2@d | max over tau of the % of images where some contour's box (all contours, holes included) has IoU >= d/100 with a GT box |
| best_tau_MaxBoxAccV2@d | the tau of MaxBoxAccV2@d |
| MaxBoxAccV2 | mean of MaxBoxAccV2@d over iou_thresholds (default 30, 50, 70) |
| top1_loc / top5_loc | max over tau of the % of images with a correct largest-contour box at IoU 0.5 AND the label among the top-1 / top-5 logits (each maximized over its own tau); only with logits |
| best_tau_top1_loc / best_tau_top5_loc | their taus |
| top1_cls / top5_cls | % of images with the label among the top-1 / top-5 logits (ties: lower class first); only with logits |
| curve_tau | the thresholds tau (list) |
| curve_BoxAcc@d | box accuracy (largest contour) at every tau (list) |
| curve_BoxAccV2@d | box accuracy (all contours) at every tau (list) |
| curve_top1_loc / curve_top5_loc | Top-1 / Top-5 Loc at every tau (lists); only with logits |

Mask keys (MaskEvaluator):

| key | definition |
|---|---|
| num_images | images evaluated |
| PxAP | 100 x area under the pixel precision-recall curve (ignore pixels excluded) |
| top1_cls / top5_cls | as above, when logits (and records) are given |
| curve_pr_threshold | score threshold of each curve point (score >= threshold), descending |
| curve_precision / curve_recall | the precision-recall curve at those thresholds |

The benchmark's fine print is reproduced: maps are quantized as uint8(float64(map) * 255)
for boxes; foreground is `q > int(tau * max(q))`; box = bounding rect to x + w clipped at
S - 1; no contour -> box (0, 0, 0, 0); GT boxes scaled to S with int() truncation; IoU
counts pixels inclusively; PxAP scores are float64, not quantized, a score of 1.0 falls
in the [1, 2) bin and the first (0/0) curve point is skipped.

Merging: `state()` is a flat dict of numpy count arrays; states from several processes
add up elementwise and `merge_state(state)` (or `merge(other)`) adds them in.
"""

from fcam_jax.metrics.boxes import (BoxEvaluator, binarize, box_iou, largest_contour_box,
                                    quantize, scale_boxes, threshold_ious)
from fcam_jax.metrics.common import cam_thresholds, topk_hits
from fcam_jax.metrics.masks import MaskEvaluator, score_bins

# The headline metrics reported side by side (results.json's comparison, summary.md,
# report, sweep tables), with their display names.
REPORTED = ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top5_loc", "top1_cls")
DISPLAY_NAMES = {"MaxBoxAcc": "MaxBoxAcc", "MaxBoxAccV2": "MaxBoxAccV2", "PxAP": "PxAP",
                 "top1_loc": "Top-1 Loc", "top5_loc": "Top-5 Loc", "top1_cls": "Top-1 Cls"}
# The val metrics a run can select its checkpoint by (`config.eval.selection_metric`).
SELECTION = ("MaxBoxAcc", "MaxBoxAccV2", "PxAP", "top1_loc", "top5_loc", "top1_cls")

__all__ = ["BoxEvaluator", "DISPLAY_NAMES", "MaskEvaluator", "REPORTED", "SELECTION",
           "binarize", "box_iou", "cam_thresholds", "largest_contour_box", "quantize",
           "scale_boxes", "score_bins", "threshold_ious", "topk_hits"]
