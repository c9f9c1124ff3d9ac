"""Configs: every shipped config loads, args select backbone/method/stage, bad values name the key."""

import os
import re
import subprocess
import sys

import pytest

from fcam_jax import config_lib
from tests.conftest import REPO, tiny_config

CONFIGS = ("synthetic", "cub", "openimages", "ilsvrc")


def _load(name, arg=None):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_documents_its_command(name):
  config = _load(name)
  assert config.model.backbone in config_lib.BACKBONES
  import importlib.util  # pylint: disable=g-import-not-at-top
  text = open(os.path.join(REPO, "configs", f"{name}.py")).read()
  assert "python -m fcam_jax.main --config=configs/" in text


def test_paper_recipe_for_cub():
  c = _load("cub")
  assert (c.stage1.lr, c.stage1.lr_decay_epochs, c.stage1.epochs) == (0.0017, 15, 50)
  assert (c.stage1.momentum, c.stage1.nesterov, c.stage1.weight_decay) == (0.9, True, 1e-4)
  assert c.stage1.classifier_lr_mult == 10 and c.stage2.lr == 0.01 and c.stage2.lr_decay_epochs == 0
  assert (c.data.resize_size, c.data.crop_size, c.data.eval_size) == (256, 224, 224)
  assert (c.eval.val_interval, c.eval.test_interval) == (0.004, 0.001)
  assert c.model.num_classes == 200 and c.eval.selection_metric == "MaxBoxAcc"
  assert _load("openimages").eval.selection_metric == "PxAP"


def test_arg_selects_backbone_method_and_stage():
  c = _load("cub", "vgg16,gradcampp,stage2")
  assert (c.model.backbone, c.cam.method, c.stages) == ("vgg16", "gradcampp", "stage2")
  c = _load("cub", "layercam")
  assert (c.model.backbone, c.cam.method) == ("resnet50", "layercam")
  with pytest.raises(config_lib.ConfigError, match="'resnet5'"):
    _load("cub", "resnet5")


@pytest.mark.parametrize("key,value,match", [
    ("model.backbone", "resnet18", "config.model.backbone='resnet18'"),
    ("cam.method", "gradcam2", "config.cam.method"),
    ("stage1.lr", -1.0, "config.stage1.lr"),
    ("data.crop_size", 300, "config.data.crop_size"),
    ("fcam.seeds.n_minus", 1.5, "config.fcam.seeds.n_minus"),
    ("fcam.seeds.erosion", 4, "config.fcam.seeds.erosion"),
    ("eval.selection_metric", "IoU", "config.eval.selection_metric"),
])
def test_bad_values_name_the_key(tmp_path, key, value, match):
  with pytest.raises(config_lib.ConfigError, match=match.replace(".", r"\.").replace("(", r"\(")):
    tiny_config(str(tmp_path), **{key: value})


def test_config_is_locked_against_new_keys():
  c = _load("synthetic")
  c.lock()
  with pytest.raises(AttributeError):
    c.model.backbon = "vgg16"


def _main(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "fcam_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_cli_unknown_key_is_one_clear_line(tmp_path):
  r = _main("--config=configs/synthetic.py", f"--workdir={tmp_path}", "--config.model.backbon=vgg16")
  assert r.returncode == 2
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert lines[-1].startswith("error: unknown config key 'config.model.backbon'"), r.stderr
  assert "backbone" in lines[-1] and "Traceback" not in r.stderr


def test_cli_bad_value_and_bad_arg(tmp_path):
  r = _main("--config=configs/synthetic.py", f"--workdir={tmp_path}", "--config.model.backbone=resnet18")
  assert r.returncode == 2 and "config.model.backbone='resnet18'" in r.stderr
  assert "Traceback" not in r.stderr
  r = _main("--config=configs/synthetic.py:resnet9", f"--workdir={tmp_path}")
  assert r.returncode == 2 and "'resnet9'" in r.stderr and "Traceback" not in r.stderr
  r = _main("--config=configs/synthetic.py", f"--workdir={tmp_path}", "--config.stage1.epochs=many")
  assert r.returncode == 2 and "config.stage1.epochs" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_config_file(tmp_path):
  r = _main("--config=configs/nothere.py", f"--workdir={tmp_path}")
  assert r.returncode == 2 and "config file not found: configs/nothere.py" in r.stderr
  assert "Traceback" not in r.stderr


def test_pretrained_must_exist_and_fit_the_backbone(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="config.model.pretrained='/no/such.npz': no such file"):
    tiny_config(str(tmp_path), **{"model.pretrained": "/no/such.npz"})
  weights = tmp_path / "w.npz"
  weights.write_bytes(b"")
  with pytest.raises(config_lib.ConfigError, match="small backbone"):
    tiny_config(str(tmp_path), **{"model.pretrained": str(weights)})


def test_stage2_sizes_follow_the_crop():
  c = _load("cub")
  assert config_lib.stage2_sizes(c) == {"crf.sigma_xy": 100.0, "crf.weight": c.fcam.crf.weight,
                                        "seeds.erosion": 11, "seeds.dilation": 3, "scale": 1.0}
  c.data.resize_size, c.data.crop_size = 73, 64
  sizes = config_lib.stage2_sizes(c)
  assert sizes["crf.sigma_xy"] == pytest.approx(100 * 64 / 224)
  assert sizes["crf.weight"] == pytest.approx(c.fcam.crf.weight * (224 / 64) ** 4)
  assert (sizes["seeds.erosion"], sizes["seeds.dilation"]) == (3, 1)  # 3.14 -> 3, 0.86 -> 1
  c.data.resize_size, c.data.crop_size = 512, 448
  sizes = config_lib.stage2_sizes(c)
  assert (sizes["seeds.erosion"], sizes["seeds.dilation"], sizes["crf.sigma_xy"]) == (23, 7, 200)
  scaled = config_lib.with_stage2_sizes(c)
  assert (scaled.fcam.seeds.erosion, scaled.fcam.crf.sigma_xy) == (23, 200) and c.fcam.seeds.erosion == 11
  c.fcam.scale_with_image = False
  assert config_lib.stage2_sizes(c)["seeds.erosion"] == 11
  assert config_lib.stage2_sizes(c)["crf.weight"] == c.fcam.crf.weight


def test_own_dataset_name_and_localization(tmp_path):
  c = _load("cub")
  c.dataset.name, c.dataset.data_root, c.dataset.metadata_root = "MyBirds", "/d", "/m"
  config_lib.validate(c)
  c.dataset.localization = "masks"
  with pytest.raises(config_lib.ConfigError, match="mask_root must be set for MyBirds"):
    config_lib.validate(c)
  c.dataset.mask_root = "/masks"
  config_lib.validate(c)
  c.dataset.localization = "polygons"
  with pytest.raises(config_lib.ConfigError, match="config.dataset.localization"):
    config_lib.validate(c)
  c.dataset.localization, c.dataset.name = "boxes", " "
  with pytest.raises(config_lib.ConfigError, match="config.dataset.name"):
    config_lib.validate(c)


def _documented_keys(text):
  """The keys docs/configs.md names in backticks, `a.{b,c}` forms expanded."""
  keys = set()
  for quoted in re.findall(r"`([\w.{},]+)`", text):
    m = re.fullmatch(r"([\w.]*)\{([\w,]+)\}", quoted)
    keys |= {m.group(1) + leaf for leaf in m.group(2).split(",")} if m else {quoted}
  for row in re.findall(r"^\| `([\w.]+)`, `\.(\w+)`(?:, `\.(\w+)`)?", text, re.M):
    base = row[0].rsplit(".", 1)[0]
    keys |= {row[0]} | {f"{base}.{leaf}" for leaf in row[1:] if leaf}
  return keys


def test_every_key_is_documented():
  text = open(os.path.join(REPO, "docs", "configs.md")).read()
  documented = _documented_keys(text)
  missing = [k for k, _ in config_lib.flatten(config_lib.base_config().to_dict())
             if k not in documented]
  assert not missing, f"keys missing from docs/configs.md: {missing}"
