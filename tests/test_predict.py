"""fcam_jax.predict on a tiny trained workdir: files in, maps, boxes and predictions.json out."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from fcam_jax import api
from fcam_jax import cams
from fcam_jax import checkpoint
from fcam_jax import config_lib
from fcam_jax import metrics
from fcam_jax import models
from fcam_jax import predict
from fcam_jax import stage2
from fcam_jax.data import images
from fcam_jax.models import decoder as decoder_lib
from tests.conftest import REPO, tiny_config

GOOD = {  # relative path -> (PIL mode, width, height)
    "a/x.jpg": ("RGB", 60, 45),
    "b/x.jpg": ("RGB", 45, 60),
    "b/color.png": ("RGB", 50, 50),
    "gray.png": ("L", 70, 40),
    "rgba.png": ("RGBA", 41, 39),
    "large.jpg": ("RGB", 3000, 2000),
}
BAD = {"corrupt.jpg": "unreadable", "empty.png": "zero-byte", "notes.txt": "unreadable"}


@pytest.fixture(scope="module")
def trained(trained_workdir):
  return trained_workdir


def _image(mode, width, height, seed):
  """A smooth blob on noise, so maps and boxes are not trivial."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:height, :width] / max(width, height)
  blob = np.exp(-((xx - 0.4) ** 2 + (yy - 0.5) ** 2) / 0.05)
  rgb = (rng.random((height, width, 3)) * 60 + blob[..., None] * [190, 120, 40]).astype(np.uint8)
  img = Image.fromarray(rgb)
  return img.convert(mode) if mode != "RGB" else img


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  for i, (rel, (mode, w, h)) in enumerate(GOOD.items()):
    os.makedirs(os.path.dirname(root / rel), exist_ok=True)
    _image(mode, w, h, i).save(root / rel)
  (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
  (root / "empty.png").write_bytes(b"")
  (root / "notes.txt").write_text("not an image\n")
  return str(root)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "fcam_jax.predict", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_run(trained, inputs, tmp_path_factory):
  workdir, _ = trained
  out = str(tmp_path_factory.mktemp("predict_out"))
  proc = _cli(f"--workdir={workdir}", f"--input={inputs}", f"--output={out}", "--with_cam",
              "--batch_size=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "predictions.json")) as f:
    return out, json.load(f), proc.stderr


def _stage_results(workdir, stage):
  with open(os.path.join(workdir, stage, "results.json")) as f:
    return json.load(f)


def _restore(directory, step):
  ckpt = checkpoint.Checkpointer(directory, read_only=True)
  state = ckpt.restore_raw(step)
  ckpt.close()
  return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _reference_maps(config, clf_vars, dec_vars, images):
  """(logits, cam, fcam) through stage2.fcam_maps, the cam of the top-1 class."""
  classifier = models.build_classifier(config.model)
  decoder = decoder_lib.decoder_for(models.backbone_class(config.model.backbone),
                                    config_lib.decoder_channels(config))
  variables = {"classifier": clf_vars, "decoder": dec_vars}
  batch = {"image": jnp.asarray(images), "label": jnp.zeros(len(images), jnp.int32)}
  kw = dict(classifier=classifier, decoder=decoder, config=config)
  logits = stage2.fcam_maps(variables, batch, None, with_cam=False, **kw)["logits"]
  batch["label"] = jnp.argmax(logits, -1)
  out = stage2.fcam_maps(variables, batch, jax.random.key(0), with_cam=True, **kw)
  return tuple(np.asarray(out[k]) for k in ("logits", "cam", "fcam"))


def _resized(path, size):
  return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))


def test_cli_writes_every_good_image_and_reports_the_bad_ones(cli_run, inputs, trained):
  out, summary, _ = cli_run
  workdir, _ = trained
  s2 = _stage_results(workdir, "stage2")
  assert summary["map"] == "fcam"
  assert summary["checkpoint"]["stage"] == "stage2"
  assert summary["checkpoint"]["step"] == s2["best_step"]
  assert summary["checkpoint"]["classifier_step"] == _stage_results(workdir, "stage1")["best_step"]
  assert summary["threshold"] == pytest.approx(s2["val_at_best"]["best_tau_MaxBoxAcc"])
  assert summary["num_files"] == len(GOOD) + len(BAD)
  by_input = {os.path.relpath(r["input"], inputs): r for r in summary["images"]}
  assert sorted(by_input) == sorted(GOOD)
  errors = {os.path.relpath(e["input"], inputs): e["reason"] for e in summary["errors"]}
  assert sorted(errors) == sorted(BAD)
  for name, word in BAD.items():
    assert word in errors[name]
  outputs = set()
  for rel, (_, w, h) in GOOD.items():
    r = by_input[rel]
    assert r["size"] == [w, h]
    assert 0 <= r["class"] < 5 and 0.2 <= r["probability"] <= 1.0
    assert r["threshold"] == summary["threshold"]
    outputs |= set(r["outputs"].values())
    for name in ("fcam", "cam"):
      m = np.load(os.path.join(out, r["outputs"][name]))
      assert m.shape == (h, w) and m.dtype == np.float32
      assert m.min() >= 0.0 and m.max() <= 1.0
    assert r["outputs"]["fcam"] == rel + ".npy"  # mirrors the input tree
    overlay = np.asarray(Image.open(os.path.join(out, r["outputs"]["overlay"])))
    assert overlay.shape == (h, w, 3)
    # The box is the evaluator's largest-contour box of this map at this threshold.
    fcam = np.load(os.path.join(out, r["outputs"]["fcam"]))
    for x0, y0, x1, y1 in r["boxes"]:
      assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
      iou, _ = metrics.threshold_ious(metrics.quantize(fcam), np.array([[x0, y0, x1, y1]]),
                                      np.array([r["threshold"]]))
      assert iou[0] == 1.0
    if not r["boxes"]:  # only a map with nothing above the threshold has no box
      q = metrics.quantize(fcam)
      assert not (q > int(r["threshold"] * q.max())).any()
  assert len(outputs) == 3 * len(GOOD)  # a/x.jpg and b/x.jpg do not collide


def test_written_maps_equal_the_model_run_directly(cli_run, inputs, trained):
  out, summary, _ = cli_run
  workdir, config = trained
  s1, s2 = _stage_results(workdir, "stage1"), _stage_results(workdir, "stage2")
  clf_vars = _restore(os.path.join(workdir, "stage1", "checkpoints"), s1["best_step"])
  dec_vars = _restore(os.path.join(workdir, "stage2", "checkpoints"), s2["best_step"])
  size = config.data.eval_size
  records = summary["images"]
  images = np.stack([_resized(r["input"], size) for r in records])
  logits, cam, fcam = _reference_maps(config, clf_vars, dec_vars, images)
  probs = np.asarray(jax.nn.softmax(logits))
  for i, r in enumerate(records):
    w, h = r["size"]
    assert r["class"] == int(np.argmax(logits[i]))
    assert r["probability"] == pytest.approx(probs[i].max(), abs=1e-5)
    for name, ref in (("fcam", fcam[i]), ("cam", cam[i])):
      expected = np.asarray(cams.upsample(jnp.asarray(ref)[None], (h, w)))[0]
      np.testing.assert_allclose(np.load(os.path.join(out, r["outputs"][name])), expected,
                                 atol=2e-5, err_msg=f"{name} of {r['input']}")


def _add_last_checkpoint(workdir):
  """A copy of `workdir` whose stage 2 has one more step, worse on val, with other weights."""
  directory = os.path.join(workdir, "stage2", "checkpoints")
  ckpt = checkpoint.Checkpointer(directory)
  best, latest = ckpt.best_step(), ckpt.latest_step()
  state = ckpt.restore_raw(latest)
  state["params"] = jax.tree.map(lambda p: np.asarray(p) * 0.5, state["params"])
  step = latest + 1
  ckpt.save(step, state, {"history": [{"step": step, "best_tau_MaxBoxAcc": 0.25}]}, score=-1e9)
  assert ckpt.best_step() == best and ckpt.latest_step() == step
  ckpt.close()
  return best, step, {"params": state["params"], "batch_stats": state["batch_stats"]}


def test_checkpoint_last_and_best_pick_their_steps(trained, inputs, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained[0], workdir)
  config = trained[1]
  best, last, last_vars = _add_last_checkpoint(workdir)
  s2 = _stage_results(workdir, "stage2")
  assert best == s2["best_step"]
  p_best = predict.load_predictor(workdir, "best", batch_size=2)
  p_last = predict.load_predictor(workdir, "last", batch_size=2)
  assert p_best.checkpoint["step"] == best and p_last.checkpoint["step"] == last
  assert p_best.threshold == pytest.approx(s2["val_at_best"]["best_tau_MaxBoxAcc"])
  assert p_last.threshold == 0.25  # the val threshold of that step
  images = np.stack([_resized(os.path.join(inputs, rel), config.data.eval_size)
                     for rel in ("a/x.jpg", "gray.png", "b/color.png")])  # 2 batches, 1 padded
  clf_vars = _restore(os.path.join(workdir, "stage1", "checkpoints"),
                      _stage_results(workdir, "stage1")["best_step"])
  for predictor, dec_vars in ((p_best, _restore(os.path.join(workdir, "stage2", "checkpoints"),
                                                best)), (p_last, last_vars)):
    _, _, fcam = _reference_maps(config, clf_vars, dec_vars, images)
    np.testing.assert_allclose(predictor.predict_batch(images)["fcam"], fcam, atol=1e-5)
  diff = p_best.predict_batch(images)["fcam"] - p_last.predict_batch(images)["fcam"]
  assert np.abs(diff).max() > 1e-3


def test_stage1_only_workdir_gives_the_cam(trained, inputs, tmp_path, monkeypatch):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained[0], workdir)
  shutil.rmtree(os.path.join(workdir, "stage2"))
  predictor = predict.load_predictor(workdir, method="gradcam", batch_size=2)
  s1 = _stage_results(workdir, "stage1")
  assert predictor.map_name == "cam" and predictor.checkpoint["step"] == s1["best_step"]
  assert predictor.threshold == pytest.approx(s1["val_at_best"]["best_tau_MaxBoxAcc"])
  out = str(tmp_path / "out")
  # Above MAX_PIXELS a JPEG is decoded reduced (here 1/4): the map keeps the file's size.
  monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
  summary = predictor.run([os.path.join(inputs, "b", "color.png"),
                           os.path.join(inputs, "large.jpg")], out, threshold=0.3)
  r, large = summary["images"]
  assert large["size"] == [3000, 2000] and large["overlay_size"] == [750, 500]
  assert np.load(os.path.join(out, large["outputs"]["cam"])).shape == (2000, 3000)
  overlay = Image.open(os.path.join(out, large["outputs"]["overlay"]))
  assert overlay.size == (750, 500)
  assert sorted(r["outputs"]) == ["cam", "overlay"] and r["threshold"] == 0.3
  assert r["outputs"]["cam"] == "b/color.png.cam.npy"
  # --method's CAM of the top-1 class, computed by cams.compute.
  config = trained[1]
  image = _resized(os.path.join(inputs, "b", "color.png"), config.data.eval_size)[None]
  classifier = models.build_classifier(config.model)
  clf_vars = _restore(os.path.join(workdir, "stage1", "checkpoints"), s1["best_step"])
  x = models.imagenet_standardize(jnp.asarray(image))
  logits, _ = classifier.apply(clf_vars, x)
  raw = cams.compute("gradcam", classifier, clf_vars, x, jnp.argmax(logits, -1), options=config.cam)
  expected = cams.upsample(cams.upsample(cams.minmax_normalize(raw), image.shape[1:3]), (50, 50))[0]
  np.testing.assert_allclose(np.load(os.path.join(out, r["outputs"]["cam"])), expected, atol=2e-5)


def test_missing_checkpoints_and_config_are_one_line_errors(trained, inputs, tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  shutil.copy(os.path.join(trained[0], "config.json"), workdir)
  proc = _cli(f"--workdir={workdir}", f"--input={inputs}", f"--output={tmp_path / 'out'}")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: no checkpoint in") and os.path.join(workdir, "stage1") in last
  with pytest.raises(predict.PredictError, match=os.path.join(str(tmp_path / "nothing"),
                                                              "config.json")):
    os.makedirs(tmp_path / "nothing")
    predict.load_predictor(str(tmp_path / "nothing"))


def test_no_readable_image_is_a_nonzero_exit(trained, inputs, tmp_path):
  proc = _cli(f"--workdir={trained[0]}", f"--input={os.path.join(inputs, 'corrupt.jpg')}",
              f"--input={os.path.join(inputs, 'notes.txt')}", f"--output={tmp_path / 'out'}")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("error: no image could be processed")
  with open(tmp_path / "out" / "predictions.json") as f:
    summary = json.load(f)
  assert summary["num_images"] == 0 and len(summary["errors"]) == 2


def test_find_images_relative_paths(tmp_path):
  for rel in ("d1/x.jpg", "d2/x.jpg", "d2/sub/y.png", "d2/out/z.png"):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_bytes(b"x")
  files, errors = predict.find_images(
      [str(tmp_path / "d1"), str(tmp_path / "d2"), str(tmp_path / "d1" / "x.jpg"),
       str(tmp_path / "missing")], exclude=str(tmp_path / "d2" / "out"))
  assert [rel for _, rel in files] == ["d1/x.jpg", "d2/x.jpg", "d2/sub/y.png"]
  assert [e["input"] for e in errors] == [str(tmp_path / "missing")]
  files, _ = predict.find_images([str(tmp_path / "d2" / "x.jpg")])
  assert [rel for _, rel in files] == ["x.jpg"]


def test_targets_file_sets_the_class_of_each_cam(trained, inputs, tmp_path):
  workdir, _ = trained
  good = sorted(GOOD)
  targets = tmp_path / "targets.csv"
  targets.write_text("# image, class\n" + "".join(f"{rel},{i % 3}\n" for i, rel in enumerate(good)))
  out = tmp_path / "out"
  proc = _cli(f"--workdir={workdir}", f"--input={inputs}", f"--output={out}",
              f"--targets={targets}", "--method=gradcam", "--nooverlay", "--batch_size=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(out / "predictions.json"))
  assert summary["cam_method"] == "gradcam" and summary["cam_class"] == str(targets)
  # The bad files have no class: listed under errors, never processed.
  assert sorted(os.path.relpath(e["input"], inputs) for e in summary["errors"]) == sorted(BAD)
  by_input = {os.path.relpath(r["input"], inputs): r for r in summary["images"]}
  localizer = api.load(workdir)
  for i, rel in enumerate(good):
    r = by_input[rel]
    assert r["cam_class"] == i % 3
    image = np.asarray(Image.open(os.path.join(inputs, rel)).convert("RGB"))
    ref = localizer([image], targets=[i % 3], method="gradcam").maps[0]
    np.testing.assert_allclose(np.load(out / r["outputs"]["cam"]), ref, atol=2e-5, err_msg=rel)
  # Without a CAM, predictions.json names no CAM method.
  proc = _cli(f"--workdir={workdir}", f"--input={os.path.join(inputs, 'gray.png')}",
              f"--output={tmp_path / 'plain'}", "--method=gradcam", "--nooverlay")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(tmp_path / "plain" / "predictions.json"))["cam_method"] is None


def test_bad_targets_files_are_one_line_errors(trained, inputs, tmp_path):
  workdir, _ = trained
  for text, message, code in (
      ("a/x.jpg\n", "targets.csv:1: expected 'image path,class'", 1),
      ("a/x.jpg,99\n", "targets.csv:1: class 99 is not in [0, 5)", 1),
      ("elsewhere.jpg,1\n", "no image could be processed", 1)):  # no input has a class
    (tmp_path / "targets.csv").write_text(text)
    proc = _cli(f"--workdir={workdir}", f"--input={inputs}", f"--output={tmp_path / 'o'}",
                f"--targets={tmp_path / 'targets.csv'}")
    assert proc.returncode == code, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
