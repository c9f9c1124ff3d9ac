r"""How near the machine's limit: XLA's FLOPs / time, as a fraction of a measured matmul peak.

  python benchmarks/bench_roofline.py [--workloads=inference,stage2] [--inference_batch=32]
      [--step_batch=8] [--rounds=2] [--peak_n=2048] [--profile] [--half_precision]
      [--xla_options=xla_cpu_experimental_ynn_fusion_type=]

Workloads (ResNet50-WSOL 224x224, random weights):

* `inference`: the F-CAM maps (`stage2.fcam_maps(with_cam=False)`: encoder +
  decoder), jitted, batch --inference_batch;
* `stage2`: one stage-2 train step (`stage2.fcam_train_step` under the `jit`
  parallel backend, which XLA's cost analysis can read), batch --step_batch;
* the parts of the stage-2 step, batch --step_batch: `encoder` (forward, all taps),
  `seeds` (CAM + seeds from the taps), `decoder` (forward + backward of the sum of its
  logits), `crf` (loss + gradient).

FLOPs: `jax.jit(f).lower(...).compile().cost_analysis()['flops']` (XLA counts a
multiply-add as 2 and skips padding). Peak: a `jnp.dot` of two --peak_n square
matrices (fp32; bf16 with --half_precision), the best of 2 calls, timed in the same
rounds (peak, workload, peak, workload, ...), so both see the same load; the fraction
is computed per round and its median reported. --xla_options: each workload also
compiled with these XLA options, its calls interleaved with the default's.
--profile: one more call of each workload under `jax.profiler`, its op times grouped
by kind (convolution, matmul, gather/scatter, ...) and by model part (encoder, decoder,
CRF, seeds, ...), with each group's FLOPs (convolutions and matmuls, from the HLO
shapes) as a fraction of the peak (benchmarks/hlo_profile.py). It needs ops that run
inside their trace events: XLA:CPU's YNNPACK fusions (the default) do; its Eigen
convolutions (with xla_cpu_experimental_ynn_fusion_type=) run asynchronously and are
missed, so there time the parts as workloads instead.
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

from fcam_jax import cams, config_lib, losses, models, optim, parallel, stage2, steps  # noqa: E402
from fcam_jax.models import decoder as decoder_lib  # noqa: E402
from fcam_jax.models import resnet  # noqa: E402
import bench_util  # noqa: E402
import hlo_profile  # noqa: E402

_WORKLOADS = flags.DEFINE_list("workloads", ["inference", "stage2"],
                               "inference, stage2, encoder, seeds, decoder, crf.")
_INFERENCE_BATCH = flags.DEFINE_integer("inference_batch", 32, "Images per inference call.")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 8, "Images per train step.")
_SIZE = flags.DEFINE_integer("size", 224, "Input side.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed rounds.")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Side of the square matrices of the peak dot.")
_PROFILE = flags.DEFINE_bool("profile", False, "Profile one call of each workload.")
_HALF = flags.DEFINE_bool("half_precision", False, "bf16 activations (config.half_precision).")
_XLA_OPTIONS = flags.DEFINE_list(
    "xla_options", [], "name=value XLA compiler options: each workload also compiled with "
    "them (the peak dot too: the faster dot counts).")


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


class Workload:
  """A compiled program, a `call()` that runs it to completion, its XLA FLOPs."""

  def __init__(self, name, compiled, call, batch):
    self.name, self.compiled, self.call, self.batch = name, compiled, call, batch
    self.flops = _flops(compiled)


def _models(dtype, bn_axis_name=None):
  config = config_lib.base_config()
  config.half_precision = dtype == jnp.bfloat16
  classifier = models.build_classifier(config.model, dtype=dtype)
  decoder = decoder_lib.decoder_for(resnet.ResNet50, bn_axis_name=bn_axis_name, dtype=dtype)
  x = jnp.zeros((1, _SIZE.value, _SIZE.value, 3))
  clf_vars = bench_util.random_variables(jax.eval_shape(classifier.init, jax.random.key(0), x))
  taps = jax.eval_shape(lambda: classifier.apply(clf_vars, x)[1])
  dtaps = [jnp.zeros(taps[n].shape) for n in resnet.ResNet50.DECODER_TAPS]
  plain = decoder_lib.decoder_for(resnet.ResNet50)
  dec_vars = bench_util.random_variables(jax.eval_shape(
      lambda t: plain.init(jax.random.key(1), t, x.shape[1:3]), dtaps), seed=1)
  return config, classifier, decoder, clf_vars, dec_vars


def _batch(b):
  rng = np.random.default_rng(0)
  s = _SIZE.value
  return {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "label": rng.integers(0, 200, b).astype(np.int32),
          "index": np.arange(b, dtype=np.int32)}


def inference(dtype, options) -> Workload:
  config, classifier, decoder, clf_vars, dec_vars = _models(dtype)
  fn = functools.partial(stage2.fcam_maps, classifier=classifier, decoder=decoder,
                         config=config, with_cam=False)
  b = _INFERENCE_BATCH.value
  batch = {k: jnp.asarray(v) for k, v in _batch(b).items()}
  args = ({"classifier": clf_vars, "decoder": dec_vars}, batch, jax.random.key(0))
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  return Workload(f"inference (F-CAM maps), batch {b}", compiled,
                  lambda: jax.block_until_ready(compiled(*args)), b)


def stage2(dtype, options) -> Workload:
  config, classifier, decoder, clf_vars, dec_vars = _models(dtype, parallel.AXIS)
  tx = optim.sgd(config.stage2, 100)
  state = steps.TrainState(
      step=jnp.array(0, jnp.int32), params=dec_vars["params"],
      batch_stats=dec_vars["batch_stats"], opt_state=tx.init(dec_vars["params"]),
      rng=jax.random.key_data(jax.random.key(2)), aux={"elb_t": jnp.array(1.0)})
  par = parallel.DataParallel("jit")
  fn = par.step(functools.partial(stage2.fcam_train_step, classifier=classifier,
                                  decoder=decoder, tx=tx, config=config, dtype=dtype),
                specs=(False, True, False))
  b = _STEP_BATCH.value
  batch, clf_r = par.shard(_batch(b)), par.replicate(clf_vars)
  holder = [par.replicate(state)]
  compiled = fn.lower(holder[0], batch, clf_r).compile(compiler_options=options)

  def call():
    holder[0], metrics = compiled(holder[0], batch, clf_r)
    jax.block_until_ready((holder[0], metrics))
  return Workload(f"stage-2 train step, batch {b}", compiled, call, b)


def decoder_only(dtype, options) -> Workload:
  _, classifier, decoder, clf_vars, dec_vars = _models(dtype)
  b, s = _STEP_BATCH.value, _SIZE.value
  x = jnp.zeros((b, s, s, 3), dtype)
  taps = jax.jit(lambda v, x: classifier.apply(v, x)[1])(clf_vars, x)
  dtaps = [taps[n] for n in resnet.ResNet50.DECODER_TAPS]

  def loss(params, dtaps):
    out, _ = decoder.apply({"params": params, "batch_stats": dec_vars["batch_stats"]}, dtaps,
                           (s, s), train=True, mutable=["batch_stats"])
    return jnp.sum(out)
  compiled = jax.jit(jax.grad(loss)).lower(dec_vars["params"], dtaps).compile(
      compiler_options=options)
  return Workload(f"decoder forward + backward, batch {b}", compiled,
                  lambda: jax.block_until_ready(compiled(dec_vars["params"], dtaps)), b)


def encoder_only(dtype, options) -> Workload:
  _, classifier, _, clf_vars, _ = _models(dtype)
  b = _STEP_BATCH.value
  x = models.imagenet_standardize(jnp.asarray(_batch(b)["image"]), dtype)
  fn = lambda v, x: classifier.apply(v, x)[1]  # noqa: E731  (all taps: the decoder needs them)
  compiled = jax.jit(fn).lower(clf_vars, x).compile(compiler_options=options)
  return Workload(f"encoder forward (all taps), batch {b}", compiled,
                  lambda: jax.block_until_ready(compiled(clf_vars, x)), b)


def seeds_only(dtype, options) -> Workload:
  config, classifier, _, clf_vars, _ = _models(dtype)
  b, sd = _STEP_BATCH.value, config.fcam.seeds
  x = models.imagenet_standardize(jnp.asarray(_batch(b)["image"]), dtype)
  taps = jax.jit(lambda v, x: classifier.apply(v, x)[1])(clf_vars, x)
  labels = jnp.asarray(_batch(b)["label"])

  def fn(v, taps, x, labels):
    cam = cams.upsampled_maps(classifier, v, taps, x, labels, None, config.cam)
    return losses.sample_seeds(cam, jax.random.key(0), n_minus=sd.n_minus, sl_max=sd.sl_max,
                               sl_min=sd.sl_min, erosion=sd.erosion, dilation=sd.dilation)
  args = (clf_vars, taps, x, labels)
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  return Workload(f"CAM + seeds from the taps, batch {b}", compiled,
                  lambda: jax.block_until_ready(compiled(*args)), b)


def crf_only(dtype, options) -> Workload:
  del dtype
  c = config_lib.base_config().fcam.crf
  b, s = _STEP_BATCH.value, _SIZE.value
  rng = np.random.default_rng(0)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, s, s, 2)), jnp.float32))
  images = jnp.asarray(_batch(b)["image"], jnp.float32)
  fn = jax.value_and_grad(lambda p, im: losses.dense_crf_loss(
      p, im, sigma_rgb=c.sigma_rgb, sigma_xy=c.sigma_xy, grid_cell=c.grid_cell))
  compiled = jax.jit(fn).lower(probs, images).compile(compiler_options=options)
  return Workload(f"CRF loss + gradient, batch {b}", compiled,
                  lambda: jax.block_until_ready(compiled(probs, images)), b)


WORKLOADS = {"inference": inference, "stage2": stage2, "encoder": encoder_only,
             "seeds": seeds_only, "decoder": decoder_only, "crf": crf_only}


def main(argv):
  del argv
  dtype = jnp.bfloat16 if _HALF.value else jnp.float32
  options = bench_util.xla_options(_XLA_OPTIONS.value) or None
  n = _PEAK_N.value
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)  # the activations' dtype
  lowered = jax.jit(lambda a, b: a @ b).lower(a, a)
  dots = [lowered.compile()] + ([lowered.compile(compiler_options=options)] if options else [])
  peak_rates = []

  def peak():  # the best of 2 calls of each dot program: GFLOP/s
    best = 0.0
    for dot in dots:
      for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, a))
        best = max(best, 2.0 * n ** 3 / (time.perf_counter() - start))
    peak_rates.append(best)
  print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), "
        f"{'bf16' if _HALF.value else 'fp32'} activations, XLA options {options}; "
        f"{bench_util.load()}", flush=True)
  for name in _WORKLOADS.value:
    if name not in WORKLOADS:
      raise app.UsageError(f"--workloads: unknown {name!r}; choose from {', '.join(WORKLOADS)}")
    variants = {"default": None}
    if options:
      variants[bench_util.options_label(options)] = options
    works, compile_s = {}, {}
    for label, opts in variants.items():
      start = time.perf_counter()
      works[label] = WORKLOADS[name](dtype, opts)
      compile_s[label] = time.perf_counter() - start
      works[label].call()  # warm-up
    peak()
    peak_rates.clear()
    times = bench_util.interleave({"peak": peak, **{k: w.call for k, w in works.items()}},
                                  _ROUNDS.value)
    peaks = list(peak_rates)
    first = next(iter(works.values()))
    print(f"\n{first.name}, {_ROUNDS.value} rounds; {bench_util.load()}")
    print("| workload | XLA options | XLA GFLOP/call | s/call median (range) | GFLOP/s | matmul "
          "peak GFLOP/s (range) | fraction of peak (range) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, w in works.items():
      fractions = bench_util.ratios([w.flops / t for t in times[label]], peaks)
      m = bench_util.median(times[label])
      print(f"| {w.name} | {label} | {w.flops / 1e9:.0f} | {m:.2f} "
            f"({bench_util.spread(times[label])}) | {w.flops / m / 1e9:.1f} | "
            f"{bench_util.median(peaks) / 1e9:.1f} "
            f"({bench_util.spread([p / 1e9 for p in peaks], '{:.1f}')}) | "
            f"{100 * bench_util.median(fractions):.0f}% "
            f"({bench_util.spread([100 * f for f in fractions], '{:.0f}')}%) | "
            f"{compile_s[label]:.1f} |", flush=True)
    if _PROFILE.value:  # the default programs only: see the docstring
      rows, total, wall = hlo_profile.profile(first.compiled, first.call)
      print(f"\nprofile of one call (default XLA options): {wall:.2f} s wall, op times summed "
            f"over threads {total:.2f} s; {bench_util.load()}")
      print(hlo_profile.table(rows, total, bench_util.median(peaks), wall), flush=True)


if __name__ == "__main__":
  app.run(main)
