r"""Inference: F-CAM maps per second (encoder + decoder) against each CAM method's.

  python benchmarks/bench_inference.py [--batch=1] [--size=224] [--rounds=3]
      [--methods=cam,gradcam,gradcampp,smoothgradcampp,xgradcam,layercam] [--warmup=1] [--noforward]
      [--xla_options=xla_cpu_experimental_ynn_fusion_type=] [--torch] [--half_precision]

ResNet50-WSOL (200 classes) and its U-Net decoder, random weights, uint8 images in,
maps at the input size out, jitted:

* `F-CAM`: `stage2.fcam_maps(with_cam=False)`: normalize, classifier, decoder,
  softmax (what validation and `fcam_jax.predict` run);
* each CAM method: `stage1.classifier_maps`: normalize, classifier, the CAM of each
  image's label, min-max normalized, upsampled to the input size;
* `forward only`: normalize + classifier (logits), for scale.

The rows are called in turn, one call each per round, for `rounds` rounds after
`warmup` untimed calls each (the programs are compiled ahead of time); the table gives
maps/s (batch / median time), the time range, and each row's time relative to
F-CAM's (median of the per-round ratios).
--torch adds PyTorch eager rows (needs torch): the F-CAM (encoder + decoder under
torch.inference_mode, channels-last) and GradCAM as the usual hook implementations
(pytorch-grad-cam, torchcam) compute it: a forward pass with autograd on, then
`backward()` of the class scores through the whole network.
--xla_options: F-CAM, forward and GradCAM rows compiled with these XLA options as well.
--half_precision: the F-CAM, forward and GradCAM rows in bf16 activations as well.
"""

import functools
import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fcam_jax import config_lib, models, stage1, stage2  # noqa: E402
from fcam_jax.models import decoder as decoder_lib  # noqa: E402
from fcam_jax.models import resnet  # noqa: E402
import bench_util  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 1, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "Input side.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes of the head.")
_METHODS = flags.DEFINE_list(
    "methods", ["cam", "gradcam", "gradcampp", "smoothgradcampp", "xgradcam", "layercam"],
    "CAM methods to time.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed rounds (one call of each row per round).")
_FORWARD = flags.DEFINE_bool("forward", True, "Include the forward-only row(s).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls of each row before the rounds.")
_TORCH = flags.DEFINE_bool("torch", False, "Add PyTorch eager F-CAM and hook-GradCAM rows.")
_HALF = flags.DEFINE_bool("half_precision", False, "Add bf16 F-CAM and GradCAM rows.")
_XLA_OPTIONS = flags.DEFINE_list(
    "xla_options", [], "name=value XLA compiler options: adds F-CAM, forward and GradCAM "
    "rows compiled with them, e.g. xla_cpu_experimental_ynn_fusion_type=")


def jax_rows(batch, half: bool, options=None):
  """{name: (compiled, args, compile s)}: the F-CAM, the forward pass and each CAM method
  (GradCAM only in bf16 or with XLA `options`)."""
  config = config_lib.base_config()
  config.model.num_classes = _NUM_CLASSES.value
  dtype = jnp.bfloat16 if half else jnp.float32
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = decoder_lib.decoder_for(resnet.ResNet50, dtype=dtype)
  x = jnp.zeros((1, _SIZE.value, _SIZE.value, 3))
  clf_vars = bench_util.random_variables(jax.eval_shape(classifier.init, jax.random.key(0), x))
  taps = jax.eval_shape(lambda: classifier.apply(clf_vars, x)[1])
  dtaps = [jnp.zeros(taps[n].shape) for n in resnet.ResNet50.DECODER_TAPS]
  dec_vars = _decoder_variables(decoder, dtaps, x.shape[1:3])
  variables = {"classifier": clf_vars, "decoder": dec_vars}
  key = jax.random.key(0)
  suffix = (" bf16" if half else "") + (f" [{bench_util.options_label(options)}]"
                                        if options else "")
  fns = {f"F-CAM{suffix}": (functools.partial(
      stage2.fcam_maps, classifier=classifier, decoder=decoder, config=config,
      with_cam=False), variables)}
  if _FORWARD.value:
    fns[f"forward only{suffix}"] = (lambda v, b, k: classifier.apply(
        v, models.imagenet_standardize(b["image"], dtype))[0], clf_vars)
  for method in (_METHODS.value if not (half or options) else ["gradcam"]):
    cam_config = config.cam.copy_and_resolve_references()
    cam_config.method = method
    fns[f"{method}{suffix}"] = (functools.partial(
        stage1.classifier_maps, model=classifier, cam_config=cam_config), clf_vars)
  out = {}
  for name, (fn, v) in fns.items():
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(v, batch, key).compile(compiler_options=options)
    out[name] = (compiled, (v, batch, key), time.perf_counter() - start)
  return out


def _decoder_variables(decoder, dtaps, size):
  return bench_util.random_variables(
      jax.eval_shape(lambda t: decoder.init(jax.random.key(1), t, size), dtaps), seed=1)


def torch_rows(images, labels):
  """{name: call} of the PyTorch eager F-CAM and hook-style GradCAM (full backward)."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  import torch_reference as tr  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  clf = tr.Classifier(_NUM_CLASSES.value).eval().to(memory_format=torch.channels_last)
  dec = tr.Decoder().eval().to(memory_format=torch.channels_last)
  raw, y = torch.from_numpy(np.asarray(images)), torch.from_numpy(np.asarray(labels)).long()
  size = tuple(raw.shape[1:3])

  def fcam():
    with torch.inference_mode():
      _, taps = clf(tr.normalize(raw))
      return F.softmax(dec(taps, size), 1)[:, 1]

  def gradcam():  # as pytorch-grad-cam / torchcam: hooks on layer4, backward of the scores
    clf.zero_grad(set_to_none=True)
    logits, taps = clf(tr.normalize(raw))
    a = taps[-1]
    a.retain_grad()
    logits.gather(1, y[:, None]).sum().backward()
    with torch.no_grad():
      cam = F.relu((a.grad.mean((2, 3), keepdim=True) * a).sum(1))
      lo = cam.amin((1, 2), keepdim=True)
      span = cam.amax((1, 2), keepdim=True) - lo
      cam = torch.where(span > 0, (cam - lo) / torch.where(span > 0, span, 1.0), 0.0)
      return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)
  return {"torch F-CAM": fcam, "torch GradCAM (hooks, full backward)": gradcam}


def main(argv):
  del argv
  if _TORCH.value:
    bench_util.require_torch("bench_inference.py --torch")
  b, size = _BATCH.value, _SIZE.value
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)),
           "label": jnp.asarray(rng.integers(0, _NUM_CLASSES.value, b), jnp.int32)}
  options = bench_util.xla_options(_XLA_OPTIONS.value)
  rows = jax_rows(batch, False)
  if options:
    rows.update(jax_rows(batch, False, options))
  if _HALF.value:
    rows.update(jax_rows(batch, True))
  calls = {name: (lambda c=c, a=a: jax.block_until_ready(c(*a)))
           for name, (c, a, _) in rows.items()}
  if _TORCH.value:
    calls.update(torch_rows(batch["image"], batch["label"]))
  print(f"ResNet50-WSOL + decoder, batch {b} x {size}^2, jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}); {bench_util.load()}", flush=True)
  for _ in range(_WARMUP.value):
    for fn in calls.values():
      fn()
  times = bench_util.interleave(calls, _ROUNDS.value)
  ref = times["F-CAM"]
  print(f"\n{_ROUNDS.value} rounds interleaved; {bench_util.load()} at the end")
  print("| maps | maps/s | s/call median (range) | time / F-CAM's (per-round range) | compile s |")
  print("|---|---|---|---|---|")
  for name, ts in times.items():
    m = bench_util.median(ts)
    r = bench_util.ratios(ts, ref)
    compile_s = f"{rows[name][2]:.1f}" if name in rows else "-"
    print(f"| {name} | {b / m:.2f} | {m:.3f} ({bench_util.spread(ts, '{:.3f}')}) | "
          f"{bench_util.median(r):.2f} ({bench_util.spread(r)}) | {compile_s} |")
  for name in times:  # the target: F-CAM at least as fast as GradCAM, same settings
    if name.startswith("F-CAM") and name.replace("F-CAM", "gradcam", 1) in times:
      r = bench_util.ratios(times[name], times[name.replace("F-CAM", "gradcam", 1)])
      print(f"{name} time / GradCAM's: {bench_util.median(r):.2f} per-round median "
            f"({bench_util.spread(r)})")


if __name__ == "__main__":
  app.run(main)
