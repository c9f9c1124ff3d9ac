r"""Stage-2 train step, fcam_jax against a PyTorch eager reference (needs torch, torchvision).

  python benchmarks/bench_stage2_vs_torch.py [--batch=8] [--size=224] [--rounds=5]
      [--torch_variants=2pass,1pass] [--torch_crf=grid] [--components] [--check]
      [--xla_options=xla_cpu_experimental_ynn_fusion_type=] [--crf_table=grid,exact@0.25]
      [--half_precision]

ResNet50-WSOL + U-Net decoder, CAM* seeds, seeds CE + dense CRF + ELB size losses, SGD
(Nesterov, weight decay) on the decoder: `stage2.fcam_train_step` pmapped over the
local devices as training runs it, against `torch_reference.Stage2` (channels-last,
frozen classifier under torch.inference_mode, torch.set_num_threads(cores)). Both get
the same weights (torch's random init, BatchNorm statistics from one batch, copied
into flax), the same uint8 images and labels. `2pass` is the original's step (the
classifier runs once for the CAM, once for the decoder's features); `1pass` reuses the
CAM pass (as fcam_jax does). The steps are called in turn (jax, torch, jax, torch,
...) for `rounds` rounds after one warm-up call each; the table gives each one's median
and range, and its time over each JAX row's: the median and range of the per-round
ratios (one round: the same load for both).

--torch_crf: `grid` (the same bilateral grid as fcam_jax, same loss) or `exact` (the
exact kernel as a dense matrix on images downscaled by --exact_scale).
--components: also times the parts (encoder forward, CAM + seeds, decoder forward +
backward, CRF loss + gradient) of both, interleaved (JAX with --xla_options if given).
--crf_table: also times the CRF loss + gradient alone: JAX's and the listed torch CRFs.
--check: first checks on 2 images that both compute the same step: logits, CAM, seed
regions, and, with the same seeds, every loss term and the decoder's gradient.
--xla_options: an extra JAX row, the same step compiled with these XLA options
(`lowered.compile(compiler_options=...)`, what XLA_FLAGS would set for the process).
--half_precision: the JAX step in bf16 activations (config.half_precision), as an
extra row (with --xla_options if given; on a CPU bf16 convolutions are usually slower
than fp32).
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
from fcam_jax.models import imagenet_standardize as normalize, resnet  # noqa: E402
import bench_util  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 8, "Images per step.")
_SIZE = flags.DEFINE_integer("size", 224, "Input side.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 200, "Classes (CUB).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (one call of each step per round).")
_VARIANTS = flags.DEFINE_list("torch_variants", ["2pass", "1pass"],
                              "Torch steps: 2pass (the original), 1pass.")
_TORCH_CRF = flags.DEFINE_enum("torch_crf", "grid", ["grid", "exact"], "The torch CRF.")
_EXACT_SCALE = flags.DEFINE_float("exact_scale", 0.25, "--torch_crf=exact: image downscale.")
_GRID_CELL = flags.DEFINE_float("grid_cell", 0.5, "CRF grid cell (both), in sigma units.")
_STEPS = flags.DEFINE_bool("steps", True, "Time the whole steps (--nosteps: only the rest).")
_COMPONENTS = flags.DEFINE_bool("components", False, "Also time the parts of both steps.")
_CHECK = flags.DEFINE_bool("check", False, "Check that both compute the same step first.")
_CRF_TABLE = flags.DEFINE_list(
    "crf_table", [], "Also time the CRF loss + gradient alone: JAX's grid and these torch "
    "CRFs, e.g. grid,exact@0.25,exact@0.5 (exact@s: the dense kernel at image scale s).")
_HALF = flags.DEFINE_bool("half_precision", False, "Add a bf16 JAX row.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: os.cpu_count(), as XLA).")
_XLA_OPTIONS = flags.DEFINE_list(
    "xla_options", [], "name=value XLA compiler options for an extra JAX row, e.g. "
    "xla_cpu_experimental_ynn_fusion_type= (XLA:CPU without its YNNPACK fusions).")

TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}


# ------------------------------------------------------------------ torch -> flax weights


def _classifier_key(path):
  if path[0] == "backbone":
    return resnet.torchvision_key(path[1:])
  return "fc." + TORCH_LEAF[path[-1]]  # head/fc/{kernel,bias}


def _decoder_key(path):
  *mods, leaf = path
  mods = [f"blocks.{m[len('block'):]}" if m.startswith("block") else m for m in mods]
  return ".".join(mods + [TORCH_LEAF[leaf]])


def torch_state(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def flax_variables(state, shapes, key_fn):
  """The flax variables of `shapes` (eval_shape of init) from a torch state dict (numpy)."""

  def leaf(path, shape):
    names = tuple(p.key for p in path[1:])  # drop the collection
    value = state[key_fn(names)]
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif value.ndim == 2:
      value = value.T
    assert value.shape == shape.shape, (names, value.shape, shape.shape)
    return jnp.asarray(value, shape.dtype)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


# ------------------------------------------------------------------------------- setup


def make_config(half: bool):
  config = config_lib.base_config()
  config.model.backbone, config.model.num_classes = "resnet50", _NUM_CLASSES.value
  config.fcam.crf.grid_cell = _GRID_CELL.value
  config.half_precision = half
  return config


class Setup:
  """Both frameworks' models with the same weights, and one batch of inputs."""

  def __init__(self):
    import torch  # pylint: disable=g-import-not-at-top
    import torch_reference as tr  # pylint: disable=g-import-not-at-top
    torch.manual_seed(0)
    self.tr = tr
    self.t_classifier, self.t_decoder = tr.Classifier(_NUM_CLASSES.value).eval(), tr.Decoder()
    _calibrate_bn(self.t_classifier, torch)
    b, s = _BATCH.value, _SIZE.value
    rng = np.random.default_rng(0)
    self.images = _photo_like(rng, b, s)
    self.labels = rng.integers(0, _NUM_CLASSES.value, b).astype(np.int32)
    self.config = make_config(False)
    self.classifier = models.build_classifier(self.config.model)
    x0 = jnp.zeros((1, s, s, 3))
    clf_shapes = jax.eval_shape(self.classifier.init, jax.random.key(0), x0)
    self.clf_vars = flax_variables(torch_state(self.t_classifier), clf_shapes, _classifier_key)
    taps = jax.eval_shape(lambda: self.classifier.apply(self.clf_vars, x0)[1])
    self.dtaps0 = [jnp.zeros(taps[n].shape) for n in resnet.ResNet50.DECODER_TAPS]
    dec = decoder_lib.decoder_for(resnet.ResNet50)
    dec_shapes = jax.eval_shape(lambda k, t: dec.init(k, t, (s, s), train=False),
                                jax.random.key(1), self.dtaps0)
    self.dec_vars = flax_variables(torch_state(self.t_decoder), dec_shapes, _decoder_key)

  def torch_crf(self):
    tr, c = self.tr, self.config.fcam.crf
    if _TORCH_CRF.value == "grid":
      return tr.GridCRF(_SIZE.value, _SIZE.value, c.sigma_xy, c.sigma_rgb, c.grid_cell)
    return tr.ExactCRF(c.sigma_xy, c.sigma_rgb, _EXACT_SCALE.value)

  def torch_step(self, passes: int):
    import copy  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    s = self.config.fcam.seeds
    st = self.tr.Stage2(self.t_classifier, copy.deepcopy(self.t_decoder), self.torch_crf(),
                        encoder_passes=passes, seeds_config=dict(
                            n_minus=s.n_minus, sl_max=s.sl_max, sl_min=s.sl_min,
                            erosion=s.erosion, dilation=s.dilation))
    raw, labels = torch.from_numpy(self.images), torch.from_numpy(self.labels).long()
    return lambda: st.step(raw, labels)

  def jax_step(self, half: bool, options=None):
    """A call of the pmapped train step (the batch sharded each call, as training does),
    compiled with XLA compiler `options`."""
    config = make_config(half)
    dtype = jnp.bfloat16 if half else jnp.float32
    classifier = models.build_classifier(config.model, dtype=dtype)
    decoder = decoder_lib.decoder_for(resnet.ResNet50, bn_axis_name=parallel.AXIS, dtype=dtype)
    tx = optim.sgd(config.stage2, 100)
    state = steps.TrainState(
        step=jnp.array(0, jnp.int32), params=self.dec_vars["params"],
        batch_stats=self.dec_vars["batch_stats"], opt_state=tx.init(self.dec_vars["params"]),
        rng=jax.random.key_data(jax.random.key(2)), aux={"elb_t": jnp.array(1.0)})
    par = parallel.DataParallel("pmap")
    fn = par.step(functools.partial(stage2.fcam_train_step, classifier=classifier,
                                    decoder=decoder, tx=tx, config=config, dtype=dtype),
                  specs=(False, True, False))
    clf_r = par.replicate(self.clf_vars)
    holder = [par.replicate(state)]
    batch = {"image": self.images, "label": self.labels,
             "index": np.arange(len(self.labels), dtype=np.int32)}

    start = time.perf_counter()
    compiled = fn.lower(holder[0], par.shard(batch), clf_r).compile(compiler_options=options)

    def call():
      holder[0], metrics = compiled(holder[0], par.shard(batch), clf_r)
      jax.block_until_ready((holder[0], metrics))
    call()
    return call, time.perf_counter() - start


def _calibrate_bn(model, torch):
  """BatchNorm running stats from one train-mode batch, so activations stay O(1)
  (default stats 0/1 with random weights blow up through 16 residual blocks)."""
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(torch.randn(2, 3, 64, 64))
  for m in bns:
    m.momentum = 0.1
  model.eval()


def _photo_like(rng, b, s):
  """Smooth colour blobs + noise: uint8 (b, s, s, 3)."""
  small = rng.integers(0, 256, (b, 8, 8, 3)).astype(np.float32)
  up = jax.image.resize(small, (b, s, s, 3), "bilinear")
  return np.clip(np.asarray(up) + rng.normal(0, 8, (b, s, s, 3)), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------- check


def check(setup: Setup):
  """Both implementations compute the same step: prints the differences."""
  import torch  # pylint: disable=g-import-not-at-top
  tr = setup.tr
  n, s = 2, _SIZE.value
  raw, labels = setup.images[:n], setup.labels[:n]
  config = setup.config
  classifier, decoder = setup.classifier, decoder_lib.decoder_for(resnet.ResNet50)
  x = normalize(jnp.asarray(raw))
  logits, taps = classifier.apply(setup.clf_vars, x)
  cam = cams.upsampled_maps(classifier, setup.clf_vars, taps, x, jnp.asarray(labels), None,
                       config.cam)
  sd = config.fcam.seeds
  fg, bg = losses.seed_regions(cam, n_minus=sd.n_minus, erosion=sd.erosion)
  seeds = losses.sample_seeds(cam, jax.random.key(3), n_minus=sd.n_minus, sl_max=sd.sl_max,
                              sl_min=sd.sl_min, erosion=sd.erosion, dilation=sd.dilation)
  dtaps = [taps[k] for k in resnet.ResNet50.DECODER_TAPS]

  def loss_fn(params):
    out, _ = decoder.apply({"params": params, "batch_stats": setup.dec_vars["batch_stats"]},
                           dtaps, (s, s), train=True, mutable=["batch_stats"])
    return losses.total_loss(out, seeds, jnp.asarray(raw, jnp.float32), 1.0, config.fcam)
  (j_loss, j_terms), j_grads = jax.value_and_grad(loss_fn, has_aux=True)(setup.dec_vars["params"])

  st = tr.Stage2(setup.t_classifier, setup.t_decoder, setup.torch_crf(), encoder_passes=1)
  t_raw, t_labels = torch.from_numpy(raw), torch.from_numpy(labels).long()
  with torch.inference_mode():
    t_logits, t_taps = setup.t_classifier(tr.normalize(t_raw))
    t_cam = tr.cam_star(setup.t_classifier, t_taps[-1], t_labels, (s, s))
    t_fg, t_bg = tr.seed_regions(t_cam, sd.n_minus, sd.erosion)
  t_loss, t_terms = st.losses(t_raw, t_labels, seeds=torch.from_numpy(np.array(seeds)).long())
  st.opt.zero_grad()
  t_loss.backward()
  t_grads = flax_variables({k: p.grad.numpy() for k, p in st.decoder.named_parameters()},
                           jax.eval_shape(lambda: {"params": j_grads}), _decoder_key)["params"]

  def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
  flat_j = np.concatenate([np.ravel(g) for g in jax.tree.leaves(j_grads)])
  flat_t = np.concatenate([np.ravel(g) for g in jax.tree.leaves(t_grads)])
  print(f"check on {n} images (max |jax - torch| / max |torch|):")
  print(f"  logits {rel(logits, t_logits.numpy()):.1e}   CAM (max abs) "
        f"{float(np.max(np.abs(np.asarray(cam) - t_cam.numpy()))):.1e}   seed regions differ "
        f"at {int(np.sum(np.asarray(fg) != t_fg.numpy()))} fg / "
        f"{int(np.sum(np.asarray(bg) != t_bg.numpy()))} bg pixels of {n * s * s}")
  print("  loss terms with the same seeds: " + "  ".join(
      f"{k} {float(j_terms[k]):.5g} vs {float(t_terms[k].detach()):.5g}"
      for k in ("seeds", "crf", "size")))
  print(f"  total loss {float(j_loss):.6g} vs {float(t_loss.detach()):.6g}; decoder gradient "
        f"rel. error {rel(flat_j, flat_t):.1e}, cosine "
        f"{flat_j @ flat_t / np.linalg.norm(flat_j) / np.linalg.norm(flat_t):.6f}", flush=True)


# ---------------------------------------------------------------------------- components


def crf_table(setup: Setup, options=None):
  """The CRF loss + gradient alone, batch --batch: JAX's grid (default XLA options and
  `options`) and the torch CRFs of --crf_table, interleaved."""
  import torch  # pylint: disable=g-import-not-at-top
  tr, c, b, s = setup.tr, setup.config.fcam.crf, _BATCH.value, _SIZE.value
  rng = np.random.default_rng(0)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, s, s, 2)), jnp.float32))
  images = jnp.asarray(setup.images, jnp.float32)
  lowered = jax.jit(jax.value_and_grad(lambda p, im: losses.dense_crf_loss(
      p, im, sigma_rgb=c.sigma_rgb, sigma_xy=c.sigma_xy, grid_cell=c.grid_cell))).lower(
          probs, images)
  fns = {}
  for label, opts in [("default", None)] + ([("options", options)] if options else []):
    compiled = lowered.compile(compiler_options=opts)
    name = f"jax grid@{c.grid_cell:g}" + (f" ({bench_util.options_label(opts)})" if opts else "")
    fns[name] = lambda compiled=compiled: jax.block_until_ready(compiled(probs, images))
  t_probs = torch.from_numpy(np.asarray(probs)).requires_grad_(True)
  t_raw = torch.from_numpy(setup.images)
  for spec in _CRF_TABLE.value:
    kind, _, scale = spec.partition("@")
    if kind == "grid":
      crf = tr.GridCRF(s, s, c.sigma_xy, c.sigma_rgb, float(scale or c.grid_cell))
    elif kind == "exact":
      crf = tr.ExactCRF(c.sigma_xy, c.sigma_rgb, float(scale or _EXACT_SCALE.value))
    else:
      raise app.UsageError(f"--crf_table: {spec!r} is not grid[@cell] or exact[@scale]")

    def call(crf=crf):
      t_probs.grad = None
      crf(t_probs, t_raw).backward()
    fns[f"torch {spec}"] = call
  for fn in fns.values():
    fn()
  rounds = max(2, _ROUNDS.value // 2)
  times = bench_util.interleave(fns, rounds)
  print(f"\nCRF loss + gradient, batch {b} x {s}^2 x 2, {rounds} rounds; {bench_util.load()}")
  print("| CRF | s/call median (range) |\n|---|---|")
  for name, ts in times.items():
    print(f"| {name} | {bench_util.median(ts):.3f} ({bench_util.spread(ts, '{:.3f}')}) |")


def components(setup: Setup, options=None):
  """Encoder forward, CAM + seeds, decoder forward + backward, CRF: both, interleaved
  (the JAX parts compiled with XLA `options`)."""
  import torch  # pylint: disable=g-import-not-at-top
  tr, config, s = setup.tr, setup.config, _SIZE.value
  classifier, decoder = setup.classifier, decoder_lib.decoder_for(resnet.ResNet50)
  sd, c = config.fcam.seeds, config.fcam.crf
  raw, labels = jnp.asarray(setup.images), jnp.asarray(setup.labels)
  x = normalize(raw)

  def timed(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
    return lambda: jax.block_until_ready(compiled(*args))

  def seeds_fn(v, taps, x, labels):
    cam = cams.upsampled_maps(classifier, v, taps, x, labels, None, config.cam)
    return losses.sample_seeds(cam, jax.random.key(0), n_minus=sd.n_minus, sl_max=sd.sl_max,
                               sl_min=sd.sl_min, erosion=sd.erosion, dilation=sd.dilation)

  def decoder_fn(p, t):
    return jnp.sum(decoder.apply({"params": p, "batch_stats": setup.dec_vars["batch_stats"]},
                                 t, (s, s), train=True, mutable=["batch_stats"])[0])
  encoder_fn = lambda v, x: classifier.apply(v, x)[1]  # noqa: E731
  taps = jax.jit(encoder_fn)(setup.clf_vars, x)
  dtaps = [taps[k] for k in resnet.ResNet50.DECODER_TAPS]
  probs = jax.nn.softmax(jnp.asarray(np.random.default_rng(0).normal(
      size=raw.shape[:3] + (2,)), jnp.float32))
  crf_fn = jax.value_and_grad(lambda p, im: losses.dense_crf_loss(
      p, im, sigma_rgb=c.sigma_rgb, sigma_xy=c.sigma_xy, grid_cell=c.grid_cell))
  j = {"encoder forward": timed(encoder_fn, setup.clf_vars, x),
       "CAM + seeds": timed(seeds_fn, setup.clf_vars, taps, x, labels),
       "decoder fwd + bwd": timed(jax.grad(decoder_fn), setup.dec_vars["params"], dtaps),
       "CRF loss + grad": timed(crf_fn, probs, raw.astype(jnp.float32))}

  t_raw, t_labels = torch.from_numpy(setup.images), torch.from_numpy(setup.labels).long()
  t_clf = setup.t_classifier.to(memory_format=torch.channels_last)
  t_dec = setup.t_decoder.train().to(memory_format=torch.channels_last)
  t_x = tr.normalize(t_raw)
  with torch.inference_mode():
    _, t_taps = t_clf(t_x)
  t_taps_c = [u.clone() for u in t_taps]
  gen = torch.Generator().manual_seed(0)
  t_crf = setup.torch_crf()
  t_probs = torch.from_numpy(np.asarray(probs)).requires_grad_(True)

  def t_enc():
    with torch.inference_mode():
      t_clf(t_x)

  def t_seeds():
    with torch.inference_mode():
      tr.sample_seeds(tr.cam_star(t_clf, t_taps[-1], t_labels, (s, s)), gen, sd.n_minus,
                      sd.sl_max, sd.sl_min, sd.erosion, sd.dilation)

  def t_decode():
    t_dec.zero_grad(set_to_none=True)
    t_dec(t_taps_c, (s, s)).sum().backward()

  def t_crf_call():
    t_probs.grad = None
    t_crf(t_probs, t_raw).backward()
  t = {"encoder forward": t_enc, "CAM + seeds": t_seeds, "decoder fwd + bwd": t_decode,
       "CRF loss + grad": t_crf_call}
  for f in list(j.values()) + list(t.values()):
    f()  # compile / warm up
  rounds = max(2, _ROUNDS.value // 2)
  print(f"\ncomponents, batch {_BATCH.value}, {rounds} rounds interleaved; {bench_util.load()}")
  print(f"| part | jax s (range) | torch s (range) | torch / jax |\n|---|---|---|---|")
  for name in j:
    times = bench_util.interleave({"jax": j[name], "torch": t[name]}, rounds)
    mj, mt = bench_util.median(times["jax"]), bench_util.median(times["torch"])
    print(f"| {name} | {mj:.3f} ({bench_util.spread(times['jax'], '{:.3f}')}) | {mt:.3f} "
          f"({bench_util.spread(times['torch'], '{:.3f}')}) | {mt / mj:.2f} |", flush=True)


def steps_table(setup: Setup, options):
  """The whole steps, interleaved: the table."""
  fns = {}
  jax_call, compile_s = setup.jax_step(False)
  print(f"jax: compile + first step {compile_s:.1f} s", flush=True)
  fns["jax"] = jax_call
  if options:
    name = f"jax ({bench_util.options_label(options)})"
    fns[name], compile_s = setup.jax_step(False, options)
    print(f"{name}: compile + first step {compile_s:.1f} s", flush=True)
  if _HALF.value:
    half_call, compile_s = setup.jax_step(True, options or None)
    print(f"jax bf16: compile + first step {compile_s:.1f} s", flush=True)
    fns["jax bf16"] = half_call
  for v in _VARIANTS.value:
    if v not in ("1pass", "2pass"):
      raise app.UsageError(f"--torch_variants: {v!r} is not 1pass or 2pass")
    fns[f"torch {v}"] = setup.torch_step(int(v[0]))
  for name, fn in fns.items():
    if name.startswith("torch"):
      start = time.perf_counter()
      fn()
      print(f"{name}: first step {time.perf_counter() - start:.1f} s", flush=True)
  times = bench_util.interleave(fns, _ROUNDS.value)
  b = _BATCH.value
  jax_rows = [n for n in times if n.startswith("jax")]
  print(f"\n{_ROUNDS.value} rounds interleaved; {bench_util.load()} at the end")
  print("| step | s/step median (range) | images/s | "
        + " | ".join(f"time / {n}'s: per-round median (range)" for n in jax_rows) + " |")
  print("|---|---|---|" + "---|" * len(jax_rows))
  for name, ts in times.items():
    m = bench_util.median(ts)
    cells = []
    for ref in jax_rows:
      r = bench_util.ratios(ts, times[ref])
      cells.append(f"{bench_util.median(r):.2f}x ({bench_util.spread(r)})")
    print(f"| {name} | {m:.2f} ({bench_util.spread(ts)}) | {b / m:.2f} | " + " | ".join(cells)
          + " |", flush=True)
  for name, ts in times.items():
    print(f"{name}: s per round {', '.join(f'{t:.2f}' for t in ts)}")



# -------------------------------------------------------------------------------- main


def main(argv):
  del argv
  bench_util.require_torch("bench_stage2_vs_torch.py")
  import torch  # pylint: disable=g-import-not-at-top
  threads = _THREADS.value or os.cpu_count()
  torch.set_num_threads(threads)
  setup = Setup()
  print(f"ResNet50-WSOL + decoder, batch {_BATCH.value} x {_SIZE.value}^2, {_NUM_CLASSES.value} "
        f"classes, CRF grid_cell {_GRID_CELL.value}, torch CRF {_TORCH_CRF.value}; jax "
        f"{jax.__version__} ({jax.devices()[0].device_kind}, {jax.local_device_count()} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {bench_util.load()}")
  if _CHECK.value:
    check(setup)
  options = bench_util.xla_options(_XLA_OPTIONS.value)
  if _STEPS.value:
    steps_table(setup, options)
  if _COMPONENTS.value:
    components(setup, options or None)
  if _CRF_TABLE.value:
    crf_table(setup, options or None)


if __name__ == "__main__":
  app.run(main)
